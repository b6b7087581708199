import json

import numpy as np
import pytest

from jaxseg.data import dataset
from jaxseg.errors import DataError

from .conftest import save_nifti, write_msd


def _cases(n=3, shape=(6, 7, 8), labels=(0, 1)):
    rng = np.random.default_rng(0)
    out = {}
    for i in range(n):
        lab = rng.choice(labels, size=shape).astype(np.uint8)
        out[f"c{i}"] = (rng.normal(size=shape), lab)
    return out


def test_msd_load_and_case(tmp_path):
    root = write_msd(tmp_path / "ds", _cases(), affine=np.diag([-1.0, -1.0, 2.0, 1.0]))
    spec = dataset.load_dataset(root)
    assert spec.dims == 3 and spec.channel_names == ("MRI",) and spec.modalities == ("MRI",)
    assert spec.labels == {0: "background", 1: "fg"} and spec.num_classes == 2
    assert [c.case_id for c in spec.training] == ["c0", "c1", "c2"]
    assert spec.training[0].patient_id == "c0" and spec.test == ()
    image, label = dataset.load_case(spec, spec.training[1])
    assert image.data.shape == (6, 7, 8, 1) and label.shape == (6, 7, 8) and label.dtype == np.int32


def test_missing_root_and_json(tmp_path):
    with pytest.raises(DataError, match="nowhere"):
        dataset.load_dataset(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="dataset.json"):
        dataset.load_dataset(tmp_path / "empty")


def test_missing_image_file(tmp_path):
    root = write_msd(tmp_path / "ds", _cases())
    (root / "imagesTr" / "c1.nii.gz").unlink()
    with pytest.raises(DataError, match=r"case 'c1'.*c1\.nii\.gz"):
        dataset.load_dataset(root)


def test_affine_mismatch_names_case(tmp_path):
    shifted = np.eye(4)
    shifted[0, 3] = 5.0
    root = write_msd(tmp_path / "ds", _cases(), label_affines={"c2": shifted})
    spec = dataset.load_dataset(root)
    dataset.load_case(spec, spec.training[0])
    with pytest.raises(DataError, match=r"(?s)case 'c2'.*affine.*[Rr]esample"):
        dataset.load_case(spec, spec.training[2])


def test_shape_mismatch(tmp_path):
    cases = _cases()
    cases["c1"] = (cases["c1"][0], np.zeros((6, 7, 9), np.uint8))
    spec = dataset.load_dataset(write_msd(tmp_path / "ds", cases))
    with pytest.raises(DataError, match=r"case 'c1'.*shape"):
        dataset.load_case(spec, spec.training[1])


def test_undeclared_labels(tmp_path):
    cases = _cases()
    lab = cases["c0"][1].copy()
    lab[0, 0, 0], lab[1, 0, 0] = 5, 7
    cases["c0"] = (cases["c0"][0], lab)
    spec = dataset.load_dataset(write_msd(tmp_path / "ds", cases))
    with pytest.raises(DataError, match=r"case 'c0'.*\[5, 7\]"):
        dataset.load_case(spec, spec.training[0])


def test_nan_case(tmp_path):
    cases = _cases()
    img = cases["c0"][0].copy()
    img[0, 0, 0] = np.nan
    cases["c0"] = (img, cases["c0"][1])
    spec = dataset.load_dataset(write_msd(tmp_path / "ds", cases))
    with pytest.raises(DataError, match=r"case 'c0'.*1 NaN/Inf"):
        dataset.load_case(spec, spec.training[0])


def test_nnunet_v2_discovered_multichannel(tmp_path):
    root = tmp_path / "Dataset001_X"
    rng = np.random.default_rng(0)
    for cid in ("a", "b"):
        for ch in range(2):
            save_nifti(
                root / "imagesTr" / f"{cid}_{ch:04d}.nii.gz",
                rng.normal(size=(4, 5, 1)) + 100 * ch,
                np.eye(4),
            )
        save_nifti(
            root / "labelsTr" / f"{cid}.nii.gz", rng.integers(0, 3, (4, 5, 1)), np.eye(4), np.uint8
        )
    save_nifti(root / "imagesTs" / "t_0000.nii.gz", np.zeros((4, 5, 1)), np.eye(4))
    save_nifti(root / "imagesTs" / "t_0001.nii.gz", np.zeros((4, 5, 1)), np.eye(4))
    (root / "dataset.json").write_text(
        json.dumps(
            {
                "channel_names": {"0": "T2", "1": "ct"},
                "labels": {"background": 0, "liver": 1, "tumour": 2},
                "numTraining": 2,
                "file_ending": ".nii.gz",
            }
        )
    )
    spec = dataset.load_dataset(root)
    assert spec.dims == 2  # inferred from the singleton third axis
    assert spec.channel_names == ("T2", "ct") and spec.modalities == ("MRI", "CT")
    assert spec.labels == {0: "background", 1: "liver", 2: "tumour"}
    assert [c.case_id for c in spec.training] == ["a", "b"] and [c.case_id for c in spec.test] == [
        "t"
    ]
    assert spec.test[0].label_path is None
    image, label = dataset.load_case(spec, spec.training[0])
    assert image.data.shape == (4, 5, 2) and label.shape == (4, 5)
    assert image.data[..., 1].mean() > 50
    # listed form: image as a list of per-channel files, with patient ids
    (root / "dataset.json").write_text(
        json.dumps(
            {
                "channel_names": {"0": "T2", "1": "CT"},
                "labels": {"background": 0, "liver": 1, "tumour": 2},
                "file_ending": ".nii.gz",
                "dims": 2,
                "training": [
                    {
                        "image": ["./imagesTr/a_0000.nii.gz", "./imagesTr/a_0001.nii.gz"],
                        "label": "./labelsTr/a.nii.gz",
                        "patient": "P1",
                    }
                ],
            }
        )
    )
    spec = dataset.load_dataset(root)
    assert spec.training[0].case_id == "a" and spec.training[0].patient_id == "P1"
    assert len(spec.training[0].image_paths) == 2


def test_nnunet_missing_channel_and_regions(tmp_path):
    root = tmp_path / "d"
    save_nifti(root / "imagesTr" / "a_0000.nii.gz", np.zeros((3, 3, 3)), np.eye(4))
    save_nifti(root / "labelsTr" / "a.nii.gz", np.zeros((3, 3, 3)), np.eye(4), np.uint8)
    meta = {
        "channel_names": {"0": "T1", "1": "T2"},
        "labels": {"background": 0, "x": 1},
        "file_ending": ".nii.gz",
    }
    (root / "dataset.json").write_text(json.dumps(meta))
    with pytest.raises(DataError, match="a_0001.nii.gz"):
        dataset.load_dataset(root)
    meta["labels"] = {"background": 0, "whole": [1, 2], "core": 2}
    (root / "dataset.json").write_text(json.dumps(meta))
    with pytest.raises(DataError, match="region"):
        dataset.load_dataset(root)
