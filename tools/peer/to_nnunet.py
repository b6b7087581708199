"""Convert a jaxseg dataset into nnU-Net v2's raw format, jaxseg's test split held out.

    .venv/bin/python tools/peer/to_nnunet.py --data DATASET_DIR --raw NNUNET_RAW [--id 501]

Every case is read with jaxseg's own loader (`jaxseg.data.dataset.load_case`: canonical RAS
arrays, class indices 0..K-1, so the labels are consecutive as nnU-Net requires) and
written as NIfTI with the canonical affine:

    NNUNET_RAW/Dataset<ID>_<name>/
      imagesTr/CASE_XXXX.nii.gz   one file per channel; jaxseg's train + val pool only
      labelsTr/CASE.nii.gz        uint8/uint16 class indices
      imagesTs/CASE_XXXX.nii.gz   jaxseg's held-out test cases (nnU-Net never trains on them)
      labelsTs/CASE.nii.gz        their labels, for scoring only (nnU-Net ignores the folder)
      dataset.json                channel_names, labels {"background": 0, ...}, numTraining,
                                  file_ending ".nii.gz"
      splits_final.json           jaxseg's folds 0..num_folds-1 as nnU-Net's [{"train", "val"}]
      jaxseg_conversion.json      source dataset, split seed, test ids, class names

2D cases become [X, Y, 1] volumes whose third axis has spacing 999 mm, the pseudo-3D form
nnU-Net's SimpleITK reader turns back into 2D (its planner drops 3d_fullres when the first
transposed axis has one voxel). splits_final.json must be copied into
nnUNet_preprocessed/Dataset<ID>_<name>/ after `nnUNetv2_plan_and_preprocess` so that
nnU-Net's fold k is jaxseg's fold k (`jaxseg.data.splits.make_splits`).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
from nibabel import orientations as nio

from jaxseg.data import io
from jaxseg.data.dataset import DatasetSpec, load_case, load_dataset
from jaxseg.data.splits import make_splits
from jaxseg.errors import DataError

__all__ = ["PSEUDO_3D_SPACING", "convert", "dataset_folder_name", "nifti_affine", "fold_splits"]

PSEUDO_3D_SPACING = 999.0  # nnU-Net's spacing for the singleton axis of a 2D image
CONVERSION_FILE = "jaxseg_conversion.json"


def dataset_folder_name(dataset_id: int, name: str) -> str:
    """`Dataset<ID:03d>_<name>` with the name reduced to letters, digits, `-` and `_`."""
    if not 1 <= dataset_id <= 999:
        raise DataError(f"--id {dataset_id}: nnU-Net dataset ids are 1..999.")
    clean = re.sub(r"[^A-Za-z0-9_-]+", "", name) or "jaxseg"
    return f"Dataset{dataset_id:03d}_{clean}"


def nifti_affine(image: io.Image) -> np.ndarray:
    """4x4 affine for writing `image.data` (canonical `[X, Y, (Z,) C]`) as NIfTI voxels.

    3D: the canonical affine itself. 2D: the two canonical in-plane axes first, then the
    axis the 2D image was a slice of (for a PNG, z), scaled to PSEUDO_3D_SPACING mm, so
    that the [X, Y, 1] volume has spacing (sx, sy, 999).
    """
    affine = np.asarray(image.affine, np.float64)
    if image.dims == 3:
        return affine.copy()
    # The slice axis is the file's third voxel axis (a PNG's z, a 2D NIfTI's singleton);
    # where it went in canonical order, exactly as jaxseg.data.io finds it.
    single = int(nio.io_orientation(image.original_affine)[2, 0])
    kept = [i for i in range(3) if i != single]
    out = np.eye(4)
    out[:3, 0] = affine[:3, kept[0]]
    out[:3, 1] = affine[:3, kept[1]]
    column = affine[:3, single]
    norm = float(np.linalg.norm(column))
    out[:3, 2] = column / norm * PSEUDO_3D_SPACING if norm > 0 else [0, 0, PSEUDO_3D_SPACING]
    out[:3, 3] = affine[:3, 3]
    return out


def _save(array: np.ndarray, affine: np.ndarray, path: Path, dtype) -> None:
    img = nib.Nifti1Image(np.ascontiguousarray(array.astype(dtype)), affine)
    img.set_data_dtype(dtype)
    img.header.set_qform(affine, code=1)
    img.header.set_sform(affine, code=1)
    img.header.set_xyzt_units("mm")
    nib.save(img, str(path))


def _spatial(array: np.ndarray, dims: int) -> np.ndarray:
    """`[X, Y, (Z)]` -> the NIfTI voxel array: 2D gets the singleton third axis."""
    return array[:, :, None] if dims == 2 else array


def fold_splits(spec: DatasetSpec, seed: int, num_folds: int) -> tuple[list[dict], list[str]]:
    """jaxseg's folds as nnU-Net's splits_final.json entries, and the test case ids."""
    folds, test = [], None
    for k in range(num_folds):
        s = make_splits(spec.training, seed=seed, fold=k, num_folds=num_folds)
        folds.append(
            {"train": [c.case_id for c in s["train"]], "val": [c.case_id for c in s["val"]]}
        )
        ids = [c.case_id for c in s["test"]]
        if test is not None and ids != test:
            raise DataError(f"fold {k}: the test split differs from fold 0's (it must not).")
        test = ids
    return folds, test or []


def _nnunet_labels(spec: DatasetSpec) -> dict[str, int]:
    """{"background": 0, name: class, ...}: nnU-Net names class 0 "background" (it insists)."""
    labels, used = {"background": 0}, {"background"}
    for k in range(1, spec.num_classes):
        name, n = spec.labels[k], 2
        while name in used:
            name, n = f"{spec.labels[k]}_{n}", n + 1
        labels[name] = k
        used.add(name)
    return labels


def convert(
    data: str | Path,
    raw: str | Path,
    *,
    dataset_id: int = 501,
    name: str | None = None,
    seed: int = 0,
    num_folds: int = 5,
    progress: bool = False,
) -> Path:
    """Writes the nnU-Net raw dataset for jaxseg dataset `data` under `raw`; returns its folder.

    Test cases (jaxseg's `make_splits(..., seed, fold=0, num_folds)` "test") go to imagesTs
    and labelsTs; all other training cases to imagesTr and labelsTr. Raises DataError for an
    unreadable case (naming it) or an existing non-empty target folder.
    """
    spec = load_dataset(data)
    out = Path(raw) / dataset_folder_name(dataset_id, name or spec.name)
    if out.exists() and any(out.iterdir()):
        raise DataError(f"{out} already holds files; remove it or choose another --id.")
    folds, test_ids = fold_splits(spec, seed, num_folds)
    test = set(test_ids)
    label_dtype = io.mask_dtype(spec.num_classes - 1)
    for sub in ("imagesTr", "labelsTr", "imagesTs", "labelsTs"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    spacings = {}
    cases = spec.training
    for i, case in enumerate(cases):
        if "/" in case.case_id or case.case_id != case.case_id.strip():
            raise DataError(
                f"case '{case.case_id}': the id cannot be used as an nnU-Net file name."
            )
        image, label = load_case(spec, case)
        affine = nifti_affine(image)
        img_dir, lab_dir = (
            ("imagesTs", "labelsTs") if case.case_id in test else ("imagesTr", "labelsTr")
        )
        for c in range(image.num_channels):
            path = out / img_dir / f"{case.case_id}_{c:04d}.nii.gz"
            _save(_spatial(image.data[..., c], spec.dims), affine, path, np.float32)
        _save(
            _spatial(label, spec.dims),
            affine,
            out / lab_dir / f"{case.case_id}.nii.gz",
            label_dtype,
        )
        spacings[case.case_id] = [float(s) for s in image.spacing]
        if progress:
            print(f"\rconverted {i + 1}/{len(cases)} cases", end="", file=sys.stderr, flush=True)
    if progress:
        print(file=sys.stderr)
    dataset_json = {
        "name": spec.name,
        "description": f"converted by jaxseg tools/peer/to_nnunet.py from {spec.root}",
        "channel_names": {str(c): n for c, n in enumerate(spec.channel_names)},
        "labels": _nnunet_labels(spec),
        "numTraining": len(cases) - len(test),
        "file_ending": ".nii.gz",
    }
    (out / "dataset.json").write_text(json.dumps(dataset_json, indent=1) + "\n")
    (out / "splits_final.json").write_text(json.dumps(folds, indent=1) + "\n")
    record = {
        "source": str(spec.root),
        "dims": spec.dims,
        "split_seed": seed,
        "num_folds": num_folds,
        "test": test_ids,
        "classes": {str(k): v for k, v in spec.labels.items()},
        "label_values": list(spec.label_values),
        "spacing": spacings,
    }
    (out / CONVERSION_FILE).write_text(json.dumps(record, indent=1) + "\n")
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", required=True, help="jaxseg dataset folder (dataset.json)")
    parser.add_argument("--raw", required=True, help="nnUNet_raw folder to write into")
    parser.add_argument("--id", type=int, default=501, help="nnU-Net dataset id (1..999)")
    parser.add_argument("--name", default=None, help="dataset name (default: dataset.json's)")
    parser.add_argument("--seed", type=int, default=0, help="jaxseg's data.split_seed")
    parser.add_argument("--num-folds", type=int, default=5, help="jaxseg's data.num_folds")
    args = parser.parse_args(argv)
    try:
        out = convert(
            args.data,
            args.raw,
            dataset_id=args.id,
            name=args.name,
            seed=args.seed,
            num_folds=args.num_folds,
            progress=True,
        )
    except DataError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
