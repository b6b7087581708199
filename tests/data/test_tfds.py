"""TFDS builders: built from tiny synthetic folders in each dataset's layout (no network),
read back as random-access array_record sources and compared with jaxseg.data.io.

Runtime ~40-60 s on the shared 2-core machine (TensorFlow import + 4 small builds).
"""

import json

import numpy as np
import pytest

tfds = pytest.importorskip("tensorflow_datasets")

from jaxseg.data import io  # noqa: E402
from jaxseg.data import tfds as jtfds  # noqa: E402
from jaxseg.errors import DataError  # noqa: E402
from tests.data.conftest import save_nifti  # noqa: E402

# non-canonical (LPS-like, permuted) affine with anisotropic spacing: exercises reorientation
_AFFINE = np.array(
    [[0.0, -0.8, 0.0, 10.0], [-0.9, 0.0, 0.0, 20.0], [0.0, 0.0, 2.5, -5.0], [0.0, 0.0, 0.0, 1.0]]
)


def _volume(rng, shape, channels=None):
    size = shape if channels is None else shape + (channels,)
    return rng.normal(100.0, 20.0, size).astype(np.float32)


def _labels(rng, shape, values):
    return rng.choice(np.asarray(values), size=shape).astype(np.uint8)


def _read_back(builder, expected: dict):
    """expected: {case_id: (image paths, label path, label_map)}; checks every record."""
    source = builder.as_data_source(split="train")
    assert len(source) == len(expected)
    seen = set()
    for i in range(len(source)):  # random access by index
        ex = source[i]
        cid = ex["case_id"].decode() if isinstance(ex["case_id"], bytes) else str(ex["case_id"])
        paths, label_path, label_map = expected[cid]
        img = io.read_image(paths, dims=3)
        lab, _, _ = io.read_label(label_path, dims=3)
        for src, dst in (label_map or {}).items():
            lab = np.where(lab == src, dst, lab)
        np.testing.assert_array_equal(ex["image"], img.data)
        assert ex["image"].dtype == np.float32 and ex["label"].dtype == np.uint8
        np.testing.assert_array_equal(ex["label"], lab)
        np.testing.assert_allclose(ex["spacing"], img.spacing, rtol=1e-6)
        np.testing.assert_allclose(ex["affine"], img.affine)
        seen.add(cid)
    assert seen == set(expected)
    return source


def test_msd_builder_roundtrip_and_tfds_data_source(tmp_path):
    rng = np.random.default_rng(0)
    task = tmp_path / "manual" / "Task01_BrainTumour"
    expected, training = {}, []
    for i, shape in enumerate([(12, 10, 8), (9, 11, 7)]):
        cid = f"BRATS_{i:03d}"
        img = save_nifti(task / "imagesTr" / f"{cid}.nii.gz", _volume(rng, shape, 4), _AFFINE)
        lab = save_nifti(
            task / "labelsTr" / f"{cid}.nii.gz",
            _labels(rng, shape, [0, 1, 2, 3]),
            _AFFINE,
            np.uint8,
        )
        training.append({"image": f"./imagesTr/{cid}.nii.gz", "label": f"./labelsTr/{cid}.nii.gz"})
        expected[cid] = ([img], lab, None)
    (task / "dataset.json").write_text(
        json.dumps(
            {
                "name": "BRATS",
                "tensorImageSize": "4D",
                "modality": {"0": "FLAIR", "1": "T1w", "2": "t1gd", "3": "T2w"},
                "labels": {
                    "0": "background",
                    "1": "edema",
                    "2": "non-enhancing tumor",
                    "3": "enhancing tumour",
                },
                "training": training,
                "test": [],
            }
        )
    )
    data_dir = tmp_path / "tfds"
    builder = jtfds.build("jaxseg_msd/task01_braintumour", tmp_path / "manual", data_dir)
    assert builder.info.file_format.value == "array_record"
    _read_back(builder, expected)
    # the public entry point grain uses
    source = tfds.data_source(
        "jaxseg_msd/task01_braintumour", split="train", data_dir=str(data_dir), download=False
    )
    assert len(source) == 2 and source[1]["image"].shape[-1] == 4
    # ... and grain takes it as a random-access source
    import grain

    ds = grain.MapDataset.source(source).map(lambda ex: ex["label"].shape)
    assert sorted(ds[i] for i in range(len(ds))) == sorted(
        v[1].shape for v in [(0, io.read_label(e[1], 3)[0]) for e in expected.values()]
    )
    # all ten tasks are configs of the one builder
    names = [c.name for c in jtfds.JaxsegMsd.BUILDER_CONFIGS]
    assert len(names) == 10 and names[0] == "task01_braintumour" and names[-1] == "task10_colon"
    chans = {c.task: len(c.channels) for c in jtfds.JaxsegMsd.BUILDER_CONFIGS}
    assert chans["Task01_BrainTumour"] == 4 and chans["Task05_Prostate"] == 2
    assert chans["Task09_Spleen"] == 1


