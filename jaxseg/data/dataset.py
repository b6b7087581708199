"""dataset.json -> cases; patient-level splits; validated case loading.

Two layouts are understood (the style is chosen by the keys present):

MSD (Medical Segmentation Decathlon)
    `"modality": {"0": "MRI"}`, `"labels": {"0": "background", "1": "liver"}`,
    `"tensorImageSize": "2D" | "3D" | "4D"`, `"training": [{"image": "./imagesTr/x.nii.gz",
    "label": "./labelsTr/x.nii.gz"}]`, `"test": ["./imagesTs/y.nii.gz"]` (strings or
    `{"image": ...}` entries). A multi-channel image is one file whose last axis is channels.

nnU-Net v2
    `"channel_names": {"0": "CT"}`, `"labels": {"background": 0, "liver": 1}`,
    `"file_ending": ".nii.gz"`. Cases are listed in `"training"` (with `"image"` a list of
    per-channel files, or a single file) or in a `"dataset"` mapping
    (`{case_id: {"images": [...], "label": ...}}`), or else discovered from
    `imagesTr/{case}_{XXXX}{file_ending}` + `labelsTr/{case}{file_ending}` (test cases
    likewise from `imagesTs/`). Region-based labels (a list of ints per name) are rejected.

Common keys
    `"dims"` (2 or 3) overrides `tensorImageSize`; without either, dims is 2 for PNG/TIFF
    and for NIfTI whose first training image has a singleton third axis, else 3.
    A case entry may carry `"patient"`: cases of one patient always land in one split;
    the default patient id is the case id. Case ids are file names without the ending
    (and, for nnU-Net v2 per-channel files, without `_XXXX`).

Labels must be the consecutive integers 0..K-1 with 0 the background.
`modalities` maps each channel name to the normalisation family used by
`jaxseg.data.preprocess.normalize`: "CT" (case-insensitive "ct"), "noNorm",
"rgb_to_0_1" are kept as such; everything else (MRI, T1, FLAIR, US, ...) is z-scored.
"""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from jaxseg.data import io
from jaxseg.errors import ConfigError, DataError

__all__ = ["Case", "DatasetSpec", "load_dataset", "split_cases", "kfold_cases", "load_case"]

_MRI_NAMES = {"mri", "mr", "t1", "t1w", "t1gd", "t1c", "t1ce", "t2", "t2w", "flair", "adc",
              "dwi", "pd", "t2star", "swi", "cine", "lge", "bold"}


@dataclasses.dataclass(frozen=True)
class Case:
    """One case: its image files (one per channel, or one multi-channel file), its label
    file (None for unlabelled test cases) and the patient it belongs to."""

    case_id: str
    image_paths: tuple[Path, ...]
    label_path: Path | None
    patient_id: str


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
    """What a dataset.json declares, with resolved absolute paths."""

    root: Path
    name: str
    dims: int
    channel_names: tuple[str, ...]
    modalities: tuple[str, ...]
    labels: dict[int, str]
    training: tuple[Case, ...]
    test: tuple[Case, ...]

    @property
    def num_classes(self) -> int:
        """Number of classes including background (labels are 0..K-1)."""
        return len(self.labels)

    @property
    def num_channels(self) -> int:
        return len(self.channel_names)


def _modality(name: str) -> str:
    key = name.strip().casefold()
    if key == "ct":
        return "CT"
    if key == "nonorm":
        return "noNorm"
    if key == "rgb_to_0_1":
        return "rgb_to_0_1"
    if key in _MRI_NAMES:
        return "MRI"
    if key in ("us", "ultrasound"):
        return "US"
    return name


def _strip_ending(name: str) -> str:
    for s in io.NIFTI_SUFFIXES + io.PIL_SUFFIXES:
        if name.lower().endswith(s):
            return name[: -len(s)]
    return Path(name).stem


def _json_path(root: Path) -> Path:
    if not root.is_dir():
        raise DataError(f"{root}: dataset folder not found. Pass the folder that holds dataset.json "
                        "(e.g. write a demo one with `python -m jaxseg.data.synthetic`).")
    path = root / "dataset.json"
    if not path.is_file():
        raise DataError(f"{path}: dataset.json not found. A dataset folder needs a dataset.json "
                        "in MSD or nnU-Net v2 style.")
    return path


