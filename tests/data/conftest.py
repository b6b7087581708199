"""Helpers and fixtures shared by the data tests (all inputs are written under tmp_path)."""

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from jaxseg.data import dataset


def save_nifti(path: Path, data: np.ndarray, affine: np.ndarray, dtype=np.float32) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    img = nib.Nifti1Image(np.asarray(data).astype(dtype), affine)
    img.header.set_sform(affine, code=1)
    img.header.set_qform(affine, code=1)
    nib.save(img, str(path))
    return path


def write_msd(
    root: Path,
    cases: dict,
    *,
    labels=None,
    dims=3,
    modality=("MRI",),
    affine=None,
    label_affines=None,
) -> Path:
    """cases: {case_id: (image array, label array)} -> an MSD-style dataset in root."""
    affine = np.eye(4) if affine is None else affine
    label_affines = label_affines or {}
    labels = labels or {"0": "background", "1": "fg"}
    training = []
    for cid, (img, lab) in cases.items():
        save_nifti(root / "imagesTr" / f"{cid}.nii.gz", img, affine)
        save_nifti(
            root / "labelsTr" / f"{cid}.nii.gz", lab, label_affines.get(cid, affine), np.uint8
        )
        training.append({"image": f"./imagesTr/{cid}.nii.gz", "label": f"./labelsTr/{cid}.nii.gz"})
    meta = {
        "name": "t",
        "tensorImageSize": f"{dims}D",
        "modality": {str(i): m for i, m in enumerate(modality)},
        "labels": labels,
        "training": training,
        "test": [],
    }
    (root / "dataset.json").write_text(json.dumps(meta))
    return root


@pytest.fixture(scope="module")
def spec2d(tmp_path_factory):
    """Six small labelled 2D cases (one smaller than a patch) for the pipeline tests."""
    root = tmp_path_factory.mktemp("pipe")
    rng = np.random.default_rng(0)
    cases = {}
    for i in range(5):
        shape = (40 + 4 * i, 36)
        img = rng.normal(100, 10, size=shape + (1,))
        lab = np.zeros(shape + (1,), np.uint8)
        lab[10:13, 20:23] = 1  # tiny foreground
        lab[30:32, 5:7] = 2
        cases[f"c{i}"] = (img, lab)
    small = np.zeros((10, 12, 1), np.uint8)
    small[4, 4] = 1
    cases["small"] = (rng.normal(size=(10, 12, 1)), small)
    write_msd(root, cases, dims=2, labels={"0": "bg", "1": "a", "2": "b"})
    return dataset.load_dataset(root)
