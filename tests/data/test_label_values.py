"""Label values as real datasets declare them: 0/255 masks, BraTS 0,1,2,4, mixed-style
dataset.json files (channel_names + MSD labels), GIF masks, per-channel file lists, an
extra "mask" key (ignored); the remap to classes on load and back to file values on prediction."""

import csv
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from PIL import Image as PILImage

from jaxseg import defaults, evaluation, inference
from jaxseg.data import dataset, io
from jaxseg.data.labels import classes_to_values
from jaxseg.data.preprocess import Preprocessing
from jaxseg.errors import DataError
from jaxseg.segment import Segmenter
from jaxseg.workdir import RunInfo

from .conftest import save_nifti

SHARED = Path(__file__).resolve().parents[3] / "shared" / "data"


def _save_pil(path: Path, rows_cols: np.ndarray) -> Path:
    """Saves `[row, col, (3)]` as Pillow does by default (a 0/255 GIF becomes a palette image)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    PILImage.fromarray(rows_cols).save(path)
    return path


def _mask_2d(rng, shape=(24, 20)) -> np.ndarray:
    """A 0/255 `[row, col]` mask with a bar and some speckle."""
    m = np.zeros(shape, np.uint8)
    m[5:9, 2:15] = 255
    m[rng.random(shape) < 0.05] = 255
    return m


def _write_2d(
    root: Path,
    image_ext: str,
    label_ext: str,
    *,
    rgb: bool,
    channel="R",
    labels=None,
    n_train=3,
    n_test=2,
    corrupt=None,
) -> Path:
    """A DRIVE/ISBI-like folder: training/ and test/ with images, 0/255 labels, FOV masks.

    Images are `class * 200 + noise` (uint8), so a thresholding "model" recovers the label.
    """
    rng = np.random.default_rng(0)
    meta = {
        "name": "t2d",
        "tensorImageSize": "2D",
        "channel_names": {str(i): channel for i in range(3 if rgb else 1)},
        "labels": labels or {"0": "background", "255": "vessel"},
        "numTraining": n_train,
        "numTest": n_test,
        "training": [],
        "test": [],
    }
    for split, n in (("training", n_train), ("test", n_test)):
        for i in range(n):
            lab = _mask_2d(rng)
            if corrupt == (split, i):
                lab[0, 0] = 128
            img = (lab // 255 * 200 + rng.integers(0, 20, lab.shape)).astype(np.uint8)
            if rgb:
                img = np.stack([img, img // 2, img // 3], axis=-1)
            entry = {
                "image": f"./{split}/images/{i:02d}.{image_ext}",
                "label": f"./{split}/manual/{i:02d}_manual.{label_ext}",
                "mask": f"./{split}/mask/{i:02d}_mask.gif",
            }
            _save_pil(root / entry["image"], img)
            _save_pil(root / entry["label"], lab)
            _save_pil(root / entry["mask"], np.full(lab.shape, 255, np.uint8))
            meta[split].append(entry)
    (root / "dataset.json").write_text(json.dumps(meta))
    return root


BRATS_LABELS = {"0": "background", "1": "necrosis", "2": "edema", "4": "enhancing"}


def _write_brats(root: Path, *, labels=None, n=2, shape=(8, 9, 6), channel="noNorm") -> Path:
    """A BraTS-like folder: one folder per case, same file names in each, values 0,1,2,4,
    two channel files listed per case, LPS affines; image channel 0 = 10 * class index."""
    rng = np.random.default_rng(1)
    affine = np.diag([-1.0, -1.0, 1.0, 1.0])
    training = []
    for i in range(n):
        d = root / f"pat{i:04d}"
        lab = rng.choice([0, 1, 2, 4], size=shape, p=[0.55, 0.15, 0.15, 0.15])
        cls = np.searchsorted([0, 1, 2, 4], lab)
        save_nifti(d / "Flair.nii.gz", 10.0 * cls + rng.uniform(-1, 1, shape), affine)
        save_nifti(d / "T1c.nii.gz", rng.normal(size=shape), affine)
        save_nifti(d / "seg.nii.gz", lab, affine)  # float32 on disk, as in BraTS 2015
        save_nifti(d / "brainmask.nii.gz", np.ones(shape), affine, np.uint8)
        training.append(
            {
                "image": [f"./pat{i:04d}/Flair.nii.gz", f"./pat{i:04d}/T1c.nii.gz"],
                "label": f"./pat{i:04d}/seg.nii.gz",
                "mask": f"./pat{i:04d}/brainmask.nii.gz",
            }
        )
    meta = {
        "name": "b",
        "tensorImageSize": "4D",
        "channel_names": {"0": channel, "1": channel},
        "labels": labels or BRATS_LABELS,
        "numTraining": n,
        "training": training,
    }
    (root / "dataset.json").write_text(json.dumps(meta))
    return root


def _file_values(path: Path) -> np.ndarray:
    """A label file's values in canonical order, read without jaxseg (x = column for 2D)."""
    if path.name.endswith(".nii.gz"):
        return np.asarray(nib.as_closest_canonical(nib.load(path)).dataobj)
    with PILImage.open(path) as im:
        return np.asarray(im.convert("L")).T


