"""jaxseg.postprocess.crf against a brute-force dense CRF: the full N x N kernels in float64
numpy, transcribed here from Krähenbühl and Koltun's mean-field update (with per-voxel
kernel normalisation, densecrf's NORMALIZE_AFTER), on images small enough that the local
window covers them whole; and a noisy constructed case where the CRF must sharpen the
boundary."""

import numpy as np
import pytest
from scipy import ndimage

from jaxseg.errors import ConfigError, DataError
from jaxseg.postprocess import crf as crf_lib


def _brute_force(probs, features, spacing, p):
    """Dense mean-field CRF, float64, every pair i != j of the image."""
    shape = probs.shape[:-1]
    k = probs.shape[-1]
    pos = np.stack(
        np.meshgrid(*[np.arange(n) * s for n, s in zip(shape, spacing)], indexing="ij"), -1
    )
    pos = pos.reshape(-1, len(shape)).astype(np.float64)
    feat = features.reshape(-1, features.shape[-1]).astype(np.float64) / p["intensity_sigma"]
    q0 = probs.reshape(-1, k).astype(np.float64)
    d2 = ((pos[:, None] - pos[None]) ** 2).sum(-1)
    f2 = ((feat[:, None] - feat[None]) ** 2).sum(-1)
    k_s = np.exp(-d2 / (2 * p["spatial_sigma_mm"] ** 2))
    k_b = np.exp(-d2 / (2 * p["bilateral_sigma_mm"] ** 2) - f2 / 2)
    for kern in (k_s, k_b):
        np.fill_diagonal(kern, 0.0)
        kern /= kern.sum(1, keepdims=True)
    unary = np.log(np.maximum(q0, 1e-8))
    q = np.exp(unary - unary.max(1, keepdims=True))
    q /= q.sum(1, keepdims=True)
    for _ in range(p["iterations"]):
        logits = unary + p["spatial_weight"] * k_s @ q + p["bilateral_weight"] * k_b @ q
        q = np.exp(logits - logits.max(1, keepdims=True))
        q /= q.sum(1, keepdims=True)
    return q.reshape(*shape, k)


def _random_case(shape, k, c, seed):
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(*shape, k)) * 2
    probs = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    return probs.astype(np.float32), rng.normal(size=(*shape, c)).astype(np.float32)


@pytest.mark.parametrize(
    "shape, spacing, k, c",
    [((9, 11), (1.0, 1.0), 3, 1), ((6, 5, 4), (0.8, 1.0, 2.5), 2, 2)],
)
def test_crf_matches_brute_force_dense_crf(shape, spacing, k, c):
    probs, feats = _random_case(shape, k, c, seed=len(shape))
    p = dict(
        iterations=4,
        window_mm=100.0,  # covers the whole image: the local CRF is the dense one
        spatial_sigma_mm=1.5,
        spatial_weight=1.5,
        bilateral_sigma_mm=4.0,
        intensity_sigma=0.7,
        bilateral_weight=2.5,
    )
    got = crf_lib.dense_crf(probs, feats, spacing, **p)
    want = _brute_force(probs, feats, spacing, p)
    assert got.dtype == np.float32 and got.shape == probs.shape
    np.testing.assert_allclose(got, want, atol=2e-5)
    # The CRF did something: the marginals moved well away from the input.
    assert np.abs(want - probs).max() > 0.1


def test_crf_window_truncates_neighbours():
    """With a window of one voxel (2D, 8 neighbours), the brute force restricted to those
    neighbours agrees; the full dense CRF does not."""
    probs, feats = _random_case((7, 8), 2, 1, seed=3)
    p = dict(crf_lib.DEFAULTS, iterations=3, window_mm=1.0)
    got = crf_lib.dense_crf(probs, feats, (1.0, 1.0), **p)
    # Reference: float64, kernel zeroed beyond the Chebyshev distance 1.
    shape = probs.shape[:-1]
    idx = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), -1).reshape(-1, 2)
    cheb = np.abs(idx[:, None] - idx[None]).max(-1)
    d2 = ((idx[:, None] - idx[None]) ** 2).sum(-1).astype(np.float64)
    f = feats.reshape(-1, 1).astype(np.float64) / p["intensity_sigma"]
    near = (cheb <= 1) & (cheb > 0)
    k_s = np.exp(-d2 / (2 * p["spatial_sigma_mm"] ** 2)) * near
    k_b = np.exp(-d2 / (2 * p["bilateral_sigma_mm"] ** 2) - (f - f.T) ** 2 / 2) * near
    k_s /= k_s.sum(1, keepdims=True)
    k_b /= k_b.sum(1, keepdims=True)
    unary = np.log(probs.reshape(-1, 2).astype(np.float64))
    q = np.exp(unary)
    for _ in range(3):
        lg = unary + p["spatial_weight"] * k_s @ q + p["bilateral_weight"] * k_b @ q
        q = np.exp(lg - lg.max(1, keepdims=True))
        q /= q.sum(1, keepdims=True)
    np.testing.assert_allclose(got.reshape(-1, 2), q, atol=2e-5)
    dense = _brute_force(probs, feats, (1.0, 1.0), dict(p, window_mm=100.0))
    assert np.abs(dense.reshape(-1, 2) - q).max() > 1e-3