def _channel_dict(d: Any, key: str, path: Path) -> tuple[str, ...]:
    if not isinstance(d, dict) or not d:
        raise DataError(f"{path}: '{key}' must be a non-empty mapping like {{\"0\": \"MRI\"}}.")
    try:
        items = sorted((int(k), str(v)) for k, v in d.items())
    except ValueError as e:
        raise DataError(f"{path}: keys of '{key}' must be channel indices \"0\", \"1\", ...") from e
    if [k for k, _ in items] != list(range(len(items))):
        raise DataError(f"{path}: '{key}' must have keys 0..{len(items) - 1}, got {[k for k, _ in items]}.")
    return tuple(v for _, v in items)


def _labels(d: Any, path: Path, nnunet: bool) -> dict[int, str]:
    if not isinstance(d, dict) or not d:
        raise DataError(f"{path}: 'labels' must be a non-empty mapping.")
    labels: dict[int, str] = {}
    for k, v in d.items():
        if nnunet:
            if isinstance(v, (list, tuple)):
                raise DataError(f"{path}: label '{k}' is a region ({v}); region-based labels are not "
                                "supported yet. Declare one integer per class.")
            name, value = str(k), v
        else:
            name, value = str(v), k
        try:
            ivalue = int(value)
        except (TypeError, ValueError) as e:
            raise DataError(f"{path}: label value {value!r} for '{name}' is not an integer.") from e
        if ivalue in labels:
            raise DataError(f"{path}: label value {ivalue} is declared twice.")
        labels[ivalue] = name
    labels = dict(sorted(labels.items()))
    if list(labels) != list(range(len(labels))):
        raise DataError(f"{path}: label values must be 0..K-1 with 0 = background, got {list(labels)}. "
                        "Remap the label files to consecutive values.")
    return labels


def _resolve(root: Path, rel: str) -> Path:
    p = Path(rel)
    return p if p.is_absolute() else (root / p)


def _entry_case(root: Path, entry: Any, path: Path, where: str, need_label: bool) -> Case:
    if isinstance(entry, str):
        entry = {"image": entry}
    if not isinstance(entry, dict) or ("image" not in entry and "images" not in entry):
        raise DataError(f"{path}: each '{where}' entry needs an 'image' key, got {entry!r}.")
    imgs = entry.get("image", entry.get("images"))
    imgs = [imgs] if isinstance(imgs, str) else list(imgs)
    if not imgs:
        raise DataError(f"{path}: '{where}' entry {entry!r} lists no image files.")
    image_paths = tuple(_resolve(root, i) for i in imgs)
    first = image_paths[0].name
    case_id = str(entry.get("case_id") or entry.get("id") or "")
    if not case_id:
        case_id = _strip_ending(first)
        if len(image_paths) > 1:
            case_id = re.sub(r"_\d{4}$", "", case_id)
    label = entry.get("label")
    if need_label and not label:
        raise DataError(f"{path}: training case '{case_id}' has no 'label'.")
    label_path = _resolve(root, label) if label else None
    patient = str(entry.get("patient", case_id))
    return Case(case_id, image_paths, label_path, patient)


def _discover(root: Path, folder: str, label_folder: str | None, ending: str, nch: int,
              path: Path) -> list[Case]:
    d = root / folder
    if not d.is_dir():
        return []
    pat = re.compile(r"^(.*)_(\d{4})" + re.escape(ending) + r"$")
    groups: dict[str, dict[int, Path]] = {}
    for f in sorted(d.iterdir()):
        m = pat.match(f.name)
        if m:
            groups.setdefault(m.group(1), {})[int(m.group(2))] = f
    cases = []
    for cid, chans in sorted(groups.items()):
        want = list(range(nch))
        if sorted(chans) != want:
            missing = [f"{cid}_{c:04d}{ending}" for c in want if c not in chans]
            raise DataError(f"{d}: case '{cid}' has channel files {sorted(chans)}, expected {want}; "
                            f"missing {missing}.")
        label = root / label_folder / f"{cid}{ending}" if label_folder else None
        cases.append(Case(cid, tuple(chans[c] for c in want), label, cid))
    return cases


def _check_files(cases: Sequence[Case], path: Path) -> None:
    seen: set[str] = set()
    for c in cases:
        if c.case_id in seen:
            raise DataError(f"{path}: case id '{c.case_id}' appears twice; case ids must be unique.")
        seen.add(c.case_id)
        for p in c.image_paths:
            if not p.is_file():
                raise DataError(f"case '{c.case_id}': image file {p} not found (listed in {path}).")
        if c.label_path is not None and not c.label_path.is_file():
            raise DataError(f"case '{c.case_id}': label file {c.label_path} not found (listed in {path}).")