LAYOUTS_2D = [("tif", "gif", True), ("png", "png", False), ("tif", "tif", False)]


@pytest.mark.parametrize("image_ext,label_ext,rgb", LAYOUTS_2D)
def test_2d_layouts_load_and_remap(tmp_path, image_ext, label_ext, rgb):
    spec = dataset.load_dataset(_write_2d(tmp_path, image_ext, label_ext, rgb=rgb))
    assert spec.dims == 2 and spec.num_channels == (3 if rgb else 1)
    assert spec.labels == {0: "background", 1: "vessel"} and spec.label_values == (0, 255)
    assert len(spec.training) == 3 and len(spec.test) == 2
    assert all(c.label_path is not None for c in spec.test)
    if label_ext == "gif":  # the trap: Pillow stores a 0/255 GIF as palette indices 0/1
        with PILImage.open(spec.training[0].label_path) as im:
            assert im.mode == "P" and set(np.unique(np.asarray(im))) == {0, 1}
    for case in (spec.training[0], spec.test[1]):
        image, label = dataset.load_case(spec, case)
        raw = _file_values(case.label_path)
        assert image.data.shape == (*raw.shape, spec.num_channels) and label.dtype == np.int32
        np.testing.assert_array_equal(label, np.searchsorted([0, 255], raw))


@pytest.mark.parametrize(
    "labels",
    [
        BRATS_LABELS,  # MSD orientation, with channel_names
        {"background": 0, "necrosis": 1, "edema": 2, "enhancing": 4},
    ],
)
def test_nifti_non_consecutive_values(tmp_path, labels):
    spec = dataset.load_dataset(_write_brats(tmp_path, labels=labels))
    assert spec.dims == 3 and spec.channel_names == ("noNorm", "noNorm")
    assert spec.labels == {0: "background", 1: "necrosis", 2: "edema", 3: "enhancing"}
    assert spec.label_values == (0, 1, 2, 4) and spec.num_classes == 4
    # file names repeat in every case folder, so the folders name the cases
    assert [c.case_id for c in spec.training] == ["pat0000", "pat0001"]
    assert spec.training[1].patient_id == "pat0001"
    image, label = dataset.load_case(spec, spec.training[1])
    raw = _file_values(spec.training[1].label_path)
    expected = np.vectorize({0: 0, 1: 1, 2: 2, 4: 3}.get)(raw)
    assert image.data.shape == (*raw.shape, 2)
    np.testing.assert_array_equal(label, expected)


def _fake_segmenter(info: RunInfo, patch_size, step: float) -> Segmenter:
    """A Segmenter whose "model" reads the class off channel 0 (class = round(x / step))."""
    seg = Segmenter.__new__(Segmenter)
    seg.config = defaults.base_config()
    seg.config.data.patch_size = tuple(patch_size)
    seg.info = info

    def predictor(windows):
        cls = np.clip(np.rint(windows[..., 0] / step), 0, info.num_classes - 1).astype(int)
        return np.eye(info.num_classes, dtype=np.float32)[cls]

    seg._predictor = predictor
    seg._window = inference.window_options(seg.config, info.num_classes)
    seg.preprocessing = Preprocessing.from_config(seg.config.data, info.modalities)
    seg.postprocessing = None
    seg.chain = None
    seg.temperatures = [1.0]
    return seg


