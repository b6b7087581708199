"""Tests for jaxseg.inference: stitching equals whole-image application for voxelwise
functions, window coverage, importance map, batch padding."""

import itertools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.signal import windows as signal_windows

from jaxseg import inference
from jaxseg.data.preprocess import Preprocessing
from jaxseg.defaults import base_config
from jaxseg.errors import ConfigError, JaxsegError
from jaxseg.inference import (
    ensemble_predictor,
    gaussian_importance_map,
    make_predict_fn,
    predict_case,
    sliding_window_predict,
    window_slices,
    window_starts,
)

C, K = 2, 3
_W = np.array([[1.0, -2.0, 0.5], [0.3, 1.5, -1.0]], np.float32)
_B = np.array([0.1, -0.2, 0.3], np.float32)


def _voxelwise(x):
    """softmax(x @ W + b) per voxel: a fixed function of each voxel's input."""
    return jax.nn.softmax(jnp.asarray(x) @ _W + _B, axis=-1)


def _recording(fn):
    shapes = []

    def wrapped(batch):
        shapes.append(batch.shape)
        return fn(batch)

    return wrapped, shapes


@pytest.mark.parametrize(
    "shape,patch",
    [
        ((23, 17), (8, 8)),  # odd shapes
        ((5, 30), (8, 8)),  # one axis smaller than the patch
        ((6, 7), (8, 8)),  # image smaller than the patch
        ((8, 8), (8, 8)),  # exactly one window
        ((13, 11, 9), (6, 5, 4)),
        ((4, 12, 3), (6, 5, 4)),  # 3D, two axes smaller than the patch
    ],
)
@pytest.mark.parametrize("overlap", [0.0, 0.25, 0.5, 0.8])
@pytest.mark.parametrize("mode", ["gaussian", "constant"])
def test_stitching_equals_whole_image(shape, patch, overlap, mode):
    rng = np.random.default_rng(0)
    image = rng.normal(size=(*shape, C)).astype(np.float32)
    fn, shapes = _recording(jax.jit(_voxelwise))
    probs = sliding_window_predict(
        image, fn, patch_size=patch, num_classes=K, overlap=overlap, batch_size=3, mode=mode
    )
    expected = np.asarray(_voxelwise(image))
    assert probs.shape == (*shape, K) and probs.dtype == np.float32
    np.testing.assert_allclose(probs, expected, rtol=1e-5, atol=1e-6)
    assert all(s == (3, *patch, C) for s in shapes)  # always a full batch


@pytest.mark.parametrize(
    "size,patch,overlap",
    itertools.product([7, 8, 9, 16, 31, 100], [3, 7, 8], [0.0, 0.25, 0.5, 0.6, 0.9]),
)
def test_window_starts_cover_every_voxel(size, patch, overlap):
    if size < patch:
        with pytest.raises(ValueError):
            window_starts(size, patch, overlap)
        return
    starts = window_starts(size, patch, overlap)
    assert starts[0] == 0 and starts[-1] == size - patch
    assert starts == sorted(set(starts))
    covered = np.zeros(size, bool)
    for s in starts:
        covered[s : s + patch] = True
    assert covered.all()
    # Consecutive windows share at least the requested fraction of a window, or all but
    # one voxel where that fraction leaves less than a voxel to move by. (The exact starts
    # are MONAI's: tests/test_sliding_window_monai.py compares them.)
    shared = min(overlap * patch, patch - 1)
    assert all(a + patch - b >= shared for a, b in zip(starts, starts[1:]))


def test_window_slices_cover_volume_and_match_monai_counts():
    shape, patch = (21, 10, 13), (8, 5, 6)
    slices = window_slices(shape, patch, 0.5)
    count = np.zeros(shape, int)
    for sl in slices:
        assert all(s.stop - s.start == p for s, p in zip(sl, patch))
        count[sl] += 1
    assert count.min() >= 1
    # interval 4 -> starts 0,4,8,12,13 ; interval 2 (5*0.5=2.5->2) -> 0,2,4,5 ; interval 3 -> 0,3,6,7
    assert len(slices) == 5 * 4 * 4
    assert window_starts(21, 8, 0.5) == [0, 4, 8, 12, 13]
    assert window_starts(512, 96, 0.5) == list(range(0, 417, 48)) + [416]


def _published_gaussian(patch, sigma_scale=0.125, floor=1e-3):
    """The Gaussian window w(n) = exp(-(n - (M - 1) / 2)^2 / (2 sigma^2)) per axis
    (`scipy.signal.windows.gaussian`), sigma = sigma_scale * M, multiplied over the axes and
    clipped below at `floor` (MONAI's `compute_importance_map`), float64, scaled to peak 1."""
    g = np.ones(())
    for p in patch:
        g = np.multiply.outer(g, signal_windows.gaussian(p, std=sigma_scale * p, sym=True))
    g = np.maximum(g, floor)
    return g / g.max()


