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
