"""The dataset fingerprint: what the plan is computed from (docs/planning.md).

`fingerprint_dataset(spec)` reads the training cases (all, or a deterministic sample of
`max_cases`) and returns a JSON-ready dict:

- per case: canonical shape and spacing, the orientation of the file affine (axis codes,
  e.g. "LPS"), the nonzero bounding box and the size left after cropping to it, voxels per
  class and each class's typical thickness in mm (2 x volume / surface);
- per channel: foreground (label > 0) intensity percentiles 0.5 / 50 / 99.5, mean, std,
  min and max, pooled over up to `foreground_samples` voxels drawn per case without
  replacement (every voxel of a case that has fewer);
- per class: its share of all voxels and the number of cases that contain it;
- dataset-level medians (spacing, shape, shape after cropping, relative size after
  cropping), under nnU-Net's fingerprint names where it has one.
"""

from __future__ import annotations

import gzip
import io as pyio
from collections.abc import Sequence
from pathlib import Path

import nibabel as nib
import numpy as np
import tqdm

from jaxseg.data import io
from jaxseg.data.dataset import Case, DatasetSpec, load_case
from jaxseg.errors import DataError

__all__ = ["fingerprint_dataset", "sample_cases", "class_thickness", "nonzero_bbox"]

FOREGROUND_SAMPLES = 10_000  # voxels per case for the intensity statistics (nnU-Net: 1e8 / N)
PERCENTILES = (0.5, 50.0, 99.5)


def sample_cases(num_cases: int, max_cases: int | None, seed: int) -> list[int]:
    """Indices of the cases to analyse: all, or `max_cases` drawn without replacement by
    `seed` (sorted, so the order of reading follows dataset.json)."""
    if max_cases is None or max_cases >= num_cases:
        return list(range(num_cases))
    if max_cases < 1:
        raise DataError(f"max_cases must be >= 1, got {max_cases}.")
    rng = np.random.default_rng(seed)
    return sorted(int(i) for i in rng.choice(num_cases, size=max_cases, replace=False))


def _raw_pixdim(path: Path) -> np.ndarray | None:
    """The header's pixdim[1:4] exactly as stored (nibabel silently replaces a zero by 1 when
    it loads an image), or None for files that are not NIfTI."""
    name = path.name.lower()
    if not name.endswith(io.NIFTI_SUFFIXES):
        return None
    opener = gzip.open if name.endswith(".gz") else open
    try:
        with opener(path, "rb") as f:
            head = f.read(540)
        sizes = {int.from_bytes(head[:4], "little"), int.from_bytes(head[:4], "big")}
        klass = nib.Nifti2Header if 540 in sizes else nib.Nifti1Header
        header = klass.from_fileobj(pyio.BytesIO(head), check=False)
    except Exception:  # unreadable headers are reported by io when the case is loaded
        return None
    return np.asarray(header["pixdim"][1:4], np.float64)


def _check_spacing(case: Case, dims: int, spacing: Sequence[float], image_path: Path) -> None:
    """DataError naming the file whose spacing is zero, negative or NaN."""
    files = [*case.image_paths, *([case.label_path] if case.label_path else [])]
    for path in files:
        raw = _raw_pixdim(path)
        if raw is not None and not np.all(np.isfinite(raw[:dims]) & (raw[:dims] > 0)):
            raise DataError(
                f"{path}: voxel spacing {tuple(float(v) for v in raw[:dims])} in the header "
                f"(pixdim) is zero, negative or NaN (case '{case.case_id}'); fix the header, "
                "e.g. nibabel's header.set_zooms, and rerun."
            )
    s = np.asarray(spacing, np.float64)
    if not np.all(np.isfinite(s) & (s > 0)):
        raise DataError(
            f"{image_path}: voxel spacing {tuple(s.tolist())} is zero or NaN (case "
            f"'{case.case_id}'); fix the header, e.g. nibabel's header.set_zooms, and rerun."
        )


