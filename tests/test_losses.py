"""Tests for jaxseg.losses against an independent numpy implementation."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxseg.losses import dice_ce_loss


def _np_dice_ce(
    logits, labels, dice_weight=1.0, ce_weight=1.0, smooth=1e-5, include_background=False
):
    """Reference in float64 numpy, written independently of the module (explicit loops)."""
    logits = np.asarray(logits, np.float64)
    k = logits.shape[-1]
    flat = logits.reshape(-1, k)
    lab = np.asarray(labels).reshape(-1)
    m = flat.max(axis=1, keepdims=True)
    lse = m[:, 0] + np.log(np.exp(flat - m).sum(axis=1))
    ce = float(np.mean(lse - flat[np.arange(len(lab)), lab]))
    probs = np.exp(flat - lse[:, None])
    dices = []
    for c in range(0 if include_background else 1, k):
        p = probs[:, c]
        y = (lab == c).astype(np.float64)
        tp = (p * y).sum()
        fp = (p * (1 - y)).sum()
        fn = ((1 - p) * y).sum()
        dices.append((2 * tp + smooth) / (2 * tp + fp + fn + smooth))  # nnU-Net form
    dice_loss = 1.0 - float(np.mean(dices))
    return dice_weight * dice_loss + ce_weight * ce, dice_loss, ce


@pytest.mark.parametrize("shape", [(2, 7, 9), (2, 5, 6, 4)])
@pytest.mark.parametrize("include_background", [False, True])
def test_matches_numpy_reference(shape, include_background):
    rng = np.random.default_rng(0)
    k = 4
    logits = rng.normal(size=(*shape, k)).astype(np.float32) * 3
    labels = rng.integers(0, k, size=shape).astype(np.int32)
    loss, parts = jax.jit(
        lambda a, b: dice_ce_loss(
            a, b, dice_weight=0.7, ce_weight=1.3, include_background=include_background
        )
    )(logits, labels)
    ref, ref_dice, ref_ce = _np_dice_ce(
        logits, labels, 0.7, 1.3, include_background=include_background
    )
    np.testing.assert_allclose(float(parts["dice_loss"]), ref_dice, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(float(parts["ce"]), ref_ce, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(float(loss), ref, rtol=1e-5, atol=1e-6)
    assert loss.dtype == jnp.float32 and loss.shape == ()


def test_batch_dice_pools_over_batch():
    # Class 1 present only in case 0: batch Dice pools, so it equals the reference on the
    # whole batch and differs from the mean of per-case Dice.
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(2, 8, 8, 2)).astype(np.float32)
    labels = np.zeros((2, 8, 8), np.int32)
    labels[0, 2:5, 2:5] = 1
    _, parts = dice_ce_loss(logits, labels)
    _, ref_dice, _ = _np_dice_ce(logits, labels)
    np.testing.assert_allclose(float(parts["dice_loss"]), ref_dice, rtol=1e-5)
    per_case = np.mean([_np_dice_ce(logits[i : i + 1], labels[i : i + 1])[1] for i in range(2)])
    assert abs(per_case - ref_dice) > 1e-3


def test_bf16_logits_computed_in_f32():
    rng = np.random.default_rng(2)
    logits = jnp.asarray(rng.normal(size=(2, 6, 6, 3)), jnp.bfloat16)
    labels = rng.integers(0, 3, size=(2, 6, 6)).astype(np.int32)
    loss, parts = dice_ce_loss(logits, labels)
    assert loss.dtype == jnp.float32 and parts["ce"].dtype == jnp.float32
    ref, _, _ = _np_dice_ce(np.asarray(logits.astype(jnp.float32)), labels)
    np.testing.assert_allclose(float(loss), ref, rtol=1e-5)


def test_perfect_logits_give_zero_dice_loss():
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 3, size=(2, 6, 5, 4)).astype(np.int32)
    logits = 50.0 * jax.nn.one_hot(labels, 3)
    loss, parts = dice_ce_loss(logits, labels)
    assert float(parts["dice_loss"]) < 1e-6
    assert float(parts["ce"]) < 1e-6
    assert float(loss) < 1e-5


def test_gradient_finite_when_class_absent():
    rng = np.random.default_rng(4)
    labels = rng.integers(0, 2, size=(2, 6, 6)).astype(np.int32)  # class 2 absent
    logits = jnp.asarray(rng.normal(size=(2, 6, 6, 3)), jnp.float32)
    for smooth in (1e-5, 0.0):
        grad = jax.grad(lambda x, smooth=smooth: dice_ce_loss(x, labels, smooth=smooth)[0])(logits)
        assert np.all(np.isfinite(np.asarray(grad)))
        assert float(jnp.abs(grad).sum()) > 0
    # Also with confident, class-free logits (probabilities of class 2 underflow).
    confident = 80.0 * jax.nn.one_hot(labels, 3)
    grad = jax.grad(lambda x: dice_ce_loss(x, labels, smooth=0.0)[0])(confident)
    assert np.all(np.isfinite(np.asarray(grad)))


def test_bad_shapes_and_no_foreground_class():
    with pytest.raises(ValueError, match="trailing class axis"):
        dice_ce_loss(jnp.zeros((2, 4, 4, 3)), jnp.zeros((2, 4, 5), jnp.int32))
    with pytest.raises(ValueError, match="no class"):
        dice_ce_loss(jnp.zeros((2, 4, 4, 1)), jnp.zeros((2, 4, 4), jnp.int32))


# ---- loss.terms: focal, soft Jaccard, Tversky, combinations (float64 numpy references) ----


def _np_softmax(logits):
    x = np.asarray(logits, np.float64)
    x = x - x.max(axis=-1, keepdims=True)
    e = np.exp(x)
    return e / e.sum(axis=-1, keepdims=True)


def _np_focal(logits, labels, gamma):
    probs = _np_softmax(logits).reshape(-1, logits.shape[-1])
    lab = np.asarray(labels).reshape(-1)
    total = 0.0
    for i, c in enumerate(lab):  # explicit loop over voxels: -(1 - p_t)^gamma log p_t
        pt = probs[i, c]
        total += -((1.0 - pt) ** gamma) * np.log(pt)
    return total / lab.size


def _np_overlap_index(logits, labels, alpha, beta, smooth=1e-5):
    """1 - mean over foreground classes of (TP + s) / (TP + alpha FP + beta FN + s), with the
    soft counts summed over batch and space. alpha = beta = 1 is the Jaccard index."""
    probs = _np_softmax(logits).reshape(-1, logits.shape[-1])
    lab = np.asarray(labels).reshape(-1)
    values = []
    for c in range(1, logits.shape[-1]):
        p = probs[:, c]
        y = (lab == c).astype(np.float64)
        tp, fp, fn = (p * y).sum(), (p * (1 - y)).sum(), ((1 - p) * y).sum()
        values.append((tp + smooth) / (tp + alpha * fp + beta * fn + smooth))
    return 1.0 - float(np.mean(values))


def _random_case(shape, k, seed, absent=None):
    rng = np.random.default_rng(seed)
    logits = (rng.normal(size=(*shape, k)) * 3).astype(np.float32)
    labels = rng.integers(0, k, size=shape).astype(np.int32)
    if absent is not None:  # a class absent from the whole batch
        labels[labels == absent] = 0
    return logits, labels


SHAPES = [(2, 7, 9), (2, 5, 6, 4)]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("gamma", [0.0, 0.5, 2.0, 3.5])
def test_focal_matches_numpy(shape, gamma):
    from jaxseg.losses import focal_loss

    logits, labels = _random_case(shape, 4, 1, absent=2)
    got = jax.jit(lambda a, b: focal_loss(a, b, gamma))(logits, labels)
    np.testing.assert_allclose(float(got), _np_focal(logits, labels, gamma), rtol=2e-5, atol=1e-7)
    if gamma == 0.0:  # gamma = 0 is cross-entropy
        np.testing.assert_allclose(float(got), _np_dice_ce(logits, labels)[2], rtol=1e-5)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("absent", [None, 3])
def test_iou_and_tversky_match_numpy(shape, absent):
    from jaxseg.losses import iou_loss, tversky_loss

    logits, labels = _random_case(shape, 4, 2, absent=absent)
    got = float(jax.jit(iou_loss)(logits, labels))
    np.testing.assert_allclose(got, _np_overlap_index(logits, labels, 1, 1), rtol=1e-5, atol=1e-7)
    tversky = jax.jit(tversky_loss)  # alpha and beta traced: one compilation
    for alpha, beta in [(0.3, 0.7), (0.9, 0.1), (0.0, 1.0)]:
        got = float(tversky(logits, labels, alpha, beta))
        ref = _np_overlap_index(logits, labels, alpha, beta)
        np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-7)
    # Tversky with alpha = beta = 0.5 is the soft Dice loss.
    half = float(tversky_loss(logits, labels, 0.5, 0.5))
    np.testing.assert_allclose(half, _np_dice_ce(logits, labels)[1], rtol=1e-5)


def _loss_config(**loss):
    from jaxseg.defaults import base_config
    from jaxseg.losses import LossConfig

    c = base_config()
    c.loss.update(loss)
    return LossConfig.from_config(c.loss)


@pytest.mark.parametrize("shape", SHAPES)
def test_weighted_terms_match_numpy(shape):
    from jaxseg.losses import segmentation_loss

    logits, labels = _random_case(shape, 3, 3, absent=2)
    cfg = _loss_config(terms="dice:0.5,focal:2,iou:0.25,tversky:1.5,ce:0.1", focal_gamma=1.5)
    loss, parts = jax.jit(lambda a, b: segmentation_loss(a, b, cfg))(logits, labels)
    _, ref_dice, ref_ce = _np_dice_ce(logits, labels)
    ref = {
        "dice_loss": ref_dice,
        "focal": _np_focal(logits, labels, 1.5),
        "iou_loss": _np_overlap_index(logits, labels, 1, 1),
        "tversky_loss": _np_overlap_index(logits, labels, 0.3, 0.7),
        "ce": ref_ce,
    }
    assert set(parts) == set(ref)
    for k, v in ref.items():
        np.testing.assert_allclose(float(parts[k]), v, rtol=2e-5, atol=1e-7, err_msg=k)
    total = 0.5 * ref_dice + 2 * ref["focal"] + 0.25 * ref["iou_loss"] + 1.5 * ref["tversky_loss"]
    np.testing.assert_allclose(float(loss), total + 0.1 * ref_ce, rtol=2e-5)


def test_default_config_is_dice_ce_bit_for_bit():
    from jaxseg.losses import segmentation_loss

    cfg = _loss_config()
    assert cfg.terms == (("dice", 1.0), ("ce", 1.0)) and not cfg.needs_distance_maps
    logits, labels = _random_case((2, 8, 8), 3, 4)
    a = jax.jit(lambda x, y: segmentation_loss(x, y, cfg))(logits, labels)
    b = jax.jit(lambda x, y: dice_ce_loss(x, y, dice_weight=1.0, ce_weight=1.0))(logits, labels)
    assert jax.tree_util.tree_all(jax.tree_util.tree_map(lambda u, v: bool(u == v), a, b))
    # The old weights keep their meaning when loss.terms is unset.
    cfg = _loss_config(dice_weight=0.0, ce_weight=2.0)
    assert cfg.terms == (("dice", 0.0), ("ce", 2.0))
    assert _loss_config(terms="ce:1,dice:0.3").terms == (("ce", 1.0), ("dice", 0.3))
    assert _loss_config(terms="focal").terms == (("focal", 1.0),)


@pytest.mark.parametrize(
    "loss,match",
    [
        (
            dict(terms="dice:1,hausdorff:1"),
            "unknown term 'hausdorff'; valid terms: dice, ce, focal",
        ),
        (dict(terms="dice:-1,ce:1"), "weight of dice is -1.0"),
        (dict(terms="dice:0,ce:0"), "every weight is 0"),
        (dict(terms="dice:x"), "not a number"),
        (dict(terms="dice,dice:2"), "given twice"),
        (dict(terms="dice:1,,ce:1"), "empty entry"),
        (dict(terms="dice:1,ce:1", dice_weight=0.5), "leave dice_weight and ce_weight"),
        (dict(dice_weight=-1.0), "weight of dice"),
        (dict(focal_gamma=-0.5), "loss.focal_gamma"),
        (dict(tversky_alpha=1.5), "loss.tversky_alpha"),
        (dict(tversky_beta=-0.1), "loss.tversky_beta"),
        (dict(tversky_alpha=0.0, tversky_beta=0.0), "alpha \\+ beta > 0"),
        (dict(boundary_ramp_steps=-1), "loss.boundary_ramp_steps"),
    ],
)
def test_bad_loss_config_is_a_config_error(loss, match):
    from jaxseg.errors import ConfigError

    with pytest.raises(ConfigError, match=match):
        _loss_config(**loss)


def test_focal_gradient_finite_when_confident():
    from jaxseg.losses import focal_loss

    labels = np.random.default_rng(5).integers(0, 3, size=(2, 6, 6)).astype(np.int32)
    confident = 80.0 * jax.nn.one_hot(labels, 3)
    for gamma in (0.5, 2.0):
        grad = jax.grad(lambda x, g=gamma: focal_loss(x, labels, g))(confident)
        assert np.all(np.isfinite(np.asarray(grad)))
