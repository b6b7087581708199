"""On-device augmentation against independent references on the same transform.

Geometry is checked against scipy.ndimage (affine_transform, map_coordinates,
gaussian_filter1d) and numpy (flip, rot90, roll, FFT); intensity transforms against their
formulas written out in numpy (the MRI artefacts, against torchio, are in
tests/test_augment_mri.py). Runtime ~60-90 s on the shared 2-core machine (mostly XLA
compile time); each test compiles a few small functions.
"""

import itertools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from scipy import ndimage

from jaxseg import augment
from jaxseg.augment.stages import _stages
from jaxseg.defaults import base_config
from jaxseg.errors import ConfigError

PROBS = [k for k in base_config().augment.keys() if k.endswith("_prob")]


def _only(**kw):
    """The default augment config with every transform off, then `kw` applied."""
    c = base_config().augment
    for k in PROBS:
        c[k] = 0.0
    c.update(kw)
    return c


def _all_on(**kw):
    c = base_config().augment
    for k in PROBS:
        c[k] = 1.0
    c.rot90_prob = 0.5
    c.update(kw)
    return c


# ----------------------------------------------------------------------------- flips, rot90


def test_flip_prob_one_flips_every_axis_2d_and_3d():
    rng = np.random.default_rng(0)
    for shape in ((2, 6, 5), (2, 4, 5, 3)):
        label = rng.integers(0, 4, shape).astype(np.int32)
        image = rng.normal(size=shape + (2,)).astype(np.float32)
        x, y = augment.augment_batch(jax.random.key(0), image, label, _only(flip_prob=1.0))
        axes = tuple(range(1, len(shape)))
        np.testing.assert_array_equal(np.asarray(y), np.flip(label, axes))
        np.testing.assert_allclose(np.asarray(x), np.flip(image, axes), rtol=1e-6)


def test_flips_keep_image_and_label_aligned_and_vary_per_example():
    rng = np.random.default_rng(1)
    label = rng.integers(0, 5, (16, 7, 9)).astype(np.int32)
    image = label[..., None].astype(np.float32)
    x, y = augment.augment_batch(jax.random.key(3), image, label, _only(flip_prob=0.5))
    np.testing.assert_array_equal(np.asarray(x)[..., 0], np.asarray(y))
    flipped = [not np.array_equal(np.asarray(y)[i], label[i]) for i in range(16)]
    assert 0 < sum(flipped) < 16  # independent draws per example


def test_identity_when_disabled():
    rng = np.random.default_rng(2)
    image = rng.normal(size=(3, 8, 8, 1)).astype(np.float32)
    label = rng.integers(0, 3, (3, 8, 8)).astype(np.int32)
    x, y = augment.augment_batch(jax.random.key(0), image, label, _only())
    np.testing.assert_array_equal(np.asarray(x), image)
    np.testing.assert_array_equal(np.asarray(y), label)


def test_rot90_matches_numpy_for_every_k_and_plane():
    x = np.arange(4 * 4 * 4).reshape(4, 4, 4)
    for k in range(4):
        for plane in [(0, 1), (0, 2), (1, 2)]:
            np.testing.assert_array_equal(
                np.asarray(augment.rot90(jnp.asarray(x), k, plane)), np.rot90(x, k, plane)
            )


def test_rot90_only_in_square_planes():
    assert augment.rot90_planes((4, 4, 5)) == [(0, 1)]
    assert augment.rot90_planes((6, 5)) == []
    rng = np.random.default_rng(3)
    label = rng.integers(0, 9, (8, 4, 4, 5)).astype(np.int32)
    image = label[..., None].astype(np.float32)
    x, y = augment.augment_batch(jax.random.key(1), image, label, _only(rot90_prob=1.0))
    y = np.asarray(y)
    np.testing.assert_array_equal(np.asarray(x)[..., 0], y)
    ks = []
    for i in range(8):
        match = [k for k in (1, 2, 3) if np.array_equal(y[i], np.rot90(label[i], k, (0, 1)))]
        assert match, f"example {i} is not a rotation in the (x, y) plane"
        ks.append(match[0])
    assert len(set(ks)) > 1


