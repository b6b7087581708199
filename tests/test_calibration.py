"""Calibration: ECE against a per-bin transcription of Guo et al.'s formula, the fitted
temperature against scipy's scalar minimiser on an NLL written with scipy's log_softmax,
recovery of a known temperature, the window sampling's alignment, and the face on a run."""

import json
import warnings

import numpy as np
import pytest
from scipy import optimize, special

from jaxseg import calibration, inference
from jaxseg.data.io import Image
from jaxseg.data.preprocess import Preprocessing
from jaxseg.errors import ConfigError
from tests.tiny_config import write_tiny_config


def _ece_reference(probs, labels, num_bins):
    """Guo et al. (2017) eq. 3, one bin at a time: bins (m-1)/M < conf <= m/M."""
    probs = probs.reshape(-1, probs.shape[-1]).astype(np.float64)
    labels = labels.reshape(-1)
    conf = probs.max(axis=1)
    pred = probs.argmax(axis=1)
    total = 0.0
    for m in range(1, num_bins + 1):
        lo, hi = (m - 1) / num_bins, m / num_bins
        in_bin = (conf > lo) & (conf <= hi) if m > 1 else (conf >= lo) & (conf <= hi)
        if in_bin.any():
            acc = np.mean(pred[in_bin] == labels[in_bin])
            total += in_bin.sum() / len(conf) * abs(acc - conf[in_bin].mean())
    return total


def _random_probs(rng, shape, k, sharpness=3.0):
    return special.softmax(sharpness * rng.normal(size=(*shape, k)), axis=-1).astype(np.float32)


@pytest.mark.parametrize("num_bins", [1, 10, 15])
def test_ece_matches_the_published_formula(num_bins):
    rng = np.random.default_rng(0)
    probs = _random_probs(rng, (20, 17, 6), 4)
    labels = rng.integers(0, 4, size=(20, 17, 6))
    assert calibration.expected_calibration_error(probs, labels, num_bins) == pytest.approx(
        _ece_reference(probs, labels, num_bins), rel=1e-6, abs=1e-9
    )


def test_reliability_accumulates_case_by_case_and_masks():
    rng = np.random.default_rng(1)
    a, b = _random_probs(rng, (30, 20), 3), _random_probs(rng, (11, 9), 3)
    la, lb = rng.integers(0, 3, (30, 20)), rng.integers(0, 3, (11, 9))
    pooled = np.concatenate([a.reshape(-1, 3), b.reshape(-1, 3)])
    rel = calibration.Reliability.empty(10).add(a, la).add(b, lb)
    assert rel.ece() == pytest.approx(
        _ece_reference(pooled, np.concatenate([la.ravel(), lb.ravel()]), 10)
    )
    mask = la > 0
    masked = calibration.Reliability.empty(10).add(a, la, mask=mask).ece()
    assert masked == pytest.approx(_ece_reference(a[mask], la[mask], 10))
    d = rel.diagram()
    assert sum(d["counts"]) == a[..., 0].size + b[..., 0].size
    assert len(d["bin_edges"]) == 11 and d["ece"] == pytest.approx(rel.ece())


def test_perfectly_calibrated_one_hot_predictions_have_zero_ece():
    labels = np.random.default_rng(2).integers(0, 3, size=500)
    probs = np.eye(3, dtype=np.float32)[labels]
    assert calibration.expected_calibration_error(probs, labels) == 0.0
    assert np.isnan(calibration.Reliability.empty().ece())


def _nll_reference(logits, labels, t):
    logp = special.log_softmax(logits.astype(np.float64) / t, axis=1)
    return -logp[np.arange(len(labels)), labels].mean()


def test_fitted_temperature_is_scipys_minimiser():
    rng = np.random.default_rng(3)
    logits = 4.0 * rng.normal(size=(3000, 4)).astype(np.float32)
    labels = rng.integers(0, 4, 3000)
    labels[:1500] = logits[:1500].argmax(1)  # half right: overconfident logits
    fitted = calibration.fit_temperature(logits, labels)
    best = optimize.minimize_scalar(
        lambda log_t: _nll_reference(logits, labels, np.exp(log_t)),
        bounds=(np.log(1e-2), np.log(1e2)),
        method="bounded",
        options={"xatol": 1e-8},
    )
    assert fitted == pytest.approx(np.exp(best.x), rel=1e-4)
    assert calibration.negative_log_likelihood(logits, labels, fitted) == pytest.approx(
        _nll_reference(logits, labels, fitted), rel=1e-9
    )