def _infer_dims(meta: dict, cases: Sequence[Case], path: Path) -> int:
    if "dims" in meta:
        if meta["dims"] not in (2, 3):
            raise DataError(f"{path}: 'dims' must be 2 or 3, got {meta['dims']!r}.")
        return int(meta["dims"])
    tis = meta.get("tensorImageSize")
    if tis is not None:
        tis = str(tis).upper()
        if tis not in ("2D", "3D", "4D"):
            raise DataError(f"{path}: 'tensorImageSize' must be 2D, 3D or 4D, got {tis!r}.")
        return 2 if tis == "2D" else 3
    if not cases:
        return 3
    first = cases[0].image_paths[0]
    name = first.name.lower()
    if name.endswith(io.PIL_SUFFIXES):
        return 2
    try:
        import nibabel as nib

        shape = nib.load(str(first)).shape
    except Exception as e:  # header unreadable: report as a data error naming the file
        raise DataError(f"{first}: cannot read the NIfTI header to infer dims ({e}); add \"dims\" "
                        f"to {path}.") from e
    return 2 if len(shape) == 2 or (len(shape) >= 3 and shape[2] == 1) else 3


def load_dataset(root: str | Path) -> DatasetSpec:
    """Reads `root/dataset.json` (MSD or nnU-Net v2 style) into a DatasetSpec.

    All referenced files are checked to exist. Raises DataError naming the path/case/key.
    """
    root = Path(root).expanduser().resolve()
    path = _json_path(root)
    try:
        meta = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: invalid JSON at line {e.lineno} column {e.colno}: {e.msg}.") from e
    if not isinstance(meta, dict):
        raise DataError(f"{path}: must hold a JSON object.")
    if "labels" not in meta:
        raise DataError(f"{path}: missing key 'labels'.")
    nnunet = "channel_names" in meta
    if nnunet:
        channel_names = _channel_dict(meta["channel_names"], "channel_names", path)
    elif "modality" in meta:
        channel_names = _channel_dict(meta["modality"], "modality", path)
    else:
        raise DataError(f"{path}: needs 'modality' (MSD style) or 'channel_names' (nnU-Net v2 style).")
    labels = _labels(meta["labels"], path, nnunet)

    if nnunet:
        ending = meta.get("file_ending")
        if not ending:
            raise DataError(f"{path}: nnU-Net v2 style needs 'file_ending' (e.g. \".nii.gz\").")
        if meta.get("training"):
            training = [_entry_case(root, e, path, "training", True) for e in meta["training"]]
        elif isinstance(meta.get("dataset"), dict):
            training = []
            for cid, e in meta["dataset"].items():
                e = dict(e)
                e.setdefault("case_id", cid)
                training.append(_entry_case(root, e, path, "dataset", True))
        else:
            training = _discover(root, "imagesTr", "labelsTr", ending, len(channel_names), path)
            if not training:
                raise DataError(f"{root / 'imagesTr'}: no training images named "
                                f"{{case}}_{{XXXX}}{ending} found.")
            n = meta.get("numTraining")
            if n is not None and int(n) != len(training):
                raise DataError(f"{path}: numTraining is {n} but {len(training)} cases were found in "
                                f"{root / 'imagesTr'}.")
        if meta.get("test"):
            test = [_entry_case(root, e, path, "test", False) for e in meta["test"]]
        else:
            test = _discover(root, "imagesTs", None, ending, len(channel_names), path)
    else:
        training = [_entry_case(root, e, path, "training", True) for e in meta.get("training", [])]
        test = [_entry_case(root, e, path, "test", False) for e in meta.get("test", [])]
    _check_files(training, path)
    _check_files(test, path)
    dims = _infer_dims(meta, training or test, path)
    return DatasetSpec(
        root=root,
        name=str(meta.get("name", root.name)),
        dims=dims,
        channel_names=channel_names,
        modalities=tuple(_modality(c) for c in channel_names),
        labels=labels,
        training=tuple(training),
        test=tuple(test),
    )


def _split_counts(n: int, fractions: Sequence[float]) -> list[int]:
    raw = [f * n for f in fractions]
    counts = [int(np.floor(r)) for r in raw]
    # Largest remainders get the leftover patients (ties: earlier split first).
    order = sorted(range(3), key=lambda i: (-(raw[i] - counts[i]), i))
    for i in order[: n - sum(counts)]:
        counts[i] += 1
    if n >= 3:
        for i in range(3):
            if counts[i] == 0 and fractions[i] > 0:
                donor = max(range(3), key=lambda j: counts[j])
                counts[donor] -= 1
                counts[i] += 1
    return counts


