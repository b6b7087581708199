"""The fingerprint on constructed NIfTI datasets whose statistics are known: intensities
against numpy over the written foreground voxels, geometry against the written headers,
thickness against shapes whose 2 x volume / surface is known, and the bad-input errors."""

import gzip
import json
import struct
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from jaxseg.data.dataset import load_dataset
from jaxseg.errors import DataError
from jaxseg.planning.fingerprint import class_thickness, fingerprint_dataset, sample_cases


def write_cases(root: Path, cases, *, modality=("MRI",), labels=None, dims=3) -> Path:
    """cases: [(image [*S] or [*S, C], label [*S], spacing, flips)] -> an MSD dataset.

    The file affine is diag(spacing) with the axes in `flips` negated (so "LPS" for x, y).
    2D cases are stored as [X, Y, 1(, C)].
    """
    labels = labels or {"0": "background", "1": "fg"}
    training = []
    for i, (img, lab, spacing, flips) in enumerate(cases):
        sp = list(spacing) + [1.0] * (3 - len(spacing))
        affine = np.diag([*(-s if a in flips else s for a, s in enumerate(sp)), 1.0])
        img, lab = np.asarray(img, np.float32), np.asarray(lab, np.uint8)
        if dims == 2:
            img = img[:, :, None] if img.ndim == 2 else img[:, :, None, :]
            lab = lab[:, :, None]
        for name, arr in (("imagesTr", img), ("labelsTr", lab)):
            (root / name).mkdir(parents=True, exist_ok=True)
            out = nib.Nifti1Image(arr, affine)
            out.header.set_sform(affine, code=1)
            out.header.set_qform(affine, code=1)
            nib.save(out, str(root / name / f"c{i:02d}.nii.gz"))
        training.append(
            {"image": f"imagesTr/c{i:02d}.nii.gz", "label": f"labelsTr/c{i:02d}.nii.gz"}
        )
    meta = {
        "name": "constructed",
        "tensorImageSize": f"{dims}D",
        "modality": {str(i): m for i, m in enumerate(modality)},
        "labels": labels,
        "training": training,
    }
    (root / "dataset.json").write_text(json.dumps(meta))
    return root


def _ct_cases(rng, n=3, shape=(10, 9, 8)):
    cases = []
    for _ in range(n):
        img = rng.normal(40, 200, size=shape)
        lab = (rng.random(shape) < 0.08).astype(np.uint8)
        cases.append((img, lab, (0.7, 0.7, 2.0), ()))
    return cases


def test_foreground_intensity_statistics_are_numpys(tmp_path):
    rng = np.random.default_rng(0)
    cases = _ct_cases(rng)
    fp = fingerprint_dataset(
        load_dataset(write_cases(tmp_path, cases, modality=("CT",))), progress=False
    )
    fg = np.concatenate([img.astype(np.float32)[lab > 0] for img, lab, *_ in cases]).astype(
        np.float64
    )
    got = fp["foreground_intensity_properties_per_channel"]["0"]
    p005, p50, p995 = np.percentile(fg, [0.5, 50, 99.5])
    want = {"percentile_00_5": p005, "median": p50, "percentile_99_5": p995}
    want.update(mean=fg.mean(), std=fg.std(), min=fg.min(), max=fg.max())
    for key, value in want.items():
        assert got[key] == pytest.approx(value, rel=1e-9, abs=1e-9), key
    assert got["num_samples"] == fg.size


def test_foreground_sampling_caps_each_case_and_is_reproducible(tmp_path):
    rng = np.random.default_rng(1)
    cases = _ct_cases(rng)
    spec = load_dataset(write_cases(tmp_path, cases, modality=("CT",)))
    fp = fingerprint_dataset(spec, progress=False, foreground_samples=20)
    again = fingerprint_dataset(spec, progress=False, foreground_samples=20)
    props = fp["foreground_intensity_properties_per_channel"]["0"]
    assert props["num_samples"] == 3 * 20  # every case has more than 20 foreground voxels
    assert props == again["foreground_intensity_properties_per_channel"]["0"]
    fg = np.concatenate([img.astype(np.float32)[lab > 0] for img, lab, *_ in cases])
    assert fg.min() <= props["min"] and props["max"] <= fg.max()
    assert [c["foreground_voxels_sampled"] for c in fp["cases"]] == [20, 20, 20]


