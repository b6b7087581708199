"""Tests for jaxseg.postprocess: the largest component against scikit-image, nnU-Net's two
rules on a label map written out by hand, and the cross-validation decision on constructed
case sets whose Dice values are computed here from the masks."""

import json
import pathlib

import numpy as np
import pytest
from etils import epath
from scipy import ndimage
from skimage import measure

from jaxseg import postprocess as pp
from jaxseg.errors import ConfigError, DataError
from jaxseg.metrics import case_metrics


def _reference_lcc(mask, connectivity):
    """scikit-image labelling + np.bincount; None when the largest size is tied."""
    lab = measure.label(mask, connectivity=connectivity, background=0)
    sizes = np.bincount(lab.ravel())
    sizes[0] = 0
    if (sizes == sizes.max()).sum() > 1:
        return None
    return lab == np.argmax(sizes)


def _blobs(shape, rng, density=0.5, sigma=1.2):
    field = ndimage.gaussian_filter(rng.standard_normal(shape), sigma)
    return field > np.quantile(field, 1 - density * 0.5)


@pytest.mark.parametrize("shape", [(64, 57), (24, 20, 18)])
def test_largest_component_matches_skimage(shape):
    rng = np.random.default_rng(0)
    checked = 0
    for _ in range(6):
        mask = _blobs(shape, rng)
        for conn in (None, 1):
            ref = _reference_lcc(mask, len(shape) if conn is None else conn)
            if ref is None:
                continue
            got = pp.largest_component(mask, connectivity=conn)
            assert got.dtype == bool and got.shape == mask.shape
            np.testing.assert_array_equal(got, ref)
            checked += 1
    assert checked >= 8
    # Random blobs do make several components, so the test is not trivial.
    assert measure.label(mask, connectivity=len(shape)).max() > 2


def test_largest_component_edge_cases():
    empty = np.zeros((5, 6, 7), bool)
    assert not pp.largest_component(empty).any()
    one = np.zeros((5, 6), bool)
    one[1:3, 2:5] = True
    np.testing.assert_array_equal(pp.largest_component(one), one)
    # Diagonal neighbours join under full connectivity only.
    diag = np.zeros((4, 4), bool)
    diag[0, 0] = diag[1, 1] = diag[2, 2] = True
    diag[3, 0] = True
    np.testing.assert_array_equal(pp.largest_component(diag), diag & ~np.eye(4, k=-3, dtype=bool))
    first = np.zeros((4, 4), bool)
    first[0, 0] = True
    np.testing.assert_array_equal(pp.largest_component(diag, connectivity=1), first)
    # Ties: the component met first in C order wins.
    tie = np.zeros((6, 6), bool)
    tie[4:6, 0:2] = True
    tie[0:2, 4:6] = True
    want = np.zeros_like(tie)
    want[0:2, 4:6] = True
    np.testing.assert_array_equal(pp.largest_component(tie), want)
    with pytest.raises(ConfigError, match="connectivity"):
        pp.largest_component(one, connectivity=3)