# ----------------------------------------------------------------------------- geometry vs scipy


def _scipy_affine(image, label, matrix, pad_mode):
    """scipy.ndimage.affine_transform about the centre, same convention as augment."""
    shape = np.array(label.shape)
    centre = (shape - 1) / 2.0
    offset = centre - matrix @ centre
    mode = "grid-constant" if pad_mode == "constant" else "nearest"
    x = np.stack(
        [
            ndimage.affine_transform(
                image[..., ch].astype(np.float64), matrix, offset, order=1, mode=mode, cval=0.0
            )
            for ch in range(image.shape[-1])
        ],
        -1,
    )
    y = ndimage.affine_transform(label, matrix, offset, order=0, mode=mode, cval=0)
    return x, y


@pytest.mark.parametrize(
    "dims,pad_mode", [(2, "constant"), (3, "constant"), (2, "nearest"), (3, "nearest")]
)
def test_rotation_and_scaling_match_scipy_affine_transform(dims, pad_mode):
    rng = np.random.default_rng(dims)
    shape = (23, 18) if dims == 2 else (13, 11, 9)
    image = rng.normal(size=shape + (2,)).astype(np.float32)
    label = rng.integers(0, 4, shape).astype(np.int32)
    angles = np.array([0.7]) if dims == 2 else np.array([0.3, -0.4, 0.9])
    zoom = np.array([1.3, 0.8] if dims == 2 else [1.2, 0.9, 1.1])
    matrix = np.asarray(augment.sampling_matrix(angles, zoom, dims), np.float64)
    coords = augment.spatial_coordinates(shape, matrix)
    x = np.asarray(augment.resample_linear(jnp.asarray(image), coords, pad_mode))
    y = np.asarray(augment.resample_nearest(jnp.asarray(label), coords, pad_mode))
    rx, ry = _scipy_affine(image, label, matrix, pad_mode)
    np.testing.assert_allclose(x, rx, atol=2e-5)
    # nearest: a coordinate within float32 round-off of a half-voxel may round either way
    assert np.mean(y != ry) < 1e-3
    # the matrix itself is a rotation times 1/zoom
    r = matrix * zoom[None, :]
    np.testing.assert_allclose(r @ r.T, np.eye(dims), atol=1e-6)


def test_spatial_stage_in_batch_equals_scipy_on_its_own_parameters():
    """augment_batch with rotation+scale on: each example is *some* affine_transform about the
    centre; recover it from the drawn parameters and compare."""
    rng = np.random.default_rng(7)
    shape = (4, 20, 20)
    image = rng.normal(size=shape + (1,)).astype(np.float32)
    label = rng.integers(0, 3, shape).astype(np.int32)
    cfg = _only(rotation_prob=1.0, scale_prob=1.0)
    x, y = augment.augment_batch(jax.random.key(5), image, label, cfg)
    resolved = augment.resolve_config(cfg)
    stage = _stages(resolved, shape[1:], 1)[0]
    keys = jax.random.split(jax.random.key(5), 4)
    draws = jax.vmap(lambda k: jax.random.uniform(k, (stage.n_draws,)))(keys)
    for i in range(4):
        fired, p = stage.decide(draws[i], keys[i])
        assert bool(fired)
        m = np.asarray(augment.sampling_matrix(p["angles"], p["zoom"], 2), np.float64)
        rx, ry = _scipy_affine(image[i], label[i], m, "constant")
        np.testing.assert_allclose(np.asarray(x[i]), rx, atol=2e-5)
        assert np.mean(np.asarray(y[i]) != ry) < 1e-2
        assert abs(float(p["angles"][0])) <= np.pi and 0.7 <= float(p["zoom"][0]) <= 1.4