def test_case_geometry_orientation_and_nonzero_box(tmp_path):
    img = np.zeros((12, 10, 6), np.float32)
    img[2:6, 1:8, 3:5] = 5.0  # nonzero box 4 x 7 x 2
    lab = np.zeros(img.shape, np.uint8)
    lab[3, 3, 3] = 1
    cases = [(img, lab, (0.5, 0.6, 3.0), ()), (img, lab, (0.5, 0.6, 3.0), (0, 1))]
    fp = fingerprint_dataset(load_dataset(write_cases(tmp_path, cases)), progress=False)
    ras, lps = fp["cases"]
    assert ras["orientation"] == "RAS" and lps["orientation"] == "LPS"
    for c in (ras, lps):
        assert c["shape"] == [12, 10, 6]
        assert c["spacing"] == pytest.approx([0.5, 0.6, 3.0])
        assert c["shape_after_crop"] == [4, 7, 2]
        assert c["relative_size_after_crop"] == pytest.approx(4 * 7 * 2 / (12 * 10 * 6))
    assert ras["nonzero_bbox_start"] == [2, 1, 3]
    assert lps["nonzero_bbox_start"] == [12 - 6, 10 - 8, 3]  # x and y reversed on load
    assert fp["median_relative_size_after_cropping"] == pytest.approx(56 / 720)
    assert fp["orientations"] == {"RAS": 1, "LPS": 1}


def test_class_fractions_and_cases_with_class(tmp_path):
    shape = (6, 5, 4)
    a = np.zeros(shape, np.uint8)
    a[0, 0, :2] = 1  # 2 voxels of class 1
    b = np.zeros(shape, np.uint8)
    b[1:3, 1:3, 1] = 2  # 4 voxels of class 2
    b[5, 4, 3] = 1
    img = np.ones(shape)
    labels = {"0": "bg", "1": "a", "2": "b"}
    cases = [(img, a, (1, 1, 1), ()), (img, b, (1, 1, 1), ())]
    fp = fingerprint_dataset(
        load_dataset(write_cases(tmp_path, cases, labels=labels)), progress=False
    )
    total = 2 * 120
    assert fp["class_voxel_fractions"] == pytest.approx([(total - 7) / total, 3 / total, 4 / total])
    assert fp["cases_with_class"] == [2, 2, 1]
    assert fp["cases"][0]["class_voxels"] == [118, 2, 0]


def test_class_thickness_of_known_shapes():
    # A slab 4 voxels wide across the whole image (its ends lie on the border): 4 x 0.5 mm.
    slab = np.zeros((20, 30), np.int32)
    slab[8:12, :] = 1
    assert class_thickness(slab, (0.5, 2.0), 2)[1] == pytest.approx(2.0)
    # A 6 x 6 square inside the image: 2 * 36 / 24 faces = 3 voxels; at 0.5 mm, 1.5 mm.
    square = np.zeros((20, 20), np.int32)
    square[5:11, 7:13] = 1
    assert class_thickness(square, (0.5, 0.5), 3) == [
        pytest.approx(2 * 364 * 0.25 / (24 * 0.5)),
        pytest.approx(1.5),
        None,
    ]


def test_max_cases_samples_deterministically(tmp_path):
    assert sample_cases(10, None, 0) == list(range(10))
    picked = sample_cases(10, 4, seed=7)
    assert picked == sorted(picked) and len(set(picked)) == 4 and picked == sample_cases(10, 4, 7)
    rng = np.random.default_rng(2)
    cases = [(rng.normal(size=(5, 5, 3)), np.ones((5, 5, 3)), (1, 1, 1 + i), ()) for i in range(5)]
    fp = fingerprint_dataset(
        load_dataset(write_cases(tmp_path, cases)), max_cases=2, seed=3, progress=False
    )
    assert fp["num_cases_analysed"] == 2 and fp["num_training_cases"] == 5
    ids = [c["case_id"] for c in fp["cases"]]
    assert ids == [f"c{i:02d}" for i in sample_cases(5, 2, 3)]


def test_progress_bar(tmp_path, capsys):
    cases = [(np.ones((4, 4, 3)), np.ones((4, 4, 3)), (1, 1, 1), ())]
    fingerprint_dataset(load_dataset(write_cases(tmp_path, cases)), progress=True)
    assert "fingerprint" in capsys.readouterr().err


def test_different_channel_counts_name_the_case(tmp_path):
    one = (np.ones((4, 4, 3)), np.ones((4, 4, 3)), (1, 1, 1), ())
    two = (np.ones((4, 4, 3, 2)), np.ones((4, 4, 3)), (1, 1, 1), ())
    spec = load_dataset(write_cases(tmp_path, [one, two]))
    with pytest.raises(DataError, match="case 'c01'.*2 channels"):
        fingerprint_dataset(spec, progress=False)


@pytest.mark.parametrize("bad", [0.0, float("nan")])
def test_zero_or_nan_spacing_names_the_file(tmp_path, bad):
    cases = [(np.ones((4, 4, 3)), np.ones((4, 4, 3)), (1, 1, 1), ())] * 2
    root = write_cases(tmp_path, cases)
    path = root / "imagesTr" / "c01.nii.gz"
    raw = bytearray(gzip.decompress(path.read_bytes()))
    raw[80:84] = struct.pack("<f", bad)  # pixdim[1], the x spacing
    path.write_bytes(gzip.compress(bytes(raw)))
    # jaxseg.data.io or the fingerprint, whichever reads the header first, names the file.
    with pytest.raises(DataError, match=r"c01\.nii\.gz: .*(voxel spacing|pixdim)"):
        fingerprint_dataset(load_dataset(root), progress=False)