# The hand-made map of the brief (7 x 10): class 1 main block A (3x3) with class 2 block C
# (2x2) touching it, a stray class-2 voxel S touching A but not C, and a separate small
# class-1 component B.
MAP = np.array(
    [
        [0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
        [0, 1, 1, 1, 2, 2, 0, 0, 0, 0],
        [0, 1, 1, 1, 2, 2, 0, 0, 0, 0],
        [0, 1, 1, 1, 0, 0, 0, 0, 0, 0],
        [0, 2, 0, 0, 0, 0, 0, 0, 0, 0],  # S at (4, 1): diagonal/face neighbour of A
        [0, 0, 0, 0, 0, 0, 0, 1, 1, 0],  # B
        [0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
    ],
    dtype=np.int32,
)
NO_B = MAP.copy()
NO_B[5, 7:9] = 0
NO_S = MAP.copy()
NO_S[4, 1] = 0
NO_BS = NO_B.copy()
NO_BS[4, 1] = 0


@pytest.mark.parametrize(
    "foreground, classes, want",
    [
        (True, [], NO_B),  # foreground LCC keeps S (it touches A), drops B
        (False, [2], NO_S),  # per-class LCC of class 2 drops S
        (False, [1], NO_B),
        (True, [1, 2], NO_BS),
        (False, [], MAP),
    ],
)
def test_keep_largest_by_hand(foreground, classes, want):
    original = MAP.copy()
    for arr, ref in ((MAP, want), (MAP[None], want[None])):  # 2D, and as a 1-slice 3D
        got = pp.keep_largest(arr, foreground=foreground, classes=classes)
        assert got.dtype == arr.dtype
        np.testing.assert_array_equal(got, ref)
    np.testing.assert_array_equal(MAP, original)  # the input is not modified


def test_keep_largest_applies_foreground_first():
    # Class 1: A1 (5 voxels, alone) and B1 (2 voxels) glued to a class-2 block of 10.
    # Foreground first drops A1; per class then keeps B1 (the only class-1 part left).
    # The other order would keep A1 per class and then drop it with the foreground.
    lab = np.zeros((8, 12), np.uint8)
    lab[0, 0:5] = 1  # A1
    lab[5, 0:2] = 1  # B1
    lab[5:7, 2:7] = 2  # class 2, touches B1
    want = lab.copy()
    want[0, 0:5] = 0
    got = pp.keep_largest(lab, foreground=True, classes=[1])
    np.testing.assert_array_equal(got, want)
    with pytest.raises(ConfigError, match="classes"):
        pp.keep_largest(lab, foreground=False, classes=[0])
    with pytest.raises(DataError, match="integer"):
        pp.keep_largest(lab.astype(np.float32), foreground=True, classes=[])


def _dice(p, g):
    """Hand reference with jaxseg's policy: 2|P&G| / (|P|+|G|), 1 when both are empty."""
    n = p.sum() + g.sum()
    return 1.0 if n == 0 else 2.0 * (p & g).sum() / n


def _class_means(pairs, k):
    return float(np.mean([_dice(p == k, g == k) for p, g in pairs]))


def _square(a, r0, c0, h, w, value):
    a[r0 : r0 + h, c0 : c0 + w] = value


def test_decide_stray_blobs_choose_foreground_then_class():
    """(i) Far false-positive blobs: foreground LCC is kept. On top of it a stray class-2
    voxel touching class 1 (kept by the foreground rule) is removed by class 2's LCC; class
    1's LCC changes nothing and equal is not better, so it is not kept."""
    pairs, after = [], []
    for size, shift in ((5, 0), (6, 3), (4, 8)):
        truth = np.zeros((24, 30), np.int16)
        _square(truth, 2 + shift, 2, size, size, 1)
        _square(truth, 2 + shift, 2 + size, size, 3, 2)  # class 2 touches class 1
        pred = truth.copy()
        _square(pred, 20, 24, 2, 2, 1)  # far stray class-1 blob
        pred[2 + shift + size, 1] = 2  # stray class 2, diagonal to class 1, apart from class 2
        pairs.append((pred, truth))
        after.append((truth, truth))
    d = pp.decide_postprocessing(((p, t, (1.0, 1.0)) for p, t in pairs), num_classes=3)
    assert d["foreground"] is True and d["classes"] == [2]
    for k in (1, 2):
        assert d["dice_before"][str(k)] == pytest.approx(_class_means(pairs, k), abs=1e-12)
        assert d["dice_after"][str(k)] == pytest.approx(_class_means(after, k), abs=1e-12)
    # The hand values: class 1 of the first case, 25 true voxels + 4 stray: 50 / 54.
    assert _dice(pairs[0][0] == 1, pairs[0][1] == 1) == pytest.approx(50 / 54)
    assert d["dice_after"] == {"1": 1.0, "2": 1.0}
    assert [t["rule"] for t in d["trials"]] == ["foreground", "class 1", "class 2"]
    assert [t["kept"] for t in d["trials"]] == [True, False, True]
    assert d["num_cases"] == 3 and d["num_classes"] == 3
    json.dumps(d)  # JSON-ready


def test_decide_two_true_components_are_kept():
    """(ii) The truth has two components of class 1 and the prediction finds both: every
    largest-component rule lowers (or keeps) Dice, so none is chosen."""
    pairs = []
    for off in (0, 4):
        truth = np.zeros((20, 20, 6), np.int32)
        truth[2 + off : 6 + off, 2:6, 1:5] = 1  # big class-1 part
        truth[14:16, 14:16, 2:4] = 1  # second, small class-1 part (true)
        truth[2 + off : 6 + off, 6:8, 1:5] = 2  # class 2 touches the big part
        pairs.append((truth.copy(), truth))
    d = pp.decide_postprocessing([(p, t, (1, 1, 2)) for p, t in pairs], num_classes=3)
    assert d["foreground"] is False and d["classes"] == []
    assert d["dice_before"] == d["dice_after"] == {"1": 1.0, "2": 1.0}
    # What the rejected rules would have scored, by hand: class 1 loses 8 of 64 + 8 voxels.
    fg, c1 = d["trials"][0], d["trials"][1]
    assert fg["dice_after"]["1"] == pytest.approx(2 * 64 / (64 + 72))
    assert c1["dice_after"]["1"] == pytest.approx(2 * 64 / (64 + 72))


def test_decide_veto_when_one_class_drops():
    """(iii) Foreground LCC raises the mean Dice but lowers class 1: it is not chosen.
    Class 2's own LCC still is."""
    truth = np.zeros((16, 20), np.int32)
    _square(truth, 1, 1, 5, 5, 1)  # big class 1, 25 voxels
    _square(truth, 1, 6, 2, 2, 2)  # class 2, 4 voxels, touching it
    truth[12, 2] = 1  # a true single class-1 voxel, far away
    pred = truth.copy()
    pred[12, 3:6] = 2  # 3 false class-2 voxels glued to that voxel
    fg_pred = pred.copy()
    fg_pred[12, 2:6] = 0  # what foreground LCC leaves
    pairs = [(pred, truth)]
    before = [_class_means(pairs, k) for k in (1, 2)]
    fg = [_class_means([(fg_pred, truth)], k) for k in (1, 2)]
    assert before == pytest.approx([1.0, 8 / 11]) and fg == pytest.approx([50 / 51, 1.0])
    assert np.mean(fg) > np.mean(before) and fg[0] < before[0]  # the premise
    d = pp.decide_postprocessing([(pred, truth, (1, 1))], num_classes=3)
    assert d["foreground"] is False
    assert d["classes"] == [2]  # class 2: the 3 stray voxels are a smaller class-2 component
    assert d["trials"][0]["dice_after"] == {"1": pytest.approx(50 / 51), "2": 1.0}
    assert d["dice_after"] == {"1": 1.0, "2": 1.0}


def test_decide_empty_classes_score_one_and_do_not_block():
    """A class absent from prediction and truth of every case scores 1 (jaxseg's policy), as
    does an empty-empty case; nnU-Net's NaN would block the foreground rule here."""
    pairs = []
    for n in (3, 4):
        truth = np.zeros((12, 12), np.int32)
        _square(truth, 1, 1, n, n, 1)
        pred = truth.copy()
        pred[10, 10] = 1
        pairs.append((pred, truth))
    pairs.append((np.zeros((12, 12), np.int32), np.zeros((12, 12), np.int32)))
    d = pp.decide_postprocessing([(p, t, (1, 1)) for p, t in pairs], num_classes=3)
    want1 = (2 * 9 / 19 + 2 * 16 / 33 + 1.0) / 3
    assert d["dice_before"] == {"1": pytest.approx(want1), "2": 1.0}
    assert d["foreground"] is True and d["dice_after"] == {"1": 1.0, "2": 1.0}
    # dice_before is the mean Dice of jaxseg.metrics on the same cases.
    m = [case_metrics(p, t, 3, (1, 1)) for p, t in pairs]
    assert d["dice_before"]["1"] == pytest.approx(np.mean([r[0]["dice"] for r in m]))


def test_decide_one_class_and_errors():
    truth = np.zeros((10, 10), np.uint8)
    _square(truth, 1, 1, 4, 4, 1)
    pred = truth.copy()
    pred[8, 8] = 1
    d = pp.decide_postprocessing([(pred, truth, (1, 1))], num_classes=2)
    assert d["foreground"] is True and d["classes"] == [] and len(d["trials"]) == 1
    with pytest.raises(DataError, match="no cases"):
        pp.decide_postprocessing([], num_classes=2)
    with pytest.raises(DataError, match="case 1.*shape"):
        pp.decide_postprocessing([(pred, truth, (1, 1)), (pred, truth[:5], (1, 1))], 2)
    with pytest.raises(DataError, match="case 0.*outside"):
        pp.decide_postprocessing([(pred * 3, truth, (1, 1))], 2)
    with pytest.raises(ConfigError, match="num_classes"):
        pp.decide_postprocessing([(pred, truth, (1, 1))], 1)


@pytest.mark.parametrize("kind", [str, pathlib.Path, epath.Path])
def test_save_load_round_trip_and_apply(tmp_path, kind):
    truth = np.zeros((10, 10), np.int32)
    _square(truth, 1, 1, 4, 4, 1)
    _square(truth, 1, 5, 4, 2, 2)
    pred = truth.copy()
    pred[8, 8] = 1
    decision = pp.decide_postprocessing([(pred, truth, (1, 1))], num_classes=3)
    path = kind(tmp_path / "sub" / "postprocessing.json")
    pp.save_decision(decision, path)
    pp.save_decision(decision, path)  # overwrites in place
    assert sorted(p.name for p in (tmp_path / "sub").iterdir()) == ["postprocessing.json"]
    loaded = pp.load_decision(path)
    assert loaded == decision
    rng = np.random.default_rng(1)
    labels = (rng.random((20, 18, 7)) * 3).astype(np.int16) * _blobs((20, 18, 7), rng)
    want = pp.keep_largest(labels, foreground=loaded["foreground"], classes=loaded["classes"])
    np.testing.assert_array_equal(pp.apply_postprocessing(labels, loaded), want)
    both = {"foreground": True, "classes": [1, 2]}
    np.testing.assert_array_equal(pp.apply_postprocessing(MAP, both), NO_BS)


def test_load_decision_errors(tmp_path):
    with pytest.raises(DataError, match="no postprocessing decision"):
        pp.load_decision(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(DataError, match="bad.json"):
        pp.load_decision(bad)
    bad.write_text(json.dumps({"foreground": "yes", "classes": []}))
    with pytest.raises(DataError, match="foreground"):
        pp.load_decision(bad)
    bad.write_text(json.dumps({"foreground": True, "classes": [0]}))
    with pytest.raises(DataError, match="classes"):
        pp.load_decision(bad)
    with pytest.raises(ConfigError):
        pp.apply_postprocessing(np.zeros((3, 3), np.int32), {"classes": []})