def test_predict_writes_file_values_2d(tmp_path):
    spec = dataset.load_dataset(
        _write_2d(tmp_path / "ds", "tif", "gif", rgb=True, channel="noNorm")
    )
    info = RunInfo.from_spec(spec)
    seg = _fake_segmenter(RunInfo.from_json(info.to_json()), (16, 16), step=200.0)
    case = spec.test[0]
    # a folder input: the .tif gets a mask of the same name and suffix
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / case.image_paths[0].name).write_bytes(case.image_paths[0].read_bytes())
    [out] = seg.segment_path(tmp_path / "in", tmp_path / "out")
    assert out.name == case.image_paths[0].name
    with PILImage.open(out) as im:
        written = np.asarray(im)
    with PILImage.open(case.label_path) as im:
        original = np.asarray(im.convert("L"))
    assert written.dtype == np.uint8 and set(np.unique(written)) == {0, 255}
    np.testing.assert_array_equal(written, original)


def test_predict_writes_file_values_3d_and_evaluates_declared_classes(tmp_path):
    spec = dataset.load_dataset(_write_brats(tmp_path / "ds"))
    seg = _fake_segmenter(RunInfo.from_spec(spec), (8, 8, 8), step=10.0)
    case = spec.training[0]
    out = seg.segment_files(list(case.image_paths), tmp_path / "pred.nii.gz")
    written, original = nib.load(out), nib.load(case.label_path)
    assert written.get_data_dtype() == np.uint8
    np.testing.assert_allclose(written.affine, original.affine)
    np.testing.assert_array_equal(np.asarray(written.dataobj), np.asarray(original.dataobj))
    # evaluation: one row per declared foreground class, named as declared
    image, label = dataset.load_case(spec, case)
    rows, _ = evaluation.evaluate_cases(
        [(case.case_id, image, label)],
        seg._predictor,
        window=seg._window,
        labels=spec.labels,
        preprocessing=seg.preprocessing,
    )
    assert [(r["class"], r["name"]) for r in rows] == [
        (1, "necrosis"),
        (2, "edema"),
        (3, "enhancing"),
    ]
    assert all(r["dice"] == 1.0 for r in rows)


def test_values_above_255_write_uint16(tmp_path):
    values = (0, 7, 1000)
    classes = np.array([[0, 1], [2, 1], [0, 2]])
    mask = classes_to_values(classes, values)
    assert mask.dtype == np.uint16
    np.testing.assert_array_equal(mask, np.array(values)[classes])
    assert classes_to_values(classes, (0, 1, 255)).dtype == np.uint8
    ref = io.Image(
        np.zeros((3, 2, 1), np.float32),
        np.eye(4),
        (1.0, 1.0),
        np.eye(4),
        (3, 2),
        tmp_path / "ref.png",
    )
    out = io.write_mask(mask, ref, tmp_path / "m.png", dtype=mask.dtype)
    np.testing.assert_array_equal(io.read_label(out, 2)[0], mask)
    with pytest.raises(DataError, match=r"m\.png.*0\.\.255.*uint8"):
        io.write_mask(mask, ref, tmp_path / "m.png")
    with pytest.raises(DataError, match=r"x\.png.*16-bit"):
        io.write_mask(mask, ref, tmp_path / "x.png", dtype=np.int32)


def test_palette_labels(tmp_path):
    idx = np.array([[0, 1, 2], [2, 1, 0]], np.uint8)
    colour = PILImage.fromarray(idx, mode="P")
    colour.putpalette([0, 0, 0, 128, 0, 0, 0, 128, 0])  # VOC-style colours: the index is the class
    colour.save(tmp_path / "voc.png")
    np.testing.assert_array_equal(io.read_label(tmp_path / "voc.png", 2)[0], idx.T)
    grey = PILImage.fromarray(idx, mode="P")
    grey.putpalette([0, 0, 0, 128, 128, 128, 255, 255, 255])  # greys: the grey is the value
    grey.save(tmp_path / "grey.png")
    np.testing.assert_array_equal(
        io.read_label(tmp_path / "grey.png", 2)[0], np.array([0, 128, 255])[idx].T
    )


def test_run_info_keeps_the_mapping_and_old_workdirs_load():
    info = RunInfo(
        dims=2,
        in_channels=3,
        num_classes=2,
        labels={0: "bg", 1: "vessel"},
        modalities=("R", "G", "B"),
        dataset_root="/x",
        label_values=(0, 255),
    )
    assert RunInfo.from_json(info.to_json()).label_values == (0, 255)
    old = json.loads(info.to_json())
    del old["label_values"]  # a run.json written before the mapping existed
    assert RunInfo.from_json(json.dumps(old)).label_values == (0, 1)
    with pytest.raises(DataError, match=r"run\.json.*label_values \[0, 1, 2\]"):
        RunInfo(
            dims=2,
            in_channels=1,
            num_classes=2,
            labels={0: "a", 1: "b"},
            modalities=("MRI",),
            dataset_root="/x",
            label_values=(0, 1, 2),
        )