def test_crf_sharpens_a_noisy_boundary():
    """A disc on a noisy image; the softmax is a blurred, shifted and noisy version of the
    truth. The CRF labels must miss fewer voxels of the disc boundary than the argmax."""
    rng = np.random.default_rng(0)
    n = 48
    yy, xx = np.mgrid[:n, :n]
    truth = (yy - 23.5) ** 2 + (xx - 23.5) ** 2 < 12**2
    image = truth.astype(np.float32) + rng.normal(0, 0.3, (n, n)).astype(np.float32)
    soft = ndimage.gaussian_filter(truth.astype(np.float64), 3.0)
    logit = 6 * (np.roll(soft, 2, axis=1) - 0.5) + rng.normal(0, 1.5, (n, n))
    p_fg = 1 / (1 + np.exp(-logit))
    probs = np.stack([1 - p_fg, p_fg], -1).astype(np.float32)
    before = np.argmax(probs, -1).astype(bool)
    after = crf_lib.crf_labels(probs, image[..., None], (1.0, 1.0)).astype(bool)
    err_before = np.count_nonzero(before != truth)
    err_after = np.count_nonzero(after != truth)
    assert err_after < 0.5 * err_before, (err_before, err_after)  # 200 -> 74 when written
    # Boundary sharpness: the boundary of the CRF's mask is shorter (fewer ragged pixels).
    edge = lambda m: np.count_nonzero(m ^ ndimage.binary_erosion(m))  # noqa: E731
    assert edge(after) < edge(before)


def test_crf_labels_on_the_foreground_box_equals_the_whole_image_crf():
    """crf_labels runs the CRF on the uncertain voxels' box only; on a 3D case with
    anisotropic spacing its labels equal the argmax of the CRF over the whole image."""
    rng = np.random.default_rng(1)
    shape = (48, 50, 20)
    probs = np.zeros((*shape, 3), np.float32)
    probs[..., 0] = 1.0
    # Uncertain voxels; their box plus two windows (6, 6, 2 voxels), rounded up to 16s, is
    # (6:38, 7:39, 3:19): a part of the image only.
    blob = rng.dirichlet((1.0, 1.0, 1.0), size=(6, 6, 4)).astype(np.float32)
    probs[12:18, 13:19, 5:9] = blob
    image = rng.normal(size=(*shape, 2)).astype(np.float32) * (3.0, 50.0)
    spacing = (1.0, 1.0, 2.5)
    labels = crf_lib.crf_labels(probs, image, spacing)
    whole = crf_lib.dense_crf(probs, crf_lib.standardise(image), spacing)
    assert labels.dtype == np.uint8 and labels.shape == shape
    np.testing.assert_array_equal(labels, np.argmax(whole, -1))
    assert (labels > 0).any() and not (labels == np.argmax(probs, -1)).all()
    # All certain: nothing to do, the argmax.
    certain = np.eye(3, dtype=np.float32)[rng.integers(0, 3, (4, 5))]
    np.testing.assert_array_equal(
        crf_lib.crf_labels(certain, image[:4, :5, 0], (1, 1)), np.argmax(certain, -1)
    )


def test_crf_bad_parameters():
    probs, feats = _random_case((4, 4), 2, 1, seed=0)
    for bad in (
        dict(window_mm=0.0),
        dict(window_mm=-1.0),
        dict(spatial_sigma_mm=0),
        dict(iterations=-1),
    ):
        with pytest.raises(ConfigError, match=next(iter(bad))):
            crf_lib.dense_crf(probs, feats, (1.0, 1.0), **bad)
    with pytest.raises(ConfigError, match="unknown keys"):
        crf_lib.dense_crf(probs, feats, (1.0, 1.0), window=3)
    with pytest.raises(DataError, match="one grid"):
        crf_lib.dense_crf(probs, feats[:3], (1.0, 1.0))
