"""Tests for jaxseg.metrics: distances against an independent EDT reference, overlap
formulas, the empty-mask policy and summarize()."""

import math

import numpy as np
import pytest
from scipy import ndimage

from jaxseg.errors import JaxsegError
from jaxseg.evaluation import summarize
from jaxseg.metrics import METRIC_NAMES, case_metrics, surface_voxels

# Identical (or both empty) masks: the best value of every metric.
PERFECT = dict(
    dice=1.0,
    iou=1.0,
    precision=1.0,
    recall=1.0,
    specificity=1.0,
    fpr=0.0,
    hd=0.0,
    hd95=0.0,
    asd=0.0,
    nsd=1.0,
    vol_diff_mm3=0.0,
    vol_diff_rel=0.0,
)


def _blob(shape, rng, n_seeds=3, radius=0.25):
    """A random smooth blob: a thresholded sum of Gaussian bumps."""
    grid = np.indices(shape).astype(np.float64)
    field = np.zeros(shape)
    for _ in range(n_seeds):
        centre = rng.uniform(0.2, 0.8, size=len(shape)) * np.asarray(shape)
        r = radius * min(shape) * rng.uniform(0.6, 1.2)
        d2 = sum((grid[i] - centre[i]) ** 2 for i in range(len(shape)))
        field += np.exp(-d2 / (2 * r * r))
    return field > 0.5


def _edt_reference(p, g, spacing):
    """Independent reference: distance transforms of the complement of each surface,
    read at the other surface's voxels (the same surface definition as documented)."""
    st = ndimage.generate_binary_structure(p.ndim, 1)
    sp = p & ~ndimage.binary_erosion(p, structure=st, border_value=0)
    sg = g & ~ndimage.binary_erosion(g, structure=st, border_value=0)
    dt_to_g = ndimage.distance_transform_edt(~sg, sampling=spacing)
    dt_to_p = ndimage.distance_transform_edt(~sp, sampling=spacing)
    d_pg = dt_to_g[sp]
    d_gp = dt_to_p[sg]
    hd95 = max(np.percentile(d_pg, 95), np.percentile(d_gp, 95))
    asd = (d_pg.sum() + d_gp.sum()) / (d_pg.size + d_gp.size)
    return hd95, asd