def nonzero_bbox(image: np.ndarray) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(start, shape) of the bounding box of voxels nonzero in any channel of `image`
    `[*S, C]` (nnU-Net's crop_to_nonzero; filling holes does not change a bounding box).
    An all-zero image keeps its whole grid."""
    mask = np.any(image != 0, axis=-1)
    if not mask.any():
        return (0,) * mask.ndim, tuple(int(s) for s in mask.shape)
    start, shape = [], []
    for axis in range(mask.ndim):
        hit = np.flatnonzero(mask.any(axis=tuple(a for a in range(mask.ndim) if a != axis)))
        start.append(int(hit[0]))
        shape.append(int(hit[-1] - hit[0] + 1))
    return tuple(start), tuple(shape)


def class_thickness(
    label: np.ndarray, spacing: Sequence[float], num_classes: int
) -> list[float | None]:
    """Per class of `label` `[*S]`, its typical thickness in mm: 2 x volume / surface, the
    surface counted as voxel faces between the class and another class (faces on the image
    border are not a boundary). A slab of width w gives w, a square of side s gives s / 2 (a
    disc, its outline counted in voxel faces, about 0.4 of its diameter).
    None for a class that is absent or has no boundary inside the image."""
    spacing = np.asarray(spacing, np.float64)
    voxel = float(np.prod(spacing))
    counts = np.bincount(label.ravel(), minlength=num_classes)[:num_classes]
    area = np.zeros(num_classes)
    for axis in range(label.ndim):
        a = np.moveaxis(label, axis, 0)
        lo, hi = a[:-1], a[1:]
        differ = lo != hi
        faces = np.bincount(lo[differ], minlength=num_classes)[:num_classes]
        faces = faces + np.bincount(hi[differ], minlength=num_classes)[:num_classes]
        area += faces * (voxel / spacing[axis])
    return [
        float(2 * counts[c] * voxel / area[c]) if counts[c] and area[c] else None
        for c in range(num_classes)
    ]


def _analyse_case(spec: DatasetSpec, case: Case, rng: np.random.Generator, samples: int):
    """One case -> (its record, foreground intensities `[n, C]` float64)."""
    image, label = load_case(spec, case)
    _check_spacing(case, spec.dims, image.spacing, image.path)
    shape = tuple(int(s) for s in image.data.shape[:-1])
    start, box = nonzero_bbox(image.data)
    counts = np.bincount(label.ravel(), minlength=spec.num_classes)[: spec.num_classes]
    fg = np.flatnonzero(label.ravel() > 0)
    if fg.size > samples:
        fg = np.sort(rng.choice(fg, size=samples, replace=False))
    values = image.data.reshape(-1, image.num_channels)[fg].astype(np.float64)
    record = {
        "case_id": case.case_id,
        "shape": list(shape),
        "spacing": [float(s) for s in image.spacing],
        "orientation": "".join(nib.aff2axcodes(image.original_affine)),
        "nonzero_bbox_start": list(start),
        "shape_after_crop": list(box),
        "relative_size_after_crop": float(np.prod(box) / np.prod(shape)),
        "class_voxels": [int(c) for c in counts],
        "class_thickness_mm": class_thickness(label, image.spacing, spec.num_classes),
        "foreground_voxels": int(np.count_nonzero(label)),
        "foreground_voxels_sampled": int(fg.size),
    }
    return record, values


def _intensity_properties(values: np.ndarray) -> dict:
    if values.size == 0:
        return {"num_samples": 0}
    p00_5, median, p99_5 = np.percentile(values, PERCENTILES)
    return {
        "mean": float(np.mean(values)),
        "median": float(median),
        "std": float(np.std(values)),
        "min": float(np.min(values)),
        "max": float(np.max(values)),
        "percentile_00_5": float(p00_5),
        "percentile_99_5": float(p99_5),
        "num_samples": int(values.size),
    }


def fingerprint_dataset(
    spec: DatasetSpec,
    *,
    max_cases: int | None = None,
    seed: int = 0,
    progress: bool = True,
    foreground_samples: int = FOREGROUND_SAMPLES,
) -> dict:
    """The fingerprint of `spec`'s training cases (see the module docstring).

    `max_cases` caps the cases read (drawn by `seed`); per-case foreground voxels are
    drawn by (`seed`, case index), so the same call gives the same fingerprint. Raises
    DataError naming the case for a channel count other than the declared one, naming the
    file for a zero or NaN spacing.
    """
    if not spec.training:
        raise DataError(
            f"{spec.root}/dataset.json lists no training cases; a plan needs labelled cases."
        )
    chosen = sample_cases(len(spec.training), max_cases, seed)
    records, values = [], []
    bar = tqdm.tqdm(chosen, desc="fingerprint", unit="case", disable=not progress, mininterval=1)
    for i in bar:
        record, fg = _analyse_case(
            spec, spec.training[i], np.random.default_rng([seed, i]), foreground_samples
        )
        records.append(record)
        values.append(fg)
    pooled = np.concatenate(values, axis=0)
    k = spec.num_classes
    counts = np.sum([r["class_voxels"] for r in records], axis=0)
    thickness = []
    for c in range(k):
        seen = [r["class_thickness_mm"][c] for r in records if r["class_thickness_mm"][c]]
        thickness.append(float(np.median(seen)) if seen else None)
    spacings = [r["spacing"] for r in records]
    shapes = [r["shape"] for r in records]
    cropped = [r["shape_after_crop"] for r in records]
    orientations: dict[str, int] = {}
    for r in records:
        orientations[r["orientation"]] = orientations.get(r["orientation"], 0) + 1
    return {
        "dataset": spec.name,
        "root": str(spec.root),
        "dims": spec.dims,
        "channel_names": list(spec.channel_names),
        "modalities": list(spec.modalities),
        "labels": {str(c): n for c, n in spec.labels.items()},
        "label_values": list(spec.label_values),
        "num_classes": k,
        "num_training_cases": len(spec.training),
        "num_cases_analysed": len(records),
        "seed": seed,
        "spacings": spacings,
        "shapes": shapes,
        "shapes_after_crop": cropped,
        "median_spacing": np.median(spacings, axis=0).tolist(),
        "median_shape": np.median(shapes, axis=0).tolist(),
        "median_shape_after_crop": np.median(cropped, axis=0).tolist(),
        "median_relative_size_after_cropping": float(
            np.median([r["relative_size_after_crop"] for r in records])
        ),
        "orientations": orientations,
        "foreground_intensity_properties_per_channel": {
            str(c): _intensity_properties(pooled[:, c]) for c in range(spec.num_channels)
        },
        "class_voxel_fractions": (counts / counts.sum()).tolist(),
        "cases_with_class": [int(sum(r["class_voxels"][c] > 0 for r in records)) for c in range(k)],
        "class_thickness_mm": thickness,
        "cases": records,
    }