def split_cases(cases: Sequence[Case], seed: int = 0,
                fractions: Sequence[float] = (0.7, 0.1, 0.2)) -> dict[str, tuple[Case, ...]]:
    """Patient-level split into {"train", "val", "test"}.

    Patients (not cases) are shuffled by `seed` (from their sorted ids, so the input order
    does not matter) and divided by `fractions` (largest-remainder rounding). With >= 3
    patients every split with a positive fraction gets at least one patient. All cases of
    one patient land in one split; within a split, cases keep their input order.
    """
    fractions = tuple(float(f) for f in fractions)
    if len(fractions) != 3 or min(fractions) < 0 or abs(sum(fractions) - 1.0) > 1e-6:
        raise ConfigError(f"split fractions must be three non-negative numbers summing to 1, got {fractions}.")
    patients = sorted({c.patient_id for c in cases})
    perm = np.random.default_rng(seed).permutation(len(patients))
    counts = _split_counts(len(patients), fractions)
    assign: dict[str, str] = {}
    start = 0
    for name, n in zip(("train", "val", "test"), counts):
        for k in perm[start:start + n]:
            assign[patients[int(k)]] = name
        start += n
    return {name: tuple(c for c in cases if assign[c.patient_id] == name) for name in ("train", "val", "test")}


def kfold_cases(cases: Sequence[Case], k: int, fold: int, seed: int = 0) -> dict[str, tuple[Case, ...]]:
    """Patient-level k-fold: {"train", "val"} for fold `fold` of `k` (deterministic by seed)."""
    if not 0 <= fold < k:
        raise ConfigError(f"fold must be in 0..{k - 1}, got {fold}.")
    patients = sorted({c.patient_id for c in cases})
    if len(patients) < k:
        raise DataError(f"{k}-fold split needs at least {k} patients, got {len(patients)}.")
    perm = np.random.default_rng(seed).permutation(len(patients))
    val_p = {patients[int(i)] for i in np.array_split(perm, k)[fold]}
    return {"train": tuple(c for c in cases if c.patient_id not in val_p),
            "val": tuple(c for c in cases if c.patient_id in val_p)}


def load_case(spec: DatasetSpec, case: Case) -> tuple[io.Image, np.ndarray | None]:
    """Reads and validates a case -> (Image, int32 label `[X, Y, (Z)]` or None).

    Checks: the channel count matches the dataset, image and label agree in shape and
    affine (canonical, i.e. in world space), all voxels are finite, and label values are
    declared in dataset.json. Raises DataError naming the case.
    """
    try:
        image = io.read_image(case.image_paths, spec.dims)
    except DataError as e:
        raise DataError(f"case '{case.case_id}': {e}") from e
    if image.num_channels != spec.num_channels:
        raise DataError(f"case '{case.case_id}': image has {image.num_channels} channels but the dataset "
                        f"declares {spec.num_channels} ({', '.join(spec.channel_names)}).")
    if case.label_path is None:
        return image, None
    try:
        label, affine, _ = io.read_label(case.label_path, spec.dims)
    except DataError as e:
        raise DataError(f"case '{case.case_id}': {e}") from e
    if label.shape != image.data.shape[:-1]:
        raise DataError(f"case '{case.case_id}': label shape {label.shape} ({case.label_path}) differs from "
                        f"image shape {image.data.shape[:-1]} ({image.path}) in canonical orientation. "
                        "Resample the label onto the image grid.")
    if not np.allclose(affine, image.affine, rtol=1e-4, atol=1e-3):
        raise DataError(f"case '{case.case_id}': label affine (world position/orientation of "
                        f"{case.label_path}) differs from the image affine ({image.path}).\n"
                        f"image:\n{np.array2string(image.affine, precision=4)}\n"
                        f"label:\n{np.array2string(affine, precision=4)}\n"
                        "Resample/reorient the label onto the image grid (same affine and shape).")
    present = np.unique(label)
    undeclared = sorted(int(v) for v in present if int(v) not in spec.labels)
    if undeclared:
        raise DataError(f"case '{case.case_id}': label file {case.label_path} holds undeclared values "
                        f"{undeclared}; dataset.json declares {sorted(spec.labels)}. Fix the label file or "
                        "declare the classes.")
    return image, label
