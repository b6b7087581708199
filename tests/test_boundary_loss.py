"""The boundary loss (Kervadec et al. 2019): host distance maps against scipy's EDT and a
brute-force search, the loss against a float64 numpy version, its weight ramp, and its
wiring (pipeline -> batch -> train step)."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import ndimage

from jaxseg.data.distance_maps import signed_distance_maps
from jaxseg.defaults import base_config
from jaxseg.errors import ConfigError
from jaxseg.losses import LossConfig, boundary_loss, segmentation_loss


def _edt_signed(mask, sampling=None):
    """Kervadec's one_hot2dist for one class, from scipy's EDT."""
    if not mask.any() or mask.all():
        return np.zeros(mask.shape)
    neg = ~mask
    return (
        ndimage.distance_transform_edt(neg, sampling=sampling) * neg
        - (ndimage.distance_transform_edt(mask, sampling=sampling) - 1) * mask
    )


def _brute_signed(mask, spacing):
    """The same from all pairs: outside, the distance to the nearest class voxel; inside,
    minus (the distance to the nearest non-class voxel - 1)."""
    pts = np.argwhere(np.ones(mask.shape, bool)) * np.asarray(spacing, np.float64)
    flat = mask.reshape(-1)
    d = np.sqrt(((pts[:, None] - pts[None]) ** 2).sum(-1))
    to_in = np.where(flat[None], d, np.inf).min(axis=1)
    to_out = np.where(~flat[None], d, np.inf).min(axis=1)
    return np.where(flat, -(to_out - 1), to_in).reshape(mask.shape)


@pytest.mark.parametrize("shape", [(9, 11), (6, 7, 5)])
@pytest.mark.parametrize("spacing", [None, "aniso"])
def test_distance_maps_match_edt_and_brute_force(shape, spacing):
    rng = np.random.default_rng(0)
    spacing = None if spacing is None else tuple(rng.uniform(0.5, 2.5, len(shape)))
    label = rng.integers(0, 3, size=shape).astype(np.int32)
    label[label == 2] = 0  # class 2 absent: its map is 0
    label[0, 0] = 3
    maps = signed_distance_maps(label, 4, spacing)
    assert maps.shape == (*shape, 3) and maps.dtype == np.float32
    unit = spacing or (1.0,) * len(shape)
    for k in (1, 2, 3):
        ref = _edt_signed(label == k, spacing)
        np.testing.assert_allclose(maps[..., k - 1], ref, rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(
            maps[..., k - 1], _brute_signed(label == k, unit) if k != 2 else 0, atol=1e-5
        )
    assert not maps[..., 1].any()
    full = signed_distance_maps(np.ones(shape, np.int32), 2)  # no boundary in the map
    assert not full.any()


def _np_boundary(logits, dist):
    x = np.asarray(logits, np.float64)
    e = np.exp(x - x.max(-1, keepdims=True))
    p = e / e.sum(-1, keepdims=True)
    return float(np.mean(p[..., 1:] * dist))


@pytest.mark.parametrize("shape", [(2, 8, 7), (2, 5, 6, 4)])
def test_boundary_loss_matches_numpy(shape):
    rng = np.random.default_rng(1)
    k = 3
    logits = (rng.normal(size=(*shape, k)) * 2).astype(np.float32)
    labels = rng.integers(0, k - 1, size=shape).astype(np.int32)  # class 2 absent
    dist = np.stack([signed_distance_maps(lab, k) for lab in labels])
    got = float(jax.jit(boundary_loss)(logits, dist))
    np.testing.assert_allclose(got, _np_boundary(logits, dist), rtol=1e-5, atol=1e-7)
    # All foreground probability inside its class gives the least (negative) loss.
    perfect = 30.0 * np.asarray(jax.nn.one_hot(labels, k))
    assert float(boundary_loss(perfect, dist)) < got
    assert float(boundary_loss(perfect, dist)) <= 1e-6  # inner boundary voxels are 0


def _config(**loss):
    c = base_config()
    c.loss.update(loss)
    return c


def test_boundary_weight_ramps_linearly():
    cfg = LossConfig.from_config(_config(terms="dice:1,boundary:0.5", boundary_ramp_steps=100).loss)
    assert cfg.needs_distance_maps
    assert cfg.part_names == ("dice_loss", "boundary", "boundary_weight")
    rng = np.random.default_rng(2)
    logits = rng.normal(size=(2, 6, 6, 2)).astype(np.float32)
    labels = rng.integers(0, 2, size=(2, 6, 6)).astype(np.int32)
    dist = np.stack([signed_distance_maps(lab, 2) for lab in labels])
    fn = jax.jit(lambda s: segmentation_loss(logits, labels, cfg, distance_maps=dist, step=s))
    for step, weight in [(0, 0.0), (25, 0.125), (100, 0.5), (1000, 0.5)]:
        loss, parts = fn(step)
        assert float(parts["boundary_weight"]) == pytest.approx(weight)
        np.testing.assert_allclose(
            float(loss), float(parts["dice_loss"]) + weight * float(parts["boundary"]), rtol=1e-6
        )
    no_ramp = LossConfig.from_config(_config(terms="boundary:2", boundary_ramp_steps=0).loss)
    _, parts = segmentation_loss(logits, labels, no_ramp, distance_maps=dist, step=0)
    assert float(parts["boundary_weight"]) == 2.0
    with pytest.raises(ValueError, match="distance_maps"):
        segmentation_loss(logits, labels, no_ramp)


def test_pipeline_adds_distance_maps_only_when_asked(phantom_2d):
    from jaxseg.data import pipeline
    from jaxseg.data.dataset import load_dataset

    spec = load_dataset(phantom_2d)
    kw = dict(patch_size=(16, 16), batch_size=2, seed=0, num_threads=1, prefetch=1)
    plain = pipeline.train_batches(spec, spec.training, **kw)
    with_maps = pipeline.train_batches(spec, spec.training, distance_maps=True, **kw)
    try:
        a, b = next(plain), next(with_maps)
    finally:
        plain.close()
        with_maps.close()
    assert set(a) == {"image", "label"}
    np.testing.assert_array_equal(a["label"], b["label"])
    assert b["distance_maps"].shape == (2, 16, 16, spec.num_classes - 1)
    for lab, dist in zip(b["label"], b["distance_maps"]):
        for k in range(1, spec.num_classes):
            np.testing.assert_allclose(dist[..., k - 1], _edt_signed(lab == k), atol=1e-5)


def _step_config(**loss):
    c = _config(**loss)
    for key in list(c.augment):  # no augmentation at all: a fast compile
        if key.endswith("_prob"):
            c.augment[key] = 0.0
    c.train.warmup_steps = 0
    return c


class _OneConv(nn.Module):
    """The smallest model the train step accepts: it compiles in a moment."""

    @nn.compact
    def __call__(self, x, train=False):
        return nn.Conv(3, (3, 3))(x)


def test_train_step_uses_the_boundary_term():
    from jaxseg.training import optimizer as optimizer_lib
    from jaxseg.training.state import init_train_state
    from jaxseg.training.steps import make_train_step

    config = _step_config(terms="dice:1,ce:1,boundary:1", boundary_ramp_steps=4)
    config.train.grad_accum_steps = 2
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, (4, 16, 16)).astype(np.int32)
    batch = {
        "image": jnp.asarray(rng.normal(size=(4, 16, 16, 1)), jnp.float32),
        "label": jnp.asarray(labels),
        "distance_maps": jnp.asarray(np.stack([signed_distance_maps(x, 3) for x in labels])),
    }
    model = _OneConv()
    optimizer = optimizer_lib.make_optimizer(config.train)
    state = init_train_state(model, optimizer, jax.random.key(0), jnp.zeros((1, 16, 16, 1)))
    state = state.replace(step=jnp.asarray(2, state.step.dtype))
    _, metrics = jax.jit(make_train_step(model, optimizer, config))(state, batch, jax.random.key(1))
    assert float(metrics["boundary_weight"]) == pytest.approx(0.5)  # step 2 of a 4-step ramp
    parts = float(metrics["dice_loss"]) + float(metrics["ce"])
    expected = parts + 0.5 * float(metrics["boundary"])
    assert float(metrics["loss"]) == pytest.approx(expected, rel=1e-5)
    assert bool(metrics["finite"])

    # With spatial augmentation the maps move with the labels (see the test below).
    moving = _step_config(terms="dice:1,boundary:1")
    moving.augment.flip_prob = 0.5
    _, metrics = jax.jit(make_train_step(model, optimizer, moving))(state, batch, jax.random.key(1))
    assert bool(metrics["finite"])
    with pytest.raises(ConfigError, match="valid terms"):
        make_train_step(model, optimizer, _step_config(terms="dice,hd"))


def _geometric_only(**on):
    from jaxseg.defaults import base_config

    c = base_config().augment
    for key in list(c.keys()):
        if key.endswith("_prob"):
            c[key] = 0.0
    for key, value in on.items():
        c[key] = value
    return c


def test_distance_maps_move_with_the_labels_under_augmentation():
    from jaxseg import augment

    rng = np.random.default_rng(3)
    labels = np.zeros((4, 24, 20), np.int32)
    for b in range(4):  # a blob per example at a random place: flips and turns matter
        cx, cy = rng.integers(6, 14, 2)
        labels[b, cx - 4 : cx + 4, cy - 3 : cy + 5] = 1 + b % 2
    dist = np.stack([signed_distance_maps(x, 3) for x in labels])
    image = rng.normal(size=(4, 24, 20, 1)).astype(np.float32)
    key = jax.random.key(5)

    # Flips and rot90 permute voxels: the moved maps ARE the maps of the moved labels.
    cfg = _geometric_only(flip_prob=0.7)
    _, new_labels, new_dist = augment.augment_batch(key, image, labels, cfg, fields=dist)
    expected = np.stack([signed_distance_maps(np.asarray(x), 3) for x in new_labels])
    np.testing.assert_allclose(np.asarray(new_dist), expected, atol=1e-5)
    assert not np.array_equal(np.asarray(new_labels), labels)  # something did move

    # A rotation interpolates: the sign of each class's map still agrees with the moved
    # labels away from the boundary (inside: negative, outside: positive).
    cfg = _geometric_only(rotation_prob=1.0)
    _, rot_labels, rot_dist = augment.augment_batch(key, image, labels, cfg, fields=dist)
    rot_labels, rot_dist = np.asarray(rot_labels), np.asarray(rot_dist)
    for k in (1, 2):  # channel k - 1 is class k's map
        phi, inside = rot_dist[..., k - 1], rot_labels == k
        far = np.abs(phi) > 1.5
        assert far.sum() > 100 and np.all((phi[far] < 0) == inside[far])

    # Intensity stages leave the maps alone.
    cfg = _geometric_only(noise_prob=1.0, brightness_prob=1.0)
    _, _, same = augment.augment_batch(key, image, labels, cfg, fields=dist)
    np.testing.assert_array_equal(np.asarray(same), dist)