@pytest.mark.parametrize(
    "labels,match",
    [
        ({"1": "a", "255": "b"}, r"must declare value 0.*\[1, 255\]"),
        ({"0": "0", "1": "1"}, r"labels\['0'\] = '0'.*ambiguous"),
        (
            {"0": "background", "vessel": 255},
            r"mixes value -> name \(key '0'\) and name -> value \(key 'vessel'\)",
        ),
        ({"0": "background", "x": "vessel"}, r"labels\['x'\] = 'vessel'.*expected"),
        ({"background": 0, "whole": [1, 2]}, r"labels\['whole'\].*region"),
        ({"0": "background", "1": "a", "2": "a"}, r"name\(s\) \['a'\]"),
        ({"0": "background", "00": "x"}, r"value 0 is declared twice"),
    ],
)
def test_bad_labels_name_the_file_and_key(tmp_path, labels, match):
    root = _write_2d(tmp_path, "png", "png", rgb=False, labels=labels, n_train=1, n_test=0)
    with pytest.raises(DataError, match=r"(?s)dataset\.json.*" + match):
        dataset.load_dataset(root)


def test_undeclared_value_names_case_and_file(tmp_path):
    spec = dataset.load_dataset(
        _write_2d(tmp_path, "png", "gif", rgb=False, corrupt=("training", 1))
    )
    dataset.load_case(spec, spec.training[0])
    with pytest.raises(DataError, match=r"case '01'.*01_manual\.gif.*\[128\].*\[0, 255\]"):
        dataset.load_case(spec, spec.training[1])


def test_counts_and_ignored_mask(tmp_path):
    root = _write_2d(tmp_path, "png", "png", rgb=False)
    meta = json.loads((root / "dataset.json").read_text())
    meta["numTest"] = 5
    (root / "dataset.json").write_text(json.dumps(meta))
    with pytest.raises(DataError, match=r"dataset\.json: 'numTest' is 5 but 2 cases"):
        dataset.load_dataset(root)
    meta["numTest"] = 2
    (root / "dataset.json").write_text(json.dumps(meta))
    (root / "test" / "mask" / "01_mask.gif").unlink()  # "mask" is not read, so not checked
    spec = dataset.load_dataset(root)
    assert not hasattr(spec.test[1], "mask_path")
    dataset.load_case(spec, spec.test[1])


# ---------------------------------------------------------------- the real folders, if present


def _manifest(folder: Path) -> list[dict]:
    with open(folder / "manifest.csv", newline="") as f:
        return list(csv.DictReader(f))


@pytest.mark.parametrize("name", ["drive_retina", "isbi2012_em", "brats2015_subset"])
def test_shared_real_datasets(name):
    folder = SHARED / name
    if not (folder / "dataset.json").is_file():
        pytest.skip(
            f"expected in a clean clone: ../shared/data is not shipped ({folder} is absent)"
        )
    spec = dataset.load_dataset(folder)
    rows = _manifest(folder)
    declared = sorted({int(v) for r in rows for v in r["labels"].split()})
    assert set(spec.label_values) >= set(declared)
    assert len(spec.training) + len(spec.test) == len(rows)
    case = spec.training[0]
    row = next(r for r in rows if case.label_path.as_posix().endswith(r.get("label") or r["mask"]))
    image, label = dataset.load_case(spec, case)
    shape = tuple(int(s) for s in row["shape"].split("x"))
    if spec.dims == 2:  # the manifest gives numpy's [row, col, (C)]; jaxseg is [x=col, y=row, C]
        shape = (shape[1], shape[0], *shape[2:])
    assert image.data.shape[: len(shape)] == shape and label.shape == image.data.shape[:-1]
    assert image.data.shape[-1] == spec.num_channels
    if "spacing" in row:
        assert image.spacing == pytest.approx([float(v) for v in row["spacing"].split("x")])
    values = np.asarray(spec.label_values)[np.unique(label)]
    assert values.tolist() == [int(v) for v in row["labels"].split()]