@pytest.mark.parametrize("year", ["2021", "2023"])
def test_brats_builder_roundtrip(tmp_path, year):
    rng = np.random.default_rng(int(year))
    if year == "2021":
        sep, suffixes, cids, values = (
            "_",
            ("t1", "t1ce", "t2", "flair"),
            ["BraTS2021_00000", "BraTS2021_00002"],
            [0, 1, 2, 4],
        )
    else:
        sep, suffixes, cids, values = (
            "-",
            ("t1n", "t1c", "t2w", "t2f"),
            ["BraTS-GLI-00000-000", "BraTS-GLI-00002-000"],
            [0, 1, 2, 3],
        )
    manual = tmp_path / "manual" / "TrainingData"  # one top-level folder, as in the archives
    expected = {}
    for cid in cids:
        shape = (10, 9, 8)
        paths = [
            save_nifti(manual / cid / f"{cid}{sep}{s}.nii.gz", _volume(rng, shape), _AFFINE)
            for s in suffixes
        ]
        seg = save_nifti(
            manual / cid / f"{cid}{sep}seg.nii.gz", _labels(rng, shape, values), _AFFINE, np.uint8
        )
        expected[cid] = (paths, seg, {4: 3} if year == "2021" else None)
    builder = jtfds.build(f"jaxseg_brats/{year}", tmp_path / "manual", tmp_path / "tfds")
    source = _read_back(builder, expected)
    assert set(np.unique(np.concatenate([source[i]["label"].ravel() for i in range(2)]))) == {
        0,
        1,
        2,
        3,
    }


def test_btcv_builder_roundtrip_and_missing_label_error(tmp_path):
    rng = np.random.default_rng(3)
    root = tmp_path / "manual" / "RawData" / "Training"
    expected = {}
    for cid, shape in [("0001", (11, 10, 6)), ("0003", (8, 12, 5))]:
        img = save_nifti(root / "img" / f"img{cid}.nii.gz", _volume(rng, shape), _AFFINE)
        lab = save_nifti(
            root / "label" / f"label{cid}.nii.gz", _labels(rng, shape, range(14)), _AFFINE, np.uint8
        )
        expected[cid] = ([img], lab, None)
    builder = jtfds.build("jaxseg_btcv", tmp_path / "manual", tmp_path / "tfds")
    _read_back(builder, expected)
    # a missing label file names the expected path
    save_nifti(root / "img" / "img0005.nii.gz", _volume(rng, (4, 4, 4)), _AFFINE)
    with pytest.raises(DataError, match=r"label0005\.nii\.gz"):
        jtfds.build("jaxseg_btcv", tmp_path / "manual", tmp_path / "tfds2")


def test_missing_manual_dir_content_names_the_expected_path(tmp_path):
    (tmp_path / "manual").mkdir()
    with pytest.raises(DataError, match="Task04_Hippocampus"):
        jtfds.build("jaxseg_msd/task04_hippocampus", tmp_path / "manual", tmp_path / "tfds")
    with pytest.raises(DataError, match=r"RawData/Training/img"):
        jtfds.build("jaxseg_btcv", tmp_path / "manual", tmp_path / "tfds")
    with pytest.raises(DataError, match="BraTS2021_"):
        jtfds.build("jaxseg_brats/2021", tmp_path / "manual", tmp_path / "tfds")
