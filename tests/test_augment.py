"""On-device augmentation against NumPy on the same transform."""

import jax
import ml_collections
import numpy as np

from jaxseg import augment


def _config(**kw):
    base = dict(flip_prob=0.5, intensity_scale=0.0, intensity_shift=0.0, noise_std=0.0)
    return ml_collections.ConfigDict({**base, **kw})


def test_flip_prob_one_flips_every_axis_2d_and_3d():
    rng = np.random.default_rng(0)
    for shape in ((2, 6, 5), (2, 4, 5, 3)):
        label = rng.integers(0, 4, shape).astype(np.int32)
        image = rng.normal(size=shape + (2,)).astype(np.float32)
        x, y = augment.augment_batch(jax.random.key(0), image, label, _config(flip_prob=1.0))
        axes = tuple(range(1, len(shape)))
        np.testing.assert_array_equal(np.asarray(y), np.flip(label, axes))
        np.testing.assert_allclose(np.asarray(x), np.flip(image, axes), rtol=1e-6)


def test_flips_keep_image_and_label_aligned_and_vary_per_example():
    rng = np.random.default_rng(1)
    label = rng.integers(0, 5, (16, 7, 9)).astype(np.int32)
    image = label[..., None].astype(np.float32)
    x, y = augment.augment_batch(jax.random.key(3), image, label, _config())
    np.testing.assert_array_equal(np.asarray(x)[..., 0], np.asarray(y))
    flipped = [not np.array_equal(np.asarray(y)[i], label[i]) for i in range(16)]
    assert 0 < sum(flipped) < 16  # independent draws per example


def test_identity_when_disabled():
    rng = np.random.default_rng(2)
    image = rng.normal(size=(3, 8, 8, 1)).astype(np.float32)
    label = rng.integers(0, 3, (3, 8, 8)).astype(np.int32)
    x, y = augment.augment_batch(jax.random.key(0), image, label, _config(flip_prob=0.0))
    np.testing.assert_array_equal(np.asarray(x), image)
    np.testing.assert_array_equal(np.asarray(y), label)


def test_intensity_is_affine_per_channel_within_range():
    image = np.stack([np.linspace(-1, 1, 64).reshape(8, 8)] * 2, -1)[None].astype(np.float32)
    x = np.asarray(augment.random_intensity(jax.random.key(5), image[0], 0.2, 0.3, 0.0))
    for c in range(2):
        a, b = np.polyfit(image[0, ..., c].ravel(), x[..., c].ravel(), 1)
        assert 0.8 <= a <= 1.2 and -0.3 <= b <= 0.3
        np.testing.assert_allclose(x[..., c], a * image[0, ..., c] + b, atol=1e-5)
