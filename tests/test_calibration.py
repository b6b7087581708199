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

    def logits_fn(x):
        return 10.0 * np.eye(3, dtype=np.float32)[np.rint(x[..., 0]).astype(int)]

    window = dict(
        patch_size=(16, 16), num_classes=3, overlap=0.5, batch_size=2, gaussian_sigma_scale=0.125
    )
    logits, labels = calibration.sample_window_logits(
        [("c", image, label)], logits_fn, window=window, preprocessing=prep, voxels_per_window=50
    )
    assert len(labels) == 2 * 50  # 21 > 16: two windows along y, one (padded) along x
    np.testing.assert_array_equal(logits.argmax(1), labels)
    assert labels.min() >= 1


def test_temperature_divides_the_logits_of_every_window(phantom_2d):
    import jax

    from jaxseg.models import build_model

    model = build_model("unet", dims=2, in_channels=1, num_classes=3, features=(4, 8))
    x = np.random.default_rng(6).normal(size=(2, 16, 16, 1)).astype(np.float32)
    params = model.init(jax.random.PRNGKey(0), x, train=False)["params"]
    logits = inference.window_logits(model, params)(x)
    for t in (1.0, 0.5, 3.0):
        got = inference.window_predictor(model, params, temperature=t)(x)
        np.testing.assert_allclose(got, special.softmax(logits / t, axis=-1), atol=1e-6)


CONFIG = """
from jaxseg.defaults import base_config

def get_config():
    c = base_config()
    c.data.root = {root!r}
    c.data.patch_size = (32, 32)
    c.data.batch_size = 2
    c.data.num_threads = 1
    c.model.name = "unet"
    c.model.args.features = (8, 16)
    c.train.steps = 8
    c.train.warmup_steps = 2
    c.train.eval_every = 8
    c.train.checkpoint_every = 8
    c.eval.max_val_cases = 1
    return c
"""


@pytest.mark.e2e
def test_calibrate_fits_stores_and_is_applied(phantom_2d, tmp_path):
    from jaxseg import calibrate
    from jaxseg.config import load_config
    from jaxseg.training.loop import train
    from jaxseg.workdir import CALIBRATION_FILE, load_temperature, load_trained

    cfg = tmp_path / "c.py"
    cfg.write_text(CONFIG.format(root=str(phantom_2d)))
    workdir = tmp_path / "w"
    train(load_config(cfg), workdir)
    assert calibrate.main(["--workdir", str(workdir), "--no-tta"]) == 0
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