def test_a_known_temperature_is_recovered():
    rng = np.random.default_rng(4)
    logits = 3.0 * rng.normal(size=(40000, 3))
    true_t = 2.5  # labels drawn from softmax(logits / 2.5): the logits are overconfident
    p = special.softmax(logits / true_t, axis=1)
    labels = (rng.random((len(p), 1)) > np.cumsum(p, axis=1)).sum(axis=1)
    assert calibration.fit_temperature(logits, labels) == pytest.approx(true_t, rel=0.05)


def test_with_tta_the_fit_targets_the_averaged_softmax():
    # Two mirrored passes that disagree: their averaged softmax is less confident than
    # either, so the best temperature differs from the single-pass one. Reference: the
    # mixture NLL written with scipy, minimised on a fine grid.
    rng = np.random.default_rng(7)
    base = 4.0 * rng.normal(size=(4000, 3))
    logits = np.stack([base, base + 2.0 * rng.normal(size=base.shape)], axis=1)
    labels = base.argmax(1)
    flip = rng.random(len(labels)) < 0.3
    labels[flip] = rng.integers(0, 3, flip.sum())

    def nll(t):
        p = special.softmax(logits / t, axis=-1).mean(axis=1)
        return -np.log(p[np.arange(len(labels)), labels]).mean()

    grid = np.exp(np.linspace(np.log(0.2), np.log(5.0), 2001))
    best = grid[np.argmin([nll(t) for t in grid])]
    fitted = calibration.fit_temperature(logits, labels)
    assert fitted == pytest.approx(best, rel=2e-3)
    assert calibration.negative_log_likelihood(logits, labels, fitted) == pytest.approx(
        nll(fitted), rel=1e-9
    )


def test_bad_inputs_are_refused():
    with pytest.raises(ConfigError, match="temperature"):
        calibration.check_temperature(0.0, "calibration.json")
    with pytest.raises(Exception, match="outside the 2 classes"):
        calibration.fit_temperature(np.zeros((3, 2)), np.array([0, 1, 2]))


def test_window_sampling_keeps_logits_and_labels_aligned_and_skips_padding():
    # The image's channel is the label; the "model" returns logits that one-hot the input,
    # so every sampled logit row must argmax to its sampled label, and padding (which the
    # model would see as class 0 everywhere) must never be drawn.
    rng = np.random.default_rng(5)
    label = rng.integers(1, 3, size=(13, 21)).astype(np.int32)
    image = Image(
        data=label[..., None].astype(np.float32),
        affine=np.eye(4),
        spacing=(1.0, 1.0),
        original_affine=np.eye(4),
        original_shape=label.shape,
        path="c.nii.gz",
    )
    prep = Preprocessing(modalities=("noNorm",))  # the model sees the labels as they are

    def logits_fn(x):  # [F=1, b, *patch, K]
        return 10.0 * np.eye(3, dtype=np.float32)[np.rint(x[..., 0]).astype(int)][None]

    window = dict(
        patch_size=(16, 16), num_classes=3, overlap=0.5, batch_size=2, gaussian_sigma_scale=0.125
    )
    logits, labels = calibration.sample_window_logits(
        [("c", image, label)], logits_fn, window=window, preprocessing=prep, voxels_per_window=50
    )
    assert len(labels) == 2 * 50  # 21 > 16: two windows along y, one (padded) along x
    assert logits.shape == (100, 1, 3)
    np.testing.assert_array_equal(logits[:, 0].argmax(1), labels)
    assert labels.min() >= 1


def test_temperature_divides_the_logits_of_every_window(phantom_2d):
    import jax

    from jaxseg.models import build_model

    model = build_model("unet", dims=2, in_channels=1, num_classes=3, features=(4, 8))
    x = np.random.default_rng(6).normal(size=(2, 16, 16, 1)).astype(np.float32)
    params = model.init(jax.random.PRNGKey(0), x, train=False)["params"]
    logits = inference.window_logits(model, params)(x)
    assert logits.shape == (1, 2, 16, 16, 3)
    for t in (1.0, 0.5, 3.0):
        got = inference.window_predictor(model, params, temperature=t)(x)
        np.testing.assert_allclose(got, special.softmax(logits[0] / t, axis=-1), atol=1e-6)
    # With TTA: each pass's logits flipped back; their mean softmax is the TTA predictor.
    mirrored = inference.window_logits(model, params, (0, 1))(x)
    assert mirrored.shape[0] == 4
    np.testing.assert_allclose(mirrored[0], logits[0], atol=1e-6)
    z = model.apply({"params": params}, x[:, ::-1], train=False)
    np.testing.assert_allclose(mirrored[1], np.asarray(z)[:, ::-1], atol=1e-5)
    tta = inference.window_predictor(model, params, (0, 1), temperature=2.0)(x)
    np.testing.assert_allclose(tta, special.softmax(mirrored / 2.0, axis=-1).mean(0), atol=1e-6)


