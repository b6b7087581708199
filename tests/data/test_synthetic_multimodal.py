"""Two-modality phantoms (`synthetic --modalities 2`) and dataset.json's per-case `class`."""

import json

import numpy as np
import pytest
from scipy import ndimage

from jaxseg.data import dataset, synthetic
from jaxseg.errors import DataError


@pytest.fixture(scope="module")
def two_modalities(tmp_path_factory):
    root = tmp_path_factory.mktemp("mm")
    argv = ["--dims", "2", "--num-cases", "6", "--num-test", "2", "--shape", "64,64"]
    assert synthetic.main([*argv, "--modalities", "2", "--out", str(root), "--seed", "2"]) == 0
    return root


def test_two_channels_one_structure_each(two_modalities):
    spec = dataset.load_dataset(two_modalities)
    assert spec.channel_names == ("A", "B") and spec.num_classes == 3
    assert spec.case_classes == ("absent", "present")
    assert [c.case_id for c in spec.training] == [f"phantom_{i:03d}" for i in range(6)]
    classes = []
    for i, case in enumerate(spec.training):
        image, label = dataset.load_case(spec, case)
        assert image.data.shape == (64, 64, 2) and len(case.image_paths) == 2
        has_b = bool((label == 2).any())
        assert (label == 1).any() and has_b == (i % 3 != 1)  # structure_B: all but every third
        classes.append(case.case_class)
        assert case.case_class == int(has_b)
        for value, seen, unseen in ((1, 0, 1), (2, 1, 0)):
            inside = label == value
            if not inside.any():
                continue
            # The tissue just around the structure: a ring 2-4 px out.
            ring = ndimage.binary_dilation(inside, iterations=4) & ~ndimage.binary_dilation(
                inside, iterations=2
            )
            ratio = [
                np.median(image.data[..., k][inside]) / np.median(image.data[..., k][ring])
                for k in (0, 1)
            ]
            assert ratio[seen] > 1.6 and 0.8 < ratio[unseen] < 1.25, (i, value, ratio)
    assert set(classes) == {0, 1}
    assert [c.case_class for c in spec.test] == [1, 0]  # cases 6 and 7


def test_one_modality_output_unchanged(tmp_path):
    """--modalities 1 is the default: the same arrays as make_case, MSD 'modality', no class."""
    root = synthetic.write_dataset(tmp_path / "one", dims=2, num_cases=2, shape=(48, 48), seed=5)
    meta = json.loads((root / "dataset.json").read_text())
    assert meta["modality"] == {"0": "MRI"} and "case_classes" not in meta
    assert all(set(e) == {"image", "label"} for e in meta["training"])
    spec = dataset.load_dataset(root)
    image, label = dataset.load_case(spec, spec.training[1])
    ref_img, ref_lab = synthetic.make_case(np.random.default_rng([5, 1]), (48, 48))
    np.testing.assert_array_equal(image.data[..., 0], ref_img)
    np.testing.assert_array_equal(label, ref_lab)
    assert spec.case_classes == () and spec.training[0].case_class is None


def _edit(src, dst, fn):
    import shutil

    shutil.copytree(src, dst)
    meta = json.loads((dst / "dataset.json").read_text())
    fn(meta)
    (dst / "dataset.json").write_text(json.dumps(meta))
    return dst


def test_class_by_name_and_errors(two_modalities, tmp_path):
    def by_name(meta):
        for e in meta["training"]:
            e["class"] = ["absent", "present"][e["class"]]

    spec = dataset.load_dataset(_edit(two_modalities, tmp_path / "names", by_name))
    assert [c.case_class for c in spec.training] == [1, 0, 1, 1, 0, 1]

    def drop_third(meta):
        del meta["training"][2]["class"]

    with pytest.raises(DataError, match="training case 'phantom_002' has no 'class' but 5 of 6"):
        dataset.load_dataset(_edit(two_modalities, tmp_path / "some", drop_third))

    def undeclared(meta):
        del meta["case_classes"]

    with pytest.raises(DataError, match="'phantom_000' has a 'class' but no 'case_classes'"):
        dataset.load_dataset(_edit(two_modalities, tmp_path / "undeclared", undeclared))

    def out_of_range(meta):
        meta["training"][4]["class"] = 2

    with pytest.raises(DataError, match="'phantom_004' has class 2; the declared classes"):
        dataset.load_dataset(_edit(two_modalities, tmp_path / "range", out_of_range))

    def bad_keys(meta):
        meta["case_classes"] = {"1": "absent", "2": "present"}

    with pytest.raises(DataError, match="'case_classes' keys must be the indices 0..1"):
        dataset.load_dataset(_edit(two_modalities, tmp_path / "keys", bad_keys))