@pytest.mark.parametrize("dims", [2, 3])
def test_elastic_field_and_warp_match_scipy(dims):
    shape = (40, 33) if dims == 2 else (20, 17, 12)
    sigma, mag = 6.0, 3.5
    key = jax.random.key(11)
    disp = np.asarray(
        jax.jit(augment.elastic_displacement, static_argnums=(1, 2))(key, shape, sigma, mag)
    )
    assert disp.shape == shape + (dims,)
    # reference field: same noise, scipy Gaussian (reflect), scipy linear upsampling
    h, coarse = augment.elastic_coarse_shape(shape, sigma)
    noise = np.asarray(jax.random.normal(key, (dims, *coarse)), np.float64)
    ref = []
    grid = np.meshgrid(*[np.arange(n) / h for n in shape], indexing="ij")
    for comp in noise:
        for a in range(dims):
            comp = ndimage.gaussian_filter1d(comp, sigma / h, axis=a, mode="reflect", truncate=3.0)
        ref.append(ndimage.map_coordinates(comp, grid, order=1, mode="nearest"))
    ref = np.stack(ref, -1)
    ref *= mag / np.abs(ref).max()
    np.testing.assert_allclose(disp, ref, atol=1e-4)
    assert np.isclose(np.abs(disp).max(), mag, rtol=1e-5)
    # warp = map_coordinates at identity grid + displacement
    rng = np.random.default_rng(dims)
    image = rng.normal(size=shape + (1,)).astype(np.float32)
    label = rng.integers(0, 5, shape).astype(np.int32)
    coords = jax.jit(augment.spatial_coordinates, static_argnums=0)(shape, np.eye(dims), disp)
    x = np.asarray(jax.jit(augment.resample_linear)(image, coords))
    y = np.asarray(jax.jit(augment.resample_nearest)(label, coords))
    c = np.moveaxis(np.asarray(coords, np.float64), -1, 0)
    np.testing.assert_allclose(
        x[..., 0],
        ndimage.map_coordinates(image[..., 0], c, order=1, mode="grid-constant"),
        atol=2e-5,
    )
    assert np.mean(y != ndimage.map_coordinates(label, c, order=0, mode="grid-constant")) < 1e-3


def test_spatial_labels_keep_their_values_and_follow_the_image():
    rng = np.random.default_rng(4)
    # blocky labels; image = label so nearest and linear agree away from edges
    label = np.kron(rng.integers(0, 4, (6, 8, 8)), np.ones((1, 4, 4))).astype(np.int32)
    label[label == 2] = 7  # a sparse label set {0, 1, 3, 7}
    image = label[..., None].astype(np.float32)
    cfg = _only(rotation_prob=1.0, scale_prob=1.0, elastic_prob=1.0)
    x, y = augment.augment_batch(jax.random.key(2), image, label, cfg)
    x, y = np.asarray(x)[..., 0], np.asarray(y)
    assert set(np.unique(y)) <= {0, 1, 3, 7}
    assert not np.array_equal(y, label)
    # where the linear image is an exact label value (interior of a block), they agree
    exact = np.isin(x, [0, 1, 3, 7]) & (np.abs(x - np.round(x)) < 1e-4)
    assert exact.mean() > 0.5
    assert np.mean(x[exact] == y[exact]) > 0.98


# ----------------------------------------------------------------------------- intensity


def test_brightness_contrast_gamma_formulas():
    rng = np.random.default_rng(5)
    x = rng.normal(size=(9, 7, 2)).astype(np.float32)
    a, b = np.array([1.2, 0.8], np.float32), np.array([0.1, -0.05], np.float32)
    np.testing.assert_allclose(np.asarray(augment.adjust_brightness(x, a, b)), x * a + b, rtol=1e-6)

    f = np.array([1.25, 0.75], np.float32)
    mean, lo, hi = x.mean((0, 1)), x.min((0, 1)), x.max((0, 1))
    want = np.clip((x - mean) * f + mean, lo, hi)
    np.testing.assert_allclose(np.asarray(augment.adjust_contrast(x, f)), want, atol=1e-5)

    g = np.array([0.7, 1.5], np.float32)
    unit = (x - lo) / (hi - lo)
    raw = unit**g * (hi - lo) + lo
    np.testing.assert_allclose(
        np.asarray(augment.adjust_gamma(x, g, retain_stats=False)), raw, atol=1e-5
    )
    kept = (raw - raw.mean((0, 1))) / raw.std((0, 1)) * x.std((0, 1)) + mean
    out = np.asarray(augment.adjust_gamma(x, g, retain_stats=True))
    np.testing.assert_allclose(out, kept, atol=1e-4)
    np.testing.assert_allclose(out.mean((0, 1)), mean, atol=1e-5)