@pytest.mark.parametrize("patch", [(8, 8), (7, 10), (6, 5, 9)])
@pytest.mark.parametrize("sigma_scale", [0.125, 0.3, 0.01])
def test_gaussian_importance_map(patch, sigma_scale):
    g = gaussian_importance_map(patch, sigma_scale)
    assert g.shape == patch and g.dtype == np.float32
    np.testing.assert_allclose(g, _published_gaussian(patch, sigma_scale), rtol=1e-6, atol=1e-9)
    assert g.min() > 0  # every voxel a window covers gets weight, even with a tiny sigma


def _window_dependent(x):
    """A prediction that depends on the whole window (not voxelwise): adds the window mean."""
    x = jnp.asarray(x)
    logits = x @ _W + _B + jnp.mean(x, axis=tuple(range(1, x.ndim - 1)), keepdims=True) @ _W
    return jax.nn.softmax(logits, axis=-1)


@pytest.mark.parametrize("shape,patch", [((19, 14), (8, 6)), ((11, 9, 10), (5, 5, 4))])
def test_batch_size_and_padding_do_not_change_results(shape, patch):
    rng = np.random.default_rng(1)
    image = rng.normal(size=(*shape, C)).astype(np.float32)
    results = []
    n_windows = len(window_slices(shape, patch, 0.5))
    for b in (1, 3, 4, n_windows, n_windows + 5):
        fn, shapes = _recording(jax.jit(_window_dependent))
        results.append(
            sliding_window_predict(image, fn, patch_size=patch, num_classes=K, batch_size=b)
        )
        assert len(shapes) == -(-n_windows // b) and set(shapes) == {(b, *patch, C)}
    for r in results[1:]:
        np.testing.assert_allclose(r, results[0], rtol=1e-6, atol=1e-7)
    # Sanity: it is a proper probability map and depends on the windowing.
    np.testing.assert_allclose(results[0].sum(-1), 1.0, rtol=1e-5)
    assert not np.allclose(results[0], np.asarray(_voxelwise(image)), atol=1e-3)


def test_blending_is_weighted_mean_of_window_outputs():
    # predict_fn returns a per-window constant; the stitched value at a voxel is the
    # importance-weighted mean of the constants of the windows covering it.
    shape, patch = (12, 10), (6, 6)
    image = np.zeros((*shape, 1), np.float32)
    slices = window_slices(shape, patch, 0.5)
    values = np.linspace(0.1, 0.9, len(slices)).astype(np.float32)
    counter = iter(range(10**6))

    def fn(batch):
        out = np.zeros((batch.shape[0], *patch, 2), np.float32)
        for i in range(batch.shape[0]):
            j = next(counter)
            v = values[j] if j < len(slices) else 0.5
            out[i, ..., 0], out[i, ..., 1] = v, 1 - v
        return out

    probs = sliding_window_predict(image, fn, patch_size=patch, num_classes=2, batch_size=4)
    g = _published_gaussian(patch)
    num = np.zeros(shape)
    den = np.zeros(shape)
    for v, sl in zip(values, slices):
        num[sl] += g * v
        den[sl] += g
    np.testing.assert_allclose(probs[..., 0], num / den, rtol=1e-5)


_IDENTITY = Preprocessing(modalities=("noNorm",) * C)


@pytest.mark.parametrize("slab", [1 << 22, 13 * 7 * 2])  # one slab; slabs of 2 x-planes
def test_predict_case_uint8_argmax(slab, monkeypatch):
    """No crop, no resampling, no normalisation: the class map is the plain argmax of the
    voxelwise function, whatever the argmax slab size."""
    monkeypatch.setattr("jaxseg.inference._ARGMAX_SLAB_VOXELS", slab)
    rng = np.random.default_rng(2)
    image = rng.normal(size=(9, 13, 7, C)).astype(np.float32)
    window = dict(patch_size=(4, 4, 4), num_classes=K, overlap=0.25)
    labels = predict_case(
        image, (1.0, 1.0, 1.0), jax.jit(_voxelwise), window=window, preprocessing=_IDENTITY
    )
    assert labels.dtype == np.uint8 and labels.shape == (9, 13, 7)
    np.testing.assert_array_equal(labels, np.argmax(np.asarray(_voxelwise(image)), -1))


def test_predict_case_resamples_there_and_back():
    """With a target spacing twice the file's, the model sees a half-size grid and the map
    comes back on the file's grid: for a smooth image, the voxelwise argmax of the original
    image except near class boundaries (reference: numpy on the original grid)."""
    x, y, z = np.meshgrid(*[np.linspace(-1, 1, n) for n in (24, 20, 16)], indexing="ij")
    image = np.stack([3 * x, 3 * y + z], -1).astype(np.float32)
    seen = []

    def predictor(windows):
        seen.append(windows.shape)
        return np.asarray(_voxelwise(windows))

    prep = Preprocessing(modalities=("noNorm",) * C, target_spacing=(2.0, 2.0, 2.0))
    window = dict(patch_size=(8, 8, 8), num_classes=K, overlap=0.5)
    labels = predict_case(image, (1.0, 1.0, 1.0), predictor, window=window, preprocessing=prep)
    assert labels.shape == (24, 20, 16)
    expected = np.argmax(np.asarray(_voxelwise(image)), -1)
    assert np.mean(labels == expected) > 0.97
    assert seen[0] == (4, 8, 8, 8, C)  # windows over the 12 x 10 x 8 model grid


def test_predict_case_crop_nonzero_is_background_outside():
    """crop_nonzero: voxels outside the nonzero box are background (0) in the map even
    where the model would say otherwise; inside, the voxelwise argmax."""
    rng = np.random.default_rng(4)
    image = np.zeros((20, 18, 2), np.float32)
    image[5:15, 3:12] = rng.normal(size=(10, 9, 2)) + 2.0

    def predictor(windows):
        probs = np.array(_voxelwise(windows))
        probs[..., 0] = np.where(np.all(windows == 0, -1), 0.0, probs[..., 0])
        return probs

    prep = Preprocessing(modalities=("noNorm", "noNorm"), crop_nonzero=True)
    window = dict(patch_size=(8, 8), num_classes=K, overlap=0.5)
    labels = predict_case(image, (1.0, 1.0), predictor, window=window, preprocessing=prep)
    inside = np.argmax(np.asarray(_voxelwise(image[5:15, 3:12])), -1)
    np.testing.assert_array_equal(labels[5:15, 3:12], inside)
    outside = np.ones(labels.shape, bool)
    outside[5:15, 3:12] = False
    assert np.all(labels[outside] == 0)


class _Tilted(nn.Module):
    """Not mirror- or rotation-equivariant: logits depend on the voxel's position along each
    axis, with a different weight per axis."""

    @nn.compact
    def __call__(self, x, train=False):
        pos = sum(
            i
            * jnp.arange(n, dtype=jnp.float32).reshape([n if a == i else 1 for a in range(x.ndim)])
            for i, n in enumerate(x.shape)
            if 0 < i < x.ndim - 1
        )
        return nn.Dense(K)(x) + pos * jnp.arange(K, dtype=jnp.float32)


def test_mirroring_tta_is_the_mean_over_flips():
    """Reference: the mean over the four flips of a 2D input of softmax(apply(flip(x)))
    flipped back, written out with numpy flips."""
    model = _Tilted()
    x = np.random.default_rng(5).normal(size=(2, 6, 5, C)).astype(np.float32)
    params = model.init(jax.random.key(0), x)["params"]
    plain = lambda v: np.asarray(jax.nn.softmax(model.apply({"params": params}, v), -1))
    expected = np.mean(
        [np.flip(plain(np.flip(x, ax)), ax) for ax in [(), (1,), (2,), (1, 2)]], axis=0
    )
    got = np.asarray(make_predict_fn(model, (0, 1))(params, x))
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    assert not np.allclose(got, plain(x), atol=1e-3)  # the flips matter for this model
    np.testing.assert_allclose(np.asarray(make_predict_fn(model)(params, x)), plain(x), rtol=1e-6)


@pytest.mark.parametrize("mirror", [(0, 1), ()])
def test_rot90_tta_averages_the_plane_symmetries(mirror):
    """Reference, by numpy indexing: with both plane axes mirrored, the mean over the
    plane's 8 symmetries, enumerated as (transpose or not) then flips and each inverted as
    flips then (transpose or not); with no mirroring, the mean over np.rot90's four turns.
    Either way each output is mapped back before averaging."""
    model = _Tilted()
    x = np.random.default_rng(6).normal(size=(2, 6, 6, C)).astype(np.float32)
    params = model.init(jax.random.key(0), x)["params"]
    plain = lambda v: np.asarray(jax.nn.softmax(model.apply({"params": params}, v), -1))
    transpose = lambda v, t: v.transpose(0, 2, 1, 3) if t else v
    if mirror:
        flips = [(), (1,), (2,), (1, 2)]
        expected = [
            transpose(np.flip(plain(np.flip(transpose(x, t), f)), f), t)
            for t in (False, True)
            for f in flips
        ]
    else:
        expected = [np.rot90(plain(np.rot90(x, k, (1, 2))), -k, (1, 2)) for k in range(4)]
    tta = inference.TTA(mirror_axes=mirror, rot90_plane=(0, 1))
    assert len(tta.transforms()) == len(expected)
    got = np.asarray(make_predict_fn(model, tta)(params, x))
    np.testing.assert_allclose(got, np.mean(expected, axis=0), rtol=1e-5, atol=1e-6)
    mirrored_only = np.asarray(make_predict_fn(model, mirror)(params, x))
    assert not np.allclose(got, mirrored_only, atol=1e-3)  # the rotations matter here
    logits = inference.window_logits(model, params, tta)(x)
    assert logits.shape == (len(expected), *x.shape[:-1], K)


def test_full_plane_tta_makes_any_model_rotation_equivariant():
    """Averaging over the plane's whole symmetry group makes the prediction commute with a
    quarter turn of the input (np.rot90), which no single pass of _Tilted does."""
    model = _Tilted()
    x = np.random.default_rng(7).normal(size=(1, 6, 6, C)).astype(np.float32)
    params = model.init(jax.random.key(0), x)["params"]
    turn = lambda v: np.rot90(v, 1, (1, 2))
    for tta, equivariant in (((0, 1), False), (inference.TTA((0, 1), (0, 1)), True)):
        predict = lambda v, tta=tta: np.asarray(make_predict_fn(model, tta)(params, v))
        close = np.allclose(predict(turn(x)), turn(predict(x)), atol=1e-5)
        assert close == equivariant


def test_rot90_tta_needs_a_square_plane():
    config = base_config()
    config.data.patch_size = (32, 48)
    config.eval.tta_rot90 = True
    with pytest.raises(ConfigError, match="eval.tta_rot90"):
        inference.tta_from_config(config, 2)
    config.data.patch_size = (32, 32)
    assert inference.tta_from_config(config, 2) == inference.TTA((0, 1), (0, 1))
    assert inference.tta_from_config(config, 2, enabled=False) == inference.TTA()


def test_ensemble_predictor_averages():
    a = lambda w: np.full((*w.shape[:-1], K), 0.2, np.float32)
    b = lambda w: np.full((*w.shape[:-1], K), 0.6, np.float32)
    out = ensemble_predictor([a, b])(np.zeros((1, 4, 4, C), np.float32))
    np.testing.assert_allclose(out, 0.4)
    with pytest.raises(ConfigError):
        ensemble_predictor([])


def test_jitted_predict_fn_traces_once():
    traces = []

    @jax.jit
    def fn(x):
        traces.append(x.shape)
        return _voxelwise(x)

    image = np.random.default_rng(3).normal(size=(17, 15, 11, C)).astype(np.float32)
    sliding_window_predict(image, fn, patch_size=(6, 6, 6), num_classes=K, batch_size=4)
    assert len(traces) == 1


def test_errors():
    image = np.zeros((8, 8, 1), np.float32)
    ok = dict(patch_size=(4, 4), num_classes=2)
    fn = lambda b: np.full((*b.shape[:-1], 2), 0.5, np.float32)
    with pytest.raises(ConfigError, match="overlap"):
        sliding_window_predict(image, fn, overlap=1.0, **ok)
    with pytest.raises(ConfigError, match="mode"):
        sliding_window_predict(image, fn, mode="triangle", **ok)
    with pytest.raises(ConfigError, match="batch_size"):
        sliding_window_predict(image, fn, batch_size=0, **ok)
    with pytest.raises(JaxsegError, match="spatial axes"):
        sliding_window_predict(image[..., None], fn, **ok)
    with pytest.raises(JaxsegError, match="expected"):
        sliding_window_predict(image, fn, patch_size=(4, 4), num_classes=3)


def test_peak_host_memory_matches_documented_formula():
    import tracemalloc

    shape, patch, c, k, b = (40, 36, 30), (16, 16, 16), 1, 14, 4
    image = np.random.default_rng(4).random((*shape, c), dtype=np.float32)

    def fn(x):  # numpy, so tracemalloc sees the outputs too
        out = np.empty((*x.shape[:-1], k), np.float32)
        out[...] = x
        return out

    tracemalloc.start()
    try:
        sliding_window_predict(image, fn, patch_size=patch, num_classes=k, batch_size=b)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    v, p = np.prod(shape), np.prod(patch)
    # The input was allocated before tracing started, so its 4*V*C is not in `peak`.
    bound = 4 * v * (k + 1) + 4 * b * p * (c + k) + 4 * p * (k + 1)
    assert peak <= 1.05 * bound, (peak, bound)
