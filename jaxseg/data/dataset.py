"""dataset.json -> cases; validated case loading.

Both common layouts are understood, and the keys may be mixed (a dataset.json with
`channel_names` and MSD-style `labels` is read as such):

Channels
    `"channel_names": {"0": "FLAIR", "1": "T1c"}` (nnU-Net v2) or `"modality": {"0": "MRI"}`
    (MSD).

Labels (the orientation is read from the content of `labels`, not from the other keys)
    MSD: file value -> name, `{"0": "background", "255": "vessel"}` (keys parse as integers,
    values are names). nnU-Net v2: name -> file value, `{"background": 0, "liver": 1}`
    (values are JSON integers). Region lists (`"whole": [1, 2]`), mixed entries and
    numeric strings on both sides are errors naming the file and key. The declared values
    need not be consecutive: sorted, they are the classes 0..K-1 (`label_values[k]` is
    the file value of class k; the mapping is `jaxseg.data.labels`) and `load_case` maps
    file values to classes (0/255 -> 0/1, BraTS 0,1,2,4 -> 0,1,2,3). Value 0 must be
    declared and is class 0, the background. `DatasetSpec.labels` is keyed by class index.

Cases
    `"training"`: entries `{"image": file | [one file per channel], "label": file}`, with
    optional `"patient"` and `"case_id"`/`"id"`; other keys (such as a `"mask"`) are
    ignored. An image may be a DICOM series folder or a `.dcm` file (`jaxseg.data.dicom`;
    its case id is the folder name). `"test"`: strings or such entries (a `"label"` there
    is kept). A single file may be 4D, its last axis the channels (MSD). Without
    `"training"`, a `"dataset"` mapping (`{case_id: {"images": [...], "label": ...}}`) or,
    with `"file_ending"` (e.g. ".nii.gz"), discovery from `imagesTr/{case}_{XXXX}{file_ending}` +
    `labelsTr/{case}{file_ending}` (test cases likewise from `imagesTs/`). `numTraining` /
    `numTest`, when given, must match.

Case classes (a jaxseg extension, for a classification head next to segmentation)
    `"case_classes": {"0": "absent", "1": "present"}` declares the class names (keys
    0..C-1); a case entry's `"class"` is one of them, by index (`1`) or by name
    (`"present"`), read into `Case.case_class` (the index). Either every training entry has
    a `class` or none has (the error names the first without one); test entries may have one.
    A `class` without `case_classes` is an error.

Common keys
    `"dims"` (2 or 3) overrides `tensorImageSize`; without either, dims is 2 for
    PNG/TIFF/GIF and for NIfTI whose first training image has a singleton third axis, else 3.
    The default patient id is the case id (the splits keep a patient's cases together:
    `jaxseg.data.splits`). Case ids are file names without the ending (and, for nnU-Net v2
    per-channel files, without `_XXXX`).

`modalities` maps each channel name to the normalisation family used by
`jaxseg.data.preprocess.normalize`: "CT" (case-insensitive "ct"), "noNorm",
"rgb_to_0_1" are kept as such; everything else (MRI, T1, FLAIR, US, ...) is z-scored.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from jaxseg.data import dicom, io
from jaxseg.data.labels import check_label_values, values_to_classes
from jaxseg.errors import DataError

__all__ = ["Case", "DatasetSpec", "load_dataset", "load_case"]

_MRI_NAMES = {
    "mri",
    "mr",
    "t1",
    "t1w",
    "t1gd",
    "t1c",
    "t1ce",
    "t2",
    "t2w",
    "flair",
    "adc",
    "dwi",
    "pd",
    "t2star",
    "swi",
    "cine",
    "lge",
    "bold",
}


@dataclasses.dataclass(frozen=True)
class Case:
    """One case: its image files (one per channel, or one multi-channel file), its label
    file (None for unlabelled test cases) and the patient it belongs to."""

    case_id: str
    image_paths: tuple[Path, ...]
    label_path: Path | None
    patient_id: str
    case_class: int | None = None  # index into DatasetSpec.case_classes; None: not given


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
    """What a dataset.json declares, with resolved absolute paths.

    `labels` maps class index 0..K-1 to its name; `label_values[k]` is the value class k
    has in the label files (ascending, `label_values[0] == 0`; empty means the identity).
    """

    root: Path
    name: str
    dims: int
    channel_names: tuple[str, ...]
    modalities: tuple[str, ...]
    labels: dict[int, str]
    training: tuple[Case, ...]
    test: tuple[Case, ...]
    label_values: tuple[int, ...] = ()
    case_classes: tuple[str, ...] = ()  # declared case class names (dataset.json case_classes)

    def __post_init__(self):
        object.__setattr__(
            self,
            "label_values",
            check_label_values(self.label_values, len(self.labels), f"dataset {self.root}"),
        )

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
        raise DataError(
            f"{root}: dataset folder not found. Pass the folder that holds dataset.json "
            "(e.g. write a demo one with `python -m jaxseg.data.synthetic`)."
        )
    path = root / "dataset.json"
    if not path.is_file():
        raise DataError(
            f"{path}: dataset.json not found. A dataset folder needs a dataset.json "
            "in MSD or nnU-Net v2 style."
        )
    return path


def _channel_dict(d: Any, key: str, path: Path) -> tuple[str, ...]:
    if not isinstance(d, dict) or not d:
        raise DataError(f'{path}: \'{key}\' must be a non-empty mapping like {{"0": "MRI"}}.')
    try:
        items = sorted((int(k), str(v)) for k, v in d.items())
    except ValueError as e:
        raise DataError(f'{path}: keys of \'{key}\' must be channel indices "0", "1", ...') from e
    if [k for k, _ in items] != list(range(len(items))):
        raise DataError(
            f"{path}: '{key}' must have keys 0..{len(items) - 1}, got {[k for k, _ in items]}."
        )
    return tuple(v for _, v in items)


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _int_string(x: Any) -> int | None:
    try:
        return int(x) if isinstance(x, str) else None
    except ValueError:
        return None


def _labels(d: Any, path: Path) -> dict[int, str]:
    """`labels` in either orientation -> {file value: name}, sorted by value."""
    if not isinstance(d, dict) or not d:
        raise DataError(
            f"{path}: 'labels' must be a non-empty mapping, value -> name "
            '({"0": "background", "1": "liver"}) or name -> value '
            '({"background": 0, "liver": 1}).'
        )
    pairs, styles = [], {}
    for k, v in d.items():
        where = f"{path}: labels[{k!r}] = {v!r}"
        if isinstance(v, (list, tuple)):
            raise DataError(
                f"{where} is a region (a list of values); region-based labels are not "
                "supported yet. Declare one integer per class."
            )
        if _is_int(v):
            styles.setdefault("name -> value", k)
            pairs.append((v, str(k)))
        elif isinstance(v, str) and _int_string(k) is not None and _int_string(v) is None:
            styles.setdefault("value -> name", k)
            pairs.append((_int_string(k), v))
        elif isinstance(v, str) and _int_string(k) is not None:
            raise DataError(
                f"{where}: key and value are both numbers, so it is ambiguous which is "
                'the file value. Write value -> name ({"1": "liver"}) or name -> '
                'integer ({"liver": 1}).'
            )
        else:
            raise DataError(
                f'{where}: expected a value -> name entry ({{"1": "liver"}}, key an '
                'integer) or a name -> integer entry ({"liver": 1}).'
            )
        if len(styles) > 1:
            (a, ka), (b, kb) = styles.items()
            raise DataError(
                f"{path}: 'labels' mixes {a} (key {ka!r}) and {b} (key {kb!r}) "
                "entries; use one orientation."
            )
    labels: dict[int, str] = {}
    for value, name in pairs:
        if value in labels:
            raise DataError(
                f"{path}: label value {value} is declared twice in 'labels' "
                f"({labels[value]!r} and {name!r})."
            )
        labels[value] = name
    names = list(labels.values())
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise DataError(
            f"{path}: label name(s) {twice} are declared for more than one value in "
            "'labels'; give each class its own name."
        )
    values = sorted(labels)
    if values[0] != 0:
        raise DataError(
            f"{path}: 'labels' must declare value 0 (the background), got values {values}."
        )
    return {v: labels[v] for v in values}


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
        # A DICOM series folder's name is the id as it is ("1.2.840.113619" has no ending).
        case_id = first if image_paths[0].is_dir() else _strip_ending(first)
        if len(image_paths) > 1:
            case_id = re.sub(r"_\d{4}$", "", case_id)
    label = entry.get("label")
    if need_label and not label:
        raise DataError(f"{path}: training case '{case_id}' has no 'label'.")
    label_path = _resolve(root, label) if label else None
    patient = str(entry.get("patient", case_id))
    # The raw `class` value; `_case_classes` checks it and turns it into an index.
    return Case(case_id, image_paths, label_path, patient, entry.get("class"))


def _listed_cases(root: Path, entries: Any, path: Path, where: str, need_label: bool) -> list[Case]:
    """Cases of a listed `where` ("training", "test"); ids from file names, or from the
    image folders when the file names repeat (BraTS: one folder per case, same file names)."""
    cases = [_entry_case(root, e, path, where, need_label) for e in entries]
    ids = [c.case_id for c in cases]
    folders = [c.image_paths[0].parent.name for c in cases]
    explicit = any(isinstance(e, dict) and ("case_id" in e or "id" in e) for e in entries)
    if len(set(ids)) < len(ids) and len(set(folders)) == len(folders) and not explicit:
        cases = [
            dataclasses.replace(
                c, case_id=f, patient_id=f if c.patient_id == c.case_id else c.patient_id
            )
            for c, f in zip(cases, folders)
        ]
    return cases


def _discover(
    root: Path, folder: str, label_folder: str | None, ending: str, nch: int, path: Path
) -> list[Case]:
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
            raise DataError(
                f"{d}: case '{cid}' has channel files {sorted(chans)}, expected {want}; "
                f"missing {missing}."
            )
        label = root / label_folder / f"{cid}{ending}" if label_folder else None
        cases.append(Case(cid, tuple(chans[c] for c in want), label, cid))
    return cases


def _case_classes(
    meta: dict, cases: dict[str, list[Case]], path: Path
) -> tuple[tuple[str, ...], dict[str, list[Case]]]:
    """`case_classes` and each case's `class` -> (class names, cases with `case_class` the
    index). Raises DataError naming the key or the case."""
    declared = meta.get("case_classes")
    names: tuple[str, ...] = ()
    if declared is not None:
        if not isinstance(declared, dict) or not declared:
            raise DataError(
                f"{path}: 'case_classes' must be a non-empty mapping of class index to name, "
                'like {"0": "absent", "1": "present"}.'
            )
        keys = sorted(_int_string(k) if _int_string(k) is not None else -1 for k in declared)
        if keys != list(range(len(declared))):
            raise DataError(
                f"{path}: 'case_classes' keys must be the indices 0..{len(declared) - 1}; "
                f"got {sorted(declared)}."
            )
        names = tuple(str(declared[str(i)]) for i in range(len(declared)))
    out = {}
    for where, listed in cases.items():
        given = [c for c in listed if c.case_class is not None]
        if given and not names:
            raise DataError(
                f"{path}: case '{given[0].case_id}' has a 'class' but no 'case_classes' "
                'declares the class names; add e.g. "case_classes": {"0": "absent", '
                '"1": "present"}.'
            )
        if where == "training" and given and len(given) < len(listed):
            first = next(c for c in listed if c.case_class is None)
            raise DataError(
                f"{path}: training case '{first.case_id}' has no 'class' but "
                f"{len(given)} of {len(listed)} training cases have one; give every training "
                "case a 'class' or none."
            )
        resolved = []
        for c in listed:
            v = c.case_class
            if v is not None:
                index = names.index(v) if isinstance(v, str) and v in names else v
                if not _is_int(index) or not 0 <= index < len(names):
                    raise DataError(
                        f"{path}: case '{c.case_id}' has class {v!r}; the declared classes "
                        f"are {dict(enumerate(names))} (give an index or a name)."
                    )
                c = dataclasses.replace(c, case_class=int(index))
            resolved.append(c)
        out[where] = resolved
    return names, out


def _check_files(cases: Sequence[Case], path: Path) -> None:
    seen: set[str] = set()
    for c in cases:
        if c.case_id in seen:
            raise DataError(
                f"{path}: case id '{c.case_id}' appears twice; case ids must be unique "
                '(give the entries a "case_id").'
            )
        seen.add(c.case_id)
        for p in c.image_paths:
            if not (p.is_file() or p.is_dir()):  # a folder is a DICOM series
                raise DataError(f"case '{c.case_id}': image file {p} not found (listed in {path}).")
        if c.label_path is not None and not c.label_path.is_file():
            raise DataError(
                f"case '{c.case_id}': label file {c.label_path} not found (listed in {path})."
            )


def _check_count(meta: dict, key: str, found: int, path: Path) -> None:
    if key not in meta:
        return
    n = meta[key]
    if not _is_int(n) or n != found:
        raise DataError(
            f"{path}: '{key}' is {n!r} but {found} cases are listed or found; "
            f"correct '{key}' or the case list."
        )


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
    if dicom.is_dicom_path(first):
        return dicom.series_dims(first)
    try:
        import nibabel as nib

        shape = nib.load(str(first)).shape
    except Exception as e:  # header unreadable: report as a data error naming the file
        raise DataError(
            f'{first}: cannot read the NIfTI header to infer dims ({e}); add "dims" to {path}.'
        ) from e
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
        raise DataError(
            f"{path}: invalid JSON at line {e.lineno} column {e.colno}: {e.msg}."
        ) from e
    if not isinstance(meta, dict):
        raise DataError(f"{path}: must hold a JSON object.")
    if "labels" not in meta:
        raise DataError(f"{path}: missing key 'labels'.")
    if "channel_names" in meta:
        channel_names = _channel_dict(meta["channel_names"], "channel_names", path)
    elif "modality" in meta:
        channel_names = _channel_dict(meta["modality"], "modality", path)
    else:
        raise DataError(
            f"{path}: needs 'modality' (MSD style) or 'channel_names' (nnU-Net v2 style)."
        )
    value_names = _labels(meta["labels"], path)
    ending = meta.get("file_ending")
    for key in ("training", "test"):
        if key in meta and not isinstance(meta[key], list):
            raise DataError(
                f"{path}: '{key}' must be a list of cases, got {type(meta[key]).__name__}."
            )

    if meta.get("training"):
        training = _listed_cases(root, meta["training"], path, "training", True)
    elif isinstance(meta.get("dataset"), dict):
        training = []
        for cid, e in meta["dataset"].items():
            e = dict(e)
            e.setdefault("case_id", cid)
            training.append(_entry_case(root, e, path, "dataset", True))
    elif ending:
        training = _discover(root, "imagesTr", "labelsTr", ending, len(channel_names), path)
        if not training:
            raise DataError(
                f"{root / 'imagesTr'}: no training images named {{case}}_{{XXXX}}{ending} found."
            )
    elif "training" in meta:
        training = []  # declared empty (a test-only dataset)
    else:
        raise DataError(
            f"{path}: lists no cases: add a 'training' list, a 'dataset' mapping, or "
            "'file_ending' (e.g. \".nii.gz\") to find them in imagesTr/ and labelsTr/."
        )
    if meta.get("test"):
        test = _listed_cases(root, meta["test"], path, "test", False)
    elif ending:
        test = _discover(root, "imagesTs", None, ending, len(channel_names), path)
    else:
        test = []
    for key, cases in (("numTraining", training), ("numTest", test)):
        _check_count(meta, key, len(cases), path)
    case_classes, found = _case_classes(meta, {"training": training, "test": test}, path)
    training, test = found["training"], found["test"]
    _check_files(training, path)
    _check_files(test, path)
    dims = _infer_dims(meta, training or test, path)
    return DatasetSpec(
        root=root,
        name=str(meta.get("name", root.name)),
        dims=dims,
        channel_names=channel_names,
        modalities=tuple(_modality(c) for c in channel_names),
        labels=dict(enumerate(value_names.values())),
        training=tuple(training),
        test=tuple(test),
        label_values=tuple(value_names),
        case_classes=case_classes,
    )


def load_case(spec: DatasetSpec, case: Case) -> tuple[io.Image, np.ndarray | None]:
    """Reads and validates a case -> (Image, int32 classes `[X, Y, (Z)]` or None).

    The label's file values are mapped to class indices 0..K-1 (`spec.label_values`).
    Checks: the channel count matches the dataset, image and label agree in shape and
    affine (canonical, i.e. in world space), all voxels are finite, and label values are
    declared in dataset.json. Raises DataError naming the case.
    """
    try:
        image = io.read_image(case.image_paths, spec.dims)
    except DataError as e:
        raise DataError(f"case '{case.case_id}': {e}") from e
    if image.num_channels != spec.num_channels:
        raise DataError(
            f"case '{case.case_id}': image has {image.num_channels} channels but the dataset "
            f"declares {spec.num_channels} ({', '.join(spec.channel_names)})."
        )
    if case.label_path is None:
        return image, None
    try:
        label, affine, _ = io.read_label(case.label_path, spec.dims)
    except DataError as e:
        raise DataError(f"case '{case.case_id}': {e}") from e
    if label.shape != image.data.shape[:-1]:
        raise DataError(
            f"case '{case.case_id}': label shape {label.shape} ({case.label_path}) differs from "
            f"image shape {image.data.shape[:-1]} ({image.path}) in canonical orientation. "
            "Resample the label onto the image grid."
        )
    if not np.allclose(affine, image.affine, rtol=1e-4, atol=1e-3):
        raise DataError(
            f"case '{case.case_id}': label affine (world position/orientation of "
            f"{case.label_path}) differs from the image affine ({image.path}).\n"
            f"image:\n{np.array2string(image.affine, precision=4)}\n"
            f"label:\n{np.array2string(affine, precision=4)}\n"
            "Resample/reorient the label onto the image grid (same affine and shape)."
        )
    classes, undeclared = values_to_classes(label, spec.label_values)
    if undeclared:
        raise DataError(
            f"case '{case.case_id}': label file {case.label_path} holds undeclared values "
            f"{undeclared}; dataset.json declares {list(spec.label_values)}. Fix the label "
            "file or declare the classes."
        )
    return image, classes