def test_bias_field_formula_and_smoothness():
    shape = (16, 12)
    coeffs = np.array([0.1, -0.2, 0.3, 0.05, -0.1, 0.2], np.float32)  # order 2 in 2D
    field = np.asarray(augment.bias_field(jnp.asarray(coeffs), shape, 2))
    xs, ys = np.meshgrid(np.linspace(-1, 1, 16), np.linspace(-1, 1, 12), indexing="ij")
    # monomials x^i y^j, i + j <= 2, in (i, j) lexicographic order
    terms = [np.ones_like(xs), ys, ys**2, xs, xs * ys, xs**2]
    np.testing.assert_allclose(field, np.exp(sum(c * t for c, t in zip(coeffs, terms))), rtol=1e-5)
    # through augment_batch: output / input is such a field, positive and bounded
    img = np.full((2, 16, 12, 1), 2.0, np.float32)
    x, _ = augment.augment_batch(
        jax.random.key(0),
        img,
        np.zeros((2, 16, 12), np.int32),
        _only(bias_field_prob=1.0, bias_field_magnitude=0.2),
    )
    ratio = np.asarray(x)[..., 0] / 2.0
    n_terms = 10  # order 3 in 2D
    assert np.all(ratio > np.exp(-0.2 * n_terms)) and np.all(ratio < np.exp(0.2 * n_terms))
    assert not np.allclose(ratio[0], ratio[1])


def _lowres_reference(x, axis, m):
    """Numpy: nearest downsampling to m corner-aligned samples, linear upsampling back."""
    n = x.shape[axis]
    pick = np.round(np.linspace(0, n - 1, m)).astype(int) if m > 1 else np.array([0])
    low = np.take(x, pick, axis=axis)
    if m == 1:
        return np.repeat(low, n, axis=axis)
    u = np.linspace(0, m - 1, n)
    return np.apply_along_axis(lambda v: np.interp(u, np.arange(m), v), axis, low)


def test_simulate_low_resolution_matches_numpy():
    rng = np.random.default_rng(6)
    x = rng.normal(size=(20, 17, 9, 1)).astype(np.float32)
    zoom = np.array([0.5, 0.62, 1.0], np.float32)
    out = np.asarray(
        augment.simulate_low_resolution(
            jnp.asarray(x), jnp.asarray(zoom), jnp.array([True, True, False])
        )
    )
    want = _lowres_reference(_lowres_reference(x.astype(np.float64), 0, 10), 1, 11)
    np.testing.assert_allclose(out, want, atol=1e-5)
    untouched = augment.simulate_low_resolution(
        jnp.asarray(x), jnp.asarray(zoom), jnp.array([False, False, True])
    )
    np.testing.assert_array_equal(np.asarray(untouched), x)  # zoom 1 on the only applied axis


def test_ghosting_is_shifted_copies():
    rng = np.random.default_rng(8)
    x = rng.normal(size=(16, 10, 2)).astype(np.float32)
    a = 0.3
    out = np.asarray(augment.ghosting(jnp.asarray(x), 0, 4.0, a))
    want = (1 - a) * x + a / 2 * (np.roll(x, 4, 0) + np.roll(x, -4, 0))
    np.testing.assert_allclose(out, want, atol=1e-5)
    # fractional shift: numpy complex FFT phase shift, averaged over +-d
    d = 2.6
    f = np.fft.fftfreq(10)[None, :, None]
    shift = lambda s: np.real(
        np.fft.ifft(np.fft.fft(x, axis=1) * np.exp(-2j * np.pi * f * s), axis=1)
    )  # noqa: E731
    want = (1 - a) * x + a / 2 * (shift(d) + shift(-d))
    np.testing.assert_allclose(
        np.asarray(augment.ghosting(jnp.asarray(x), 1, d, a)), want, atol=1e-5
    )
    np.testing.assert_allclose(out.mean((0, 1)), x.mean((0, 1)), atol=1e-5)  # k-space centre kept