@pytest.mark.parametrize(
    "shape,spacing",
    [((48, 40), (0.7, 1.9)), ((30, 26, 18), (0.8, 1.1, 2.5)), ((24, 33, 20), (1.0, 1.0, 3.0))],
)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_distances_match_edt_reference(shape, spacing, seed):
    rng = np.random.default_rng(seed)
    for _ in range(4):
        g = _blob(shape, rng)
        p = _blob(shape, rng)
        if g.any() and p.any():
            break
    assert g.any() and p.any()
    pred = p.astype(np.int32)
    label = g.astype(np.int32)
    (row,) = case_metrics(pred, label, 2, spacing)
    hd95, asd = _edt_reference(p, g, spacing)
    np.testing.assert_allclose(row["hd95"], hd95, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(row["asd"], asd, rtol=1e-9, atol=1e-9)


def test_distances_when_masks_touch_the_image_border():
    rng = np.random.default_rng(5)
    shape, spacing = (20, 22, 14), (1.3, 0.6, 2.0)
    g = np.zeros(shape, bool)
    g[:9, 4:15, :] = True  # touches three faces
    p = _blob(shape, rng) | (np.indices(shape)[0] > 15)
    (row,) = case_metrics(p.astype(np.int64), g.astype(np.int64), 2, spacing)
    hd95, asd = _edt_reference(p, g, spacing)
    np.testing.assert_allclose([row["hd95"], row["asd"]], [hd95, asd], rtol=1e-9)


def test_hand_computed_offset_squares():
    # Two 10x10 squares, the prediction shifted by 3 voxels along x; spacing 2 mm x 0.5 mm.
    spacing = (2.0, 0.5)
    label = np.zeros((40, 40), np.int32)
    pred = np.zeros((40, 40), np.int32)
    label[10:20, 10:20] = 1
    pred[13:23, 10:20] = 1
    # Surfaces are the 36-voxel square rings. Hand count, pred-ring voxel (x, y) -> nearest
    # label-ring voxel (label ring: rows y=10, 19 for x 10..19 and columns x=10, 19):
    #   rows y in {10, 19}, x in 13..19: on the label ring -> 0                  (14 voxels)
    #   column x = 13, y in 11..18: nearest is the label row y=10 or 19, at
    #       min(y-10, 19-y) * 0.5 mm -> 0.5, 1, 1.5, 2, 2, 1.5, 1, 0.5 (x=10 is 6 mm away)  (8)
    #   rows y in {10, 19}, x in 20..22: to (19, y) is (x-19) * 2 mm -> 2, 4, 6 twice    (6)
    #   column x = 22, y in 11..18: to (19, y) is 6 mm (the corners are farther)        (8)
    d_pg = [0.0] * 14 + [0.5, 1.0, 1.5, 2.0, 2.0, 1.5, 1.0, 0.5] + [2, 4, 6] * 2 + [6.0] * 8
    # By symmetry (shift by -3) label -> pred has the same multiset.
    d_gp = list(d_pg)
    assert len(d_pg) == 36
    exp_hd95 = max(np.percentile(d_pg, 95), np.percentile(d_gp, 95))
    exp_asd = (sum(d_pg) + sum(d_gp)) / 72
    (row,) = case_metrics(pred, label, 2, spacing)
    assert row["hd95"] == pytest.approx(6.0)
    assert row["hd95"] == pytest.approx(exp_hd95)
    assert row["asd"] == pytest.approx(exp_asd)
    assert row["asd"] == pytest.approx(82.0 / 36)
    # Overlap: tp = 7*10 = 70, fp = fn = 30.
    assert row["dice"] == pytest.approx(140 / 200)
    assert row["iou"] == pytest.approx(70 / 130)
    assert row["precision"] == pytest.approx(0.7)
    assert row["recall"] == pytest.approx(0.7)


def test_identical_masks_give_zero_distance_and_unit_overlap():
    label = np.zeros((12, 12, 6), np.int32)
    label[3:8, 2:9, 1:4] = 1
    label[9:11, 9:11, 4:6] = 2
    for row in case_metrics(label, label, 3, (1.0, 1.0, 2.5)):
        assert row == dict(PERFECT)


@pytest.mark.parametrize("shape", [(17, 23), (9, 11, 7)])
def test_overlap_metrics_against_formulas(shape):
    rng = np.random.default_rng(7)
    k = 4
    pred = rng.integers(0, k, size=shape)
    label = rng.integers(0, k, size=shape)
    rows = case_metrics(pred, label, k, (1.0,) * len(shape))
    assert len(rows) == k - 1
    for c, row in enumerate(rows, start=1):
        p, g = pred == c, label == c
        tp = np.sum(p & g)
        fp = np.sum(p & ~g)
        fn = np.sum(~p & g)
        assert row["dice"] == pytest.approx(2 * tp / (2 * tp + fp + fn))
        assert row["iou"] == pytest.approx(tp / (tp + fp + fn))
        assert row["precision"] == pytest.approx(tp / (tp + fp))
        assert row["recall"] == pytest.approx(tp / (tp + fn))
        assert set(row) == set(METRIC_NAMES)


def _diag(shape, spacing):
    return math.sqrt(sum((n * s) ** 2 for n, s in zip(shape, spacing)))


@pytest.mark.parametrize("shape,spacing", [((16, 20), (0.5, 2.0)), ((8, 10, 12), (1.5, 0.7, 3.0))])
def test_empty_mask_policy(shape, spacing):
    present = np.zeros(shape, np.int32)
    present[(slice(2, 5),) * len(shape)] = 1
    empty = np.zeros(shape, np.int32)
    penalty = _diag(shape, spacing)

    n_all = int(np.prod(shape))
    n_fg = int(present.sum())
    voxel = float(np.prod(spacing))

    (both,) = case_metrics(empty, empty, 2, spacing)
    assert both == dict(PERFECT)

    (missed,) = case_metrics(empty, present, 2, spacing)  # structure missed
    assert missed == dict(
        dice=0.0,
        iou=0.0,
        precision=0.0,
        recall=0.0,
        specificity=1.0,  # no false positive among the N - |G| negatives
        fpr=0.0,
        hd=penalty,
        hd95=penalty,
        asd=penalty,
        nsd=0.0,
        vol_diff_mm3=-n_fg * voxel,
        vol_diff_rel=-2.0,
    )

    (false_pos,) = case_metrics(present, empty, 2, spacing)  # predicted where there is none
    assert false_pos == pytest.approx(
        dict(
            dice=0.0,
            iou=0.0,
            precision=0.0,
            recall=0.0,
            specificity=(n_all - n_fg) / n_all,
            fpr=n_fg / n_all,
            hd=penalty,
            hd95=penalty,
            asd=penalty,
            nsd=0.0,
            vol_diff_mm3=n_fg * voxel,
            vol_diff_rel=2.0,
        ),
        rel=1e-12,
    )

    # Disjoint non-empty masks: formulas give 0 without any 0/0; distances finite, < penalty.
    other = np.zeros(shape, np.int32)
    other[(slice(5, 7),) * len(shape)] = 1
    (disjoint,) = case_metrics(other, present, 2, spacing)
    assert disjoint["dice"] == disjoint["iou"] == disjoint["precision"] == disjoint["recall"] == 0.0
    assert 0 < disjoint["hd95"] <= disjoint["hd"] < penalty and 0 < disjoint["asd"] < penalty
    assert 0 <= disjoint["nsd"] < 1


def test_never_nan_over_random_cases_and_summary_counts_missed():
    rng = np.random.default_rng(11)
    k = 4
    cases = []
    for i in range(12):
        shape = (10, 12, 5) if i % 2 else (14, 9)
        pred = np.zeros(shape, np.int32)
        label = np.zeros(shape, np.int32)
        for c in range(1, k):
            mode = rng.integers(0, 4)  # 0 both empty, 1 missed, 2 false positive, 3 both
            blob = _blob(shape, rng, n_seeds=1, radius=0.2)
            if mode in (1, 3):
                label[blob] = c
            if mode in (2, 3):
                pred[np.roll(blob, 1, axis=0)] = c
        spacing = tuple(rng.uniform(0.5, 3.0, size=len(shape)))
        rows = case_metrics(pred, label, k, spacing)
        for row in rows:
            for v in row.values():
                assert isinstance(v, float) and np.isfinite(v)
        cases.append(rows)
    summary = summarize(_rows(cases), {c: f"class{c}" for c in range(1, k)})
    assert summary["num_cases"] == 12
    assert set(summary["per_class"]) == {"class1", "class2", "class3"}
    for c in range(1, k):
        for m in METRIC_NAMES:
            expected = np.mean([case[c - 1][m] for case in cases])
            assert summary["per_class"][f"class{c}"][m] == pytest.approx(expected)
    for m in METRIC_NAMES:
        expected = np.mean([np.mean([case[c - 1][m] for case in cases]) for c in range(1, k)])
        assert summary["mean"][m] == pytest.approx(expected)
        assert np.isfinite(summary["mean"][m])


def _rows(cases):
    """Per-case `case_metrics` lists as the report rows `jaxseg.evaluation` writes."""
    return [
        {"case": f"case{i}", "class": c, "name": str(c), **values}
        for i, per_class in enumerate(cases)
        for c, values in enumerate(per_class, start=1)
    ]


def test_summary_of_a_missed_structure_lowers_the_mean():
    label = np.zeros((10, 10), np.int32)
    label[2:6, 2:6] = 1
    hit = case_metrics(label, label, 2, (1.0, 1.0))
    missed = case_metrics(np.zeros_like(label), label, 2, (1.0, 1.0))
    s = summarize(_rows([hit, missed]), {1: "organ"})
    assert s["per_class"]["organ"]["dice"] == pytest.approx(0.5)
    assert s["mean"]["hd95"] == pytest.approx(_diag((10, 10), (1.0, 1.0)) / 2)


def test_surface_voxels_connectivity():
    m = np.zeros((7, 7), bool)
    m[1:6, 1:6] = True
    s = surface_voxels(m)
    assert s.sum() == 16 and not s[2:5, 2:5].any()
    full = np.ones((4, 5), bool)  # touching every border: the border ring is surface
    assert surface_voxels(full).sum() == 4 * 5 - 2 * 3


def test_input_validation():
    a = np.zeros((4, 4), np.int32)
    with pytest.raises(ValueError, match="shape"):
        case_metrics(a, np.zeros((4, 5), np.int32), 2, (1, 1))
    with pytest.raises(ValueError, match="spacing"):
        case_metrics(a, a, 2, (1.0,))
    with pytest.raises(ValueError, match="spacing"):
        case_metrics(a, a, 2, (1.0, 0.0))
    with pytest.raises(ValueError, match="outside"):
        case_metrics(a + 3, a, 2, (1, 1))
    with pytest.raises(ValueError, match="integer"):
        case_metrics(a.astype(np.float32), a, 2, (1, 1))
    with pytest.raises(JaxsegError, match="no cases"):
        summarize([], {})


@pytest.mark.parametrize("shape,spacing", [((17, 23), (0.5, 1.5)), ((9, 11, 7), (1.0, 0.8, 2.5))])
def test_specificity_fpr_and_volume_against_formulas(shape, spacing):
    rng = np.random.default_rng(8)
    k = 4
    pred = rng.integers(0, k, size=shape)
    label = rng.integers(0, k, size=shape)
    label[label == 3] = 0  # class 3 absent from the reference: a false positive
    voxel_mm3 = np.prod(np.asarray(spacing, np.float64))
    for c, row in enumerate(case_metrics(pred, label, k, spacing), start=1):
        p, g = pred == c, label == c
        tn = np.sum(~p & ~g)
        fp = np.sum(p & ~g)
        assert row["specificity"] == pytest.approx(tn / (tn + fp), rel=1e-12)
        assert row["fpr"] == pytest.approx(fp / (tn + fp), rel=1e-12)
        v_p, v_g = p.sum() * voxel_mm3, g.sum() * voxel_mm3
        assert row["vol_diff_mm3"] == pytest.approx(v_p - v_g, rel=1e-12)
        assert row["vol_diff_rel"] == pytest.approx((v_p - v_g) / ((v_p + v_g) / 2), rel=1e-12)
    assert rows_class3_is_fp(pred, label, k, spacing)


def rows_class3_is_fp(pred, label, k, spacing):
    row = case_metrics(pred, label, k, spacing)[2]
    return row["vol_diff_rel"] == 2.0 and row["dice"] == 0.0 and 0 < row["fpr"] < 1


def test_specificity_when_the_reference_fills_the_image():
    # ~G is empty: TN + FP = 0. Specificity is the recall of ~G, so the empty-mask rule of
    # recall applies: 1 if ~P is empty too, else 0.
    full = np.ones((5, 6), np.int32)
    (row,) = case_metrics(full, full, 2, (1.0, 1.0))
    assert row == dict(PERFECT)
    partial = full.copy()
    partial[0, 0] = 0
    (row,) = case_metrics(partial, full, 2, (1.0, 1.0))
    assert (row["specificity"], row["fpr"]) == (0.0, 1.0)
    assert row["vol_diff_mm3"] == -1.0


def test_report_columns_and_table_carry_every_metric(tmp_path):
    from jaxseg import evaluation

    labels = {0: "background", 1: "organ"}
    label = np.zeros((12, 10), np.int32)
    label[2:7, 3:8] = 1
    pred = np.roll(label, 1, axis=0)
    rows = evaluation.score_case("c0", pred, label, (1.0, 2.0), labels, nsd_tolerance_mm=0.5)
    rows += evaluation.score_case("c1", label, label, (1.0, 2.0), labels)
    summary = evaluation.summarize(rows, {1: "organ"})
    assert list(summary["mean"]) == list(METRIC_NAMES)
    (ref,) = case_metrics(pred, label, 2, (1.0, 2.0), nsd_tolerance_mm=0.5)
    assert summary["mean"]["nsd"] == pytest.approx((ref["nsd"] + 1.0) / 2)
    assert summary["mean"]["hd"] == pytest.approx(ref["hd"] / 2)
    evaluation.write_report(rows, summary, tmp_path)
    header = (tmp_path / "metrics.csv").read_text().splitlines()[0]
    assert header == ",".join(["case", "class", "name", *METRIC_NAMES])
    table = evaluation.format_table(summary)
    for m in METRIC_NAMES:
        assert m in table.splitlines()[0]
    # Rows from before a metric existed are summarised on the columns they have ...
    old = [{k: v for k, v in r.items() if k not in ("nsd", "hd")} for r in rows]
    assert "nsd" not in evaluation.summarize(old, {1: "organ"})["mean"]
    # ... but a metric that only some rows carry would average fewer cases: an error.
    with pytest.raises(JaxsegError, match="lacks nsd"):
        evaluation.summarize([rows[0], {k: v for k, v in rows[1].items() if k != "nsd"}], {})


def test_nsd_tolerance_config():
    from jaxseg import evaluation
    from jaxseg.defaults import base_config
    from jaxseg.errors import ConfigError

    config = base_config()
    assert evaluation.nsd_tolerance(config) == config.eval.nsd_tolerance_mm > 0
    for bad in (0.0, -2.0, float("inf")):
        config.eval.nsd_tolerance_mm = bad
        with pytest.raises(ConfigError, match="eval.nsd_tolerance_mm"):
            evaluation.nsd_tolerance(config)