@pytest.mark.e2e
def test_calibrate_fits_stores_and_is_applied(phantom_2d, tmp_path):
    from jaxseg import calibrate
    from jaxseg.config import load_config
    from jaxseg.training.loop import train
    from jaxseg.workdir import CALIBRATION_FILE, load_temperature, load_trained

    cfg = tmp_path / "c.py"
    write_tiny_config(cfg, phantom_2d, steps=8, warmup=2)
    workdir = tmp_path / "w"
    train(load_config(cfg), workdir)
    assert calibrate.main(["--workdir", str(workdir)]) == 0
    saved = json.loads((workdir / CALIBRATION_FILE).read_text())
    assert saved["nll_sampled_after"] <= saved["nll_sampled_before"] + 1e-12
    assert (workdir / "reliability.png").stat().st_size > 0
    run = load_trained(workdir)
    assert (saved["step"], saved["checkpoint"]) == (run.step, run.checkpoint)
    assert load_temperature(run) == pytest.approx(saved["temperature"])
    # A temperature fitted for another checkpoint is not applied.
    saved["step"] += 1
    (workdir / CALIBRATION_FILE).write_text(json.dumps(saved))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert load_temperature(run) == 1.0
    assert any("jaxseg.calibrate" in str(w.message) for w in caught)
    # Restored: the fitted temperature applies again to evaluate and predict.
    saved["step"] -= 1
    (workdir / CALIBRATION_FILE).write_text(json.dumps(saved))
    _check_probabilities_and_evaluation(workdir, phantom_2d, tmp_path, saved["temperature"])


def _check_probabilities_and_evaluation(workdir, root, tmp_path, temperature):
    """predict --probabilities writes softmax maps whose argmax is the mask; evaluate's ECE
    equals Guo et al.'s formula (`_ece_reference`) over those maps and the label files."""
    import nibabel as nib

    from jaxseg import evaluate, predict
    from jaxseg.data import dataset
    from jaxseg.workdir import load_splits

    summary = evaluate.evaluate_run(workdir, split="test")
    assert summary["calibration"]["temperature"] == pytest.approx(temperature)
    assert (workdir / "eval_test" / evaluate.RELIABILITY_PNG).stat().st_size > 0
    spec = dataset.load_dataset(root)
    by_id = {c.case_id: c for c in spec.training}
    cases = [by_id[c] for c in load_splits(workdir)["test"]]
    images = tmp_path / "test_images"
    images.mkdir()
    for c in cases:
        (images / f"{c.case_id}.nii.gz").symlink_to(c.image_paths[0])
    argv = ["--workdir", str(workdir), "--input", str(images), "--output", str(tmp_path / "m")]
    assert predict.main([*argv, "--probabilities", str(tmp_path / "p")]) == 0
    all_probs, all_labels = [], []
    for c in cases:
        stored = nib.load(tmp_path / "p" / f"{c.case_id}.nii.gz")
        probs = np.asarray(stored.dataobj, np.float32)  # scl_slope applied
        mask = np.asarray(nib.load(tmp_path / "m" / f"{c.case_id}.nii.gz").dataobj)
        label = np.asarray(nib.load(c.label_path).dataobj)
        assert stored.get_data_dtype() == np.uint16 and probs.shape == (
            *label.shape,
            spec.num_classes,
        )
        np.testing.assert_allclose(probs.sum(-1), 1.0, atol=3e-5)
        # 16-bit steps can tie two classes that float32 told apart: compare where they differ.
        top2 = np.sort(probs, -1)[..., -2:]
        clear = top2[..., 1] - top2[..., 0] > 1e-4
        np.testing.assert_array_equal(np.argmax(probs, -1)[clear], mask[clear])
        np.testing.assert_allclose(stored.affine, nib.load(c.label_path).affine)
        all_probs.append(probs.astype(np.float64).reshape(-1, spec.num_classes))
        all_labels.append(label.reshape(-1))
    expected = _ece_reference(np.concatenate(all_probs), np.concatenate(all_labels), 15)
    assert summary["calibration"]["ece"] == pytest.approx(expected, abs=2e-3)