def test_noise_std_is_bounded():
    x = np.zeros((4, 64, 64, 1), np.float32)
    y = np.zeros((4, 64, 64), np.int32)
    out, _ = augment.augment_batch(jax.random.key(1), x, y, _only(noise_prob=1.0, noise_std=0.2))
    stds = np.asarray(out).std((1, 2, 3))
    assert np.all(stds <= 0.2 * 1.05) and np.all(stds > 0) and len(set(np.round(stds, 4))) == 4


# ----------------------------------------------------------------------------- the whole pipeline


@pytest.mark.slow  # ~20-25 s each on the loaded 2-core machine (compiles the whole pipeline)
@pytest.mark.parametrize("shape", [(4, 24, 20), (2, 12, 12, 10)])
def test_all_transforms_deterministic_independent_and_shape_static(shape):
    rng = np.random.default_rng(9)
    image = rng.normal(size=shape + (2,)).astype(np.float32)
    label = rng.integers(0, 3, shape).astype(np.int32)
    fn = jax.jit(lambda k, x, y: augment.augment_batch(k, x, y, _all_on()))
    x1, y1 = fn(jax.random.key(4), image, label)
    x2, y2 = fn(jax.random.key(4), image, label)
    assert x1.shape == image.shape and x1.dtype == jnp.float32
    assert y1.shape == label.shape and y1.dtype == jnp.int32
    assert np.all(np.isfinite(np.asarray(x1)))
    np.testing.assert_array_equal(np.asarray(x1), np.asarray(x2))
    np.testing.assert_array_equal(np.asarray(y1), np.asarray(y2))
    assert set(np.unique(np.asarray(y1))) <= {0, 1, 2}
    x3, _ = fn(jax.random.key(5), image, label)
    assert not np.allclose(np.asarray(x1), np.asarray(x3))
    # example i depends only on (key, i) and its own arrays: change example 0 only
    image2, label2 = image.copy(), label.copy()
    image2[0], label2[0] = -image[0], (label[0] + 1) % 3
    x4, y4 = fn(jax.random.key(4), image2, label2)
    np.testing.assert_allclose(np.asarray(x4)[1:], np.asarray(x1)[1:], atol=1e-6)
    np.testing.assert_array_equal(np.asarray(y4)[1:], np.asarray(y1)[1:])
    # examples with the same input get different augmentations
    same = np.broadcast_to(image[:1], image.shape).copy()
    x5, _ = fn(jax.random.key(4), same, np.broadcast_to(label[:1], label.shape).copy())
    assert not np.allclose(np.asarray(x5)[0], np.asarray(x5)[1])


def test_config_errors_name_the_key():
    img, lab = np.zeros((1, 8, 8, 1), np.float32), np.zeros((1, 8, 8), np.int32)
    with pytest.raises(ConfigError, match="augment.*intensity_scale"):
        augment.augment_batch(jax.random.key(0), img, lab, {"intensity_scale": 0.1})
    with pytest.raises(ConfigError, match="augment.gamma_prob"):
        augment.augment_batch(jax.random.key(0), img, lab, {"gamma_prob": 1.5})
    with pytest.raises(ConfigError, match="augment.scale_range"):
        augment.augment_batch(jax.random.key(0), img, lab, {"scale_range": (1.2, 0.8)})
    with pytest.raises(ConfigError, match="augment.pad_mode"):
        augment.augment_batch(jax.random.key(0), img, lab, {"pad_mode": "wrap"})
    with pytest.raises(ConfigError, match="image"):
        augment.augment_batch(jax.random.key(0), img, lab[0], {})
    # a partial dict is filled from jaxseg.defaults
    assert augment.resolve_config(ml_collections.ConfigDict({"flip_prob": 0.0})).gamma_prob == 0.3


def test_defaults_are_nnunet_like():
    c = augment.resolve_config(base_config().augment)
    assert c.flip_prob == 0.5 and c.rotation_prob == 0.2 and c.scale_prob == 0.2
    assert c.gamma_prob == 0.3 and c.lowres_prob == 0.25 and c.noise_prob == 0.1
    assert c.elastic_prob > 0  # on, and cheap (coarse field)
    assert list(itertools.chain(c.scale_range)) == [0.7, 1.4]
