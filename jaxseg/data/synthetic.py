"""Reproducible synthetic phantom datasets, written to disk in MSD layout.

    python -m jaxseg.data.synthetic --dims 2 --num-cases 60 --shape 128,128 --out DIR

writes `DIR/dataset.json`, `DIR/imagesTr/phantom_XXX.nii.gz`, `DIR/labelsTr/...` and, with
`--num-test N`, `DIR/imagesTs/` (+ `DIR/labelsTs/` so predictions can be scored).

Each case is a single-channel "MRI" phantom with nested structures:

- label 1 "organ": a rotated ellipse/ellipsoid with a thin dark capsule (part of the organ)
  and fine texture;
- label 2 "edema": a bright rim around the lesion core, inside the organ;
- label 3 "core": the lesion core, whose intensity is close to the organ's;
- background: a body of tissue with coarser texture, air outside it, and distractor blobs
  that copy the organ's intensity, the edema's intensity, or a whole lesion (bright rim
  around an organ-grey core) outside the organ.

So classes overlap in intensity (the core looks like organ, distractors look like organ,
edema or lesion) and only the local context (inside the capsule? surrounded by a rim?)
separates them; a per-voxel intensity threshold cannot. The image is rendered at twice the
resolution, blurred and block-averaged (partial volume), then multiplied by a smooth random
bias field and corrupted with Rician noise. Structure sizes scale with the image: at 128x128
the organ is ~55-85 px across, the lesion ~20-30 px and the core >= ~10 px.

With `--modalities 2` (`make_multimodal_case`) each case has two channels, "A" and "B":
label 1 "structure_A" is bright in A only, label 2 "structure_B" in B only, and distractors
are bright in both, so only the two modalities together segment the image. structure_B is
missing from every third case; dataset.json gives each case a `class` (1: structure_B
present) and declares the names in `case_classes` (docs/data.md, docs/multimodal.md).

Geometry is generated in canonical (RAS) voxel order; the files are written with a
non-canonical orientation (axes permuted and flipped, LPS-like) and a small random rotation
in the affine, identical for image and label, with anisotropic spacing (default 0.7 x 0.9 mm
in 2D, 0.8 x 0.8 x 2.5 mm in 3D), so reading them exercises the reorientation path of
`jaxseg.data.io`. Case `i` depends only on `(seed, i)`.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

import nibabel as nib
import numpy as np
from nibabel import orientations as nio
from scipy import ndimage

__all__ = [
    "CASE_CLASSES",
    "LABELS",
    "MULTIMODAL_LABELS",
    "has_structure_b",
    "make_case",
    "make_multimodal_case",
    "write_dataset",
    "main",
]

LABELS = {0: "background", 1: "organ", 2: "edema", 3: "core"}
_SS = 2  # supersampling factor for the partial-volume rendering

# Base intensities (before bias field and noise).
_AIR, _TISSUE, _ORGAN, _CAPSULE, _EDEMA, _CORE = 0.03, 0.30, 0.55, 0.22, 0.80, 0.52


def _rotation(rng: np.random.Generator, dims: int) -> np.ndarray:
    if dims == 2:
        t = rng.uniform(-np.pi, np.pi)
        return np.array([[np.cos(t), -np.sin(t)], [np.sin(t), np.cos(t)]])
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))
    if np.linalg.det(q) < 0:
        q[:, 0] = -q[:, 0]
    return q


class _Grid:
    """Sample coordinates (in low-res voxel units) as open (broadcastable) grids."""

    def __init__(self, shape: Sequence[int], ss: int):
        self.shape = tuple(int(s) * ss for s in shape)
        nd = len(shape)
        self.axes = []
        for d, s in enumerate(shape):
            c = (np.arange(s * ss, dtype=np.float32) + 0.5) / ss - 0.5
            sh = [1] * nd
            sh[d] = -1
            self.axes.append(c.reshape(sh))

    def quad(self, centre, axes, rot) -> np.ndarray:
        """Normalised squared radius sum_k ((R^T (x - c))_k / a_k)^2 of an ellipse(oid)."""
        nd = len(self.axes)
        q = np.zeros(self.shape, np.float32)
        for k in range(nd):
            u = sum(
                np.float32(rot[d, k]) * (self.axes[d] - np.float32(centre[d])) for d in range(nd)
            )
            q += (u / np.float32(axes[k])) ** 2
        return q


def _smooth_noise(rng: np.random.Generator, shape, sigma: float) -> np.ndarray:
    f = ndimage.gaussian_filter(rng.standard_normal(shape).astype(np.float32), sigma)
    return f / max(float(f.std()), 1e-6)


def _bias_field(rng: np.random.Generator, shape, strength: float) -> np.ndarray:
    coarse = rng.standard_normal([4] * len(shape)).astype(np.float32)
    zoom = [s / 4 for s in shape]
    f = ndimage.zoom(coarse, zoom, order=3, mode="nearest")[tuple(slice(0, s) for s in shape)]
    f = f / max(float(np.abs(f).max()), 1e-6)
    return np.exp(strength * f).astype(np.float32)


def _place(
    rng, placed: list, centre, body_axes, radius: tuple[float, float], scale: float, tries: int
):
    """A blob inside the body, clear of the `placed` (centre, radius) pairs by 3 px: up to
    `tries` draws of a radius (uniform in `radius`, times `scale`) and a centre. Returns (centre, radius), appended to
    `placed`, or None when every draw failed."""
    dims = len(centre)
    for _ in range(tries):
        r = rng.uniform(*radius) * scale
        c = centre + rng.uniform(-1, 1, dims) * (body_axes - r - 2)
        if np.sum(((c - centre) / (body_axes - r - 2)) ** 2) <= 1.0 and all(
            np.linalg.norm(c - pc) > r + pr + 3 for pc, pr in placed
        ):
            placed.append((c, r))
            return c, r
    return None


def make_case(rng: np.random.Generator, shape: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """One phantom in canonical voxel order -> (image float32 `[*shape]`, label uint8 `[*shape]`)."""
    shape = tuple(int(s) for s in shape)
    dims = len(shape)
    m = float(min(shape))
    centre_img = np.array([(s - 1) / 2 for s in shape])
    lo, hi = _Grid(shape, _SS), _Grid(shape, 1)

    def ellipse(centre, axes, rot):
        return lo.quad(centre, axes, rot) < 1.0, hi.quad(centre, axes, rot) < 1.0

    def ratios(a, b):
        return rng.uniform(a, b, size=dims)

    # Body.
    body_axes = np.array([0.47 * s for s in shape]) * ratios(0.9, 1.0)
    body_hr, _ = ellipse(centre_img, body_axes, np.eye(dims))

    # Organ: a rotated ellipse with a 1.5 px capsule (labelled organ).
    organ_r = rng.uniform(0.22, 0.32) * m
    organ_axes = organ_r * ratios(0.75, 1.0)
    organ_rot = _rotation(rng, dims)
    organ_c = centre_img + rng.uniform(-1, 1, dims) * (body_axes - organ_axes.max() - 2) * 0.45
    inner_hr, _ = ellipse(organ_c, organ_axes, organ_rot)
    organ_hr, organ_lr = ellipse(organ_c, organ_axes + 1.5, organ_rot)

    # Lesion inside the organ: edema rim around a core.
    les_r = rng.uniform(0.08, 0.12) * m
    les_axes = les_r * ratios(0.8, 1.0)
    les_rot = _rotation(rng, dims)
    room = max(organ_axes.min() - les_axes.max() - 3.0, 0.0)
    u = rng.normal(size=dims)
    u = u / np.linalg.norm(u) * rng.uniform(0, 1) ** (1 / dims)
    les_c = organ_c + organ_rot @ (u * room)
    # The core is at least ~9 px across, but always leaves an edema rim.
    core_axes = np.maximum(
        les_axes * rng.uniform(0.5, 0.65), np.minimum(max(4.5, 0.035 * m), 0.65 * les_axes)
    )
    core_c = les_c + rng.uniform(-1, 1, dims) * 0.15 * (les_axes - core_axes).clip(0)
    les_hr, les_lr = ellipse(les_c, les_axes, les_rot)
    core_hr, core_lr = ellipse(core_c, core_axes, les_rot)

    # High-res intensity.
    img = np.full(lo.shape, _AIR, np.float32)
    img[body_hr] = _TISSUE
    img += body_hr * (0.05 * _smooth_noise(rng, lo.shape, 3.0 * _SS))

    # Distractors outside the organ (background label): organ-like, edema-like, lesion-like.
    n_dis = int(rng.integers(3, 6))
    kinds = rng.permutation([0, 1, 2] + list(rng.integers(0, 3, size=max(n_dis - 3, 0))))[:n_dis]
    placed = [(organ_c, organ_axes.max() + 2)]
    for kind in kinds:
        spot = _place(rng, placed, centre_img, body_axes, (0.05, 0.10), m, tries=30)
        if spot is None:
            continue
        c, r = spot
        d_axes, d_rot = r * ratios(0.7, 1.0), _rotation(rng, dims)
        d_hr, _ = ellipse(c, d_axes, d_rot)
        if kind == 0:
            img[d_hr] = _ORGAN + rng.uniform(-0.03, 0.03)
        elif kind == 1:
            img[d_hr] = _EDEMA + rng.uniform(-0.05, 0.03)
        else:
            img[d_hr] = _EDEMA
            dc_hr, _ = ellipse(c, np.maximum(d_axes * 0.55, 4.0), d_rot)
            img[dc_hr] = _CORE

    img[organ_hr] = _CAPSULE
    img[inner_hr] = _ORGAN
    img += inner_hr * (0.05 * _smooth_noise(rng, lo.shape, 1.0 * _SS))
    img[les_hr] = _EDEMA
    img[core_hr] = _CORE

    img = _acquire(rng, img, shape)
    label = np.zeros(shape, np.uint8)
    label[organ_lr] = 1
    label[les_lr] = 2
    label[core_lr] = 3
    return img, label


def _acquire(rng: np.random.Generator, img_hr: np.ndarray, shape) -> np.ndarray:
    """High-res intensities -> the "scanned" image `[*shape]` float32: partial volume (blur
    at high resolution, average blocks of SS^dims samples), a smooth bias field, a global
    gain and Rician noise, in MR-like arbitrary units."""
    dims = len(shape)
    img = ndimage.gaussian_filter(img_hr, 0.5 * _SS)
    img = img.reshape([v for s in shape for v in (s, _SS)]).mean(axis=tuple(range(1, 2 * dims, 2)))
    img = img * _bias_field(rng, shape, 0.25) * rng.uniform(0.85, 1.15)
    sigma = 0.05 * rng.uniform(0.8, 1.2)
    n1 = rng.normal(0, sigma, shape).astype(np.float32)
    n2 = rng.normal(0, sigma, shape).astype(np.float32)
    return (np.sqrt((img + n1) ** 2 + n2**2) * 1000.0).astype(np.float32)


# Two-modality phantoms (`--modalities 2`): intensities in modality A and modality B.
MULTIMODAL_LABELS = {0: "background", 1: "structure_A", 2: "structure_B"}
CASE_CLASSES = {0: "absent", 1: "present"}  # the case class: is structure_B in the case?
MULTIMODAL_CHANNELS = ("A", "B")
_TISSUE_AB, _BRIGHT_AB = (0.30, 0.45), (0.75, 0.85)


def has_structure_b(index: int) -> bool:
    """Whether case `index` of a 2-modality phantom set holds structure_B: every case but
    each third one (1, 4, 7, ...), so the case class is never constant from 3 cases on."""
    return index % 3 != 1


def make_multimodal_case(
    rng: np.random.Generator, shape: Sequence[int], with_b: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """A 2-modality phantom in canonical voxel order -> (image float32 `[*shape, 2]`, label
    uint8 `[*shape]`).

    A body of textured tissue (seen in both modalities, with different contrast) holds:
    label 1 "structure_A", an ellipse bright in modality A only (B shows plain tissue there);
    label 2 "structure_B" (when `with_b`), bright in modality B only; and 2-4 distractors,
    bright in BOTH modalities (background). So neither modality alone segments the image:
    in A, structure_A looks like a distractor, and only B tells them apart (and vice versa).
    Each modality gets its own bias field and noise (`_acquire`, as `make_case`)."""
    shape = tuple(int(s) for s in shape)
    dims = len(shape)
    m = float(min(shape))
    centre_img = np.array([(s - 1) / 2 for s in shape])
    lo, hi = _Grid(shape, _SS), _Grid(shape, 1)
    body_axes = np.array([0.47 * s for s in shape]) * rng.uniform(0.9, 1.0, dims)
    body_hr = lo.quad(centre_img, body_axes, np.eye(dims)) < 1.0
    texture = _smooth_noise(rng, lo.shape, 3.0 * _SS)
    imgs = [np.full(lo.shape, _AIR, np.float32) for _ in range(2)]
    for img, tissue in zip(imgs, _TISSUE_AB):
        img[body_hr] = tissue
        img += body_hr * (0.05 * texture)

    placed: list[tuple[np.ndarray, float]] = []
    label = np.zeros(shape, np.uint8)
    # (label, modalities it is bright in): the structures first, so they always find room.
    kinds = [(1, (0,))] + ([(2, (1,))] if with_b else [])
    kinds += [(0, (0, 1))] * int(rng.integers(2, 5))
    for value, bright in kinds:  # one size range for all: size tells nothing
        spot = _place(rng, placed, centre_img, body_axes, (0.07, 0.13), m, tries=50)
        if spot is None:
            continue
        c, r = spot
        axes, rot = r * rng.uniform(0.7, 1.0, dims), _rotation(rng, dims)
        inside_hr = lo.quad(c, axes, rot) < 1.0
        for i in bright:
            imgs[i][inside_hr] = _BRIGHT_AB[i] + rng.uniform(-0.03, 0.03)
        if value:
            label[hi.quad(c, axes, rot) < 1.0] = value
    image = np.stack([_acquire(rng, img, shape) for img in imgs], axis=-1)
    return image, label


# On-disk orientation of the canonical axes (rows: world axis, flip): disk axis 0 runs
# posterior (-Y), disk axis 1 runs left (-X), disk axis 2 runs superior (+Z).
_DISK_ORNT = np.array([[1, -1], [0, -1], [2, 1]], float)


def _to_disk(canon3: np.ndarray, canon_affine: np.ndarray):
    """Canonical array (3 spatial axes) -> (on-disk array, on-disk affine)."""
    t = nio.ornt_transform(np.array([[0, 1], [1, 1], [2, 1]], float), _DISK_ORNT)
    disk = nio.apply_orientation(canon3, t)
    affine = canon_affine @ nio.inv_ornt_aff(t, canon3.shape)
    return np.ascontiguousarray(disk), affine


def _case_affine(rng: np.random.Generator, shape, spacing) -> np.ndarray:
    sp = list(spacing) + [1.0] * (3 - len(spacing))
    a = np.diag(sp + [1.0])
    a[:3, 3] = [-(s - 1) * v / 2 for s, v in zip(list(shape) + [1] * (3 - len(shape)), sp)]
    t = np.deg2rad(rng.uniform(-8, 8))
    rz = np.eye(4)
    rz[:2, :2] = [[np.cos(t), -np.sin(t)], [np.sin(t), np.cos(t)]]
    return rz @ a


def _save(arr: np.ndarray, affine: np.ndarray, path: Path, dtype) -> None:
    img = nib.Nifti1Image(arr.astype(dtype), affine)
    img.header.set_qform(affine, code=1)
    img.header.set_sform(affine, code=1)
    img.header.set_xyzt_units("mm")
    nib.save(img, str(path))


def write_dataset(
    out_dir: str | Path,
    *,
    dims: int,
    num_cases: int,
    shape: Sequence[int],
    seed: int = 0,
    num_test: int = 0,
    spacing: Sequence[float] | None = None,
    name: str = "phantom",
    modalities: int = 1,
) -> Path:
    """Writes a phantom dataset in MSD layout and returns `out_dir`.

    Args:
      out_dir: target folder (created; existing files of the same names are overwritten).
      dims: 2 or 3.
      num_cases: number of training cases (imagesTr/labelsTr).
      shape: canonical spatial shape, `dims` ints (e.g. (128, 128) or (64, 64, 64)).
      seed: case `i` is generated from `(seed, i)`.
      num_test: extra cases in imagesTs/ (their labels in labelsTs/, not in dataset.json).
      spacing: voxel size in mm along the canonical axes; default (0.7, 0.9) or (0.8, 0.8, 2.5).
      name: dataset and file-name prefix.
      modalities: 1 (`make_case`, one file per case) or 2 (`make_multimodal_case`: one file
        per channel, `{name}_XXX_0000.nii.gz` for A and `_0001` for B; dataset.json declares
        `channel_names` {"0": "A", "1": "B"} and `case_classes` {"0": "absent", "1": "present"},
        and every case entry a `class`: 1 when structure_B is in it, see `has_structure_b`).
    """
    if modalities not in (1, 2):
        raise ValueError(f"modalities must be 1 or 2, got {modalities}")
    if dims not in (2, 3):
        raise ValueError(f"dims must be 2 or 3, got {dims}")
    shape = tuple(int(s) for s in shape)
    if len(shape) != dims or min(shape) < 32:
        raise ValueError(f"shape must be {dims} ints >= 32, got {shape}")
    spacing = (
        tuple(spacing) if spacing is not None else ((0.7, 0.9) if dims == 2 else (0.8, 0.8, 2.5))
    )
    out = Path(out_dir)
    dirs = {k: out / k for k in ("imagesTr", "labelsTr")}
    if num_test:
        dirs.update({k: out / k for k in ("imagesTs", "labelsTs")})
    for d in dirs.values():
        d.mkdir(parents=True, exist_ok=True)
    training, test = [], []
    for i in range(num_cases + num_test):
        rng = np.random.default_rng([seed, i])
        if modalities == 1:
            img, lab = make_case(rng, shape)
            channels = [img]
        else:
            img, lab = make_multimodal_case(rng, shape, with_b=has_structure_b(i))
            channels = [img[..., k] for k in range(modalities)]
        affine = _case_affine(rng, shape, spacing)
        lab3 = lab[..., None] if dims == 2 else lab
        lab_d, aff_d = _to_disk(lab3, affine)
        fname = f"{name}_{i:03d}.nii.gz"
        split = "Tr" if i < num_cases else "Ts"
        files = []
        for k, channel in enumerate(channels):
            img_d, _ = _to_disk(channel[..., None] if dims == 2 else channel, affine)
            cname = fname if modalities == 1 else f"{name}_{i:03d}_{k:04d}.nii.gz"
            _save(img_d, aff_d, dirs[f"images{split}"] / cname, np.float32)
            files.append(f"./images{split}/{cname}")
        _save(lab_d, aff_d, dirs[f"labels{split}"] / fname, np.uint8)
        if modalities == 1:
            entry = {"image": files[0], "label": f"./labelsTr/{fname}"}
        else:  # the structure_B class from the label, the truth whatever the placement did
            entry = {
                "image": files,
                "label": f"./labels{split}/{fname}",
                "class": int((lab == 2).any()),
            }
        if split == "Tr":
            training.append(entry)
        elif modalities == 1:
            test.append(files[0])
        else:  # labelsTs/ is for scoring, kept out of dataset.json as in the 1-modality set
            test.append({"image": files, "class": entry["class"]})
    if modalities == 1:
        what = "organ with a lesion (edema rim around a core) among distractors."
        channels_meta = {"modality": {"0": "MRI"}}
        labels = LABELS
    else:
        what = (
            "2 modalities; structure_A bright in A only, structure_B in B only (absent from "
            "every third case: the case class), distractors bright in both."
        )
        channels_meta = {
            "channel_names": dict(enumerate(MULTIMODAL_CHANNELS)),
            "case_classes": {str(k): v for k, v in CASE_CLASSES.items()},
        }
        labels = MULTIMODAL_LABELS
    meta = {
        "name": name,
        "description": f"jaxseg synthetic {dims}D phantoms (seed {seed}); {what}",
        "reference": "jaxseg.data.synthetic",
        "licence": "CC0",
        "tensorImageSize": f"{dims}D",
        **channels_meta,
        "labels": {str(k): v for k, v in labels.items()},
        "numTraining": num_cases,
        "numTest": num_test,
        "training": training,
        "test": test,
    }
    (out / "dataset.json").write_text(json.dumps(meta, indent=2) + "\n")
    return out


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m jaxseg.data.synthetic", description=__doc__.split("\n")[0]
    )
    p.add_argument("--dims", type=int, choices=(2, 3), required=True)
    p.add_argument("--num-cases", type=int, required=True)
    p.add_argument("--shape", required=True, help="comma-separated, e.g. 128,128 or 64,64,64")
    p.add_argument("--out", required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--num-test", type=int, default=0)
    p.add_argument("--spacing", default=None, help="comma-separated mm, e.g. 0.7,0.9")
    p.add_argument(
        "--modalities",
        type=int,
        choices=(1, 2),
        default=1,
        help="2: two-channel phantoms, one structure visible in each channel, a case class",
    )
    a = p.parse_args(argv)
    try:
        shape = tuple(int(v) for v in a.shape.split(","))
        spacing = tuple(float(v) for v in a.spacing.split(",")) if a.spacing else None
        out = write_dataset(
            a.out,
            dims=a.dims,
            num_cases=a.num_cases,
            shape=shape,
            seed=a.seed,
            num_test=a.num_test,
            spacing=spacing,
            modalities=a.modalities,
        )
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
