"""The train step: gradient accumulation and mixed precision."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxseg import losses
from jaxseg.defaults import base_config
from jaxseg.training import optimizer as optimizer_lib
from jaxseg.training.state import init_train_state
from jaxseg.training.steps import make_train_step
from jaxseg.workdir import RunInfo, model_from_config

INFO = RunInfo(
    dims=2,
    in_channels=1,
    num_classes=3,
    labels={0: "bg", 1: "a", 2: "b"},
    modalities=("MRI",),
    dataset_root="",
)


def _config(**train):
    c = base_config()
    c.model.name = "unet"
    c.model.args.features = (8, 16)
    c.augment.flip_prob = 0.0
    c.augment.noise_std = 0.0
    c.train.warmup_steps = 0
    c.train.update(train)
    return c


def _batch(n=4):
    rng = np.random.default_rng(0)
    return {
        "image": jnp.asarray(rng.normal(size=(n, 16, 16, 1)), jnp.float32),
        "label": jnp.asarray(rng.integers(0, 3, (n, 16, 16)), jnp.int32),
    }


def _one_step(config):
    model = model_from_config(config, INFO)
    optimizer = optimizer_lib.make_optimizer(config.train)
    state = init_train_state(model, optimizer, jax.random.key(0), jnp.zeros((1, 16, 16, 1)))
    return jax.jit(make_train_step(model, optimizer, config))(state, _batch(), jax.random.key(1))


def test_accumulation_equals_full_batch_for_a_mean_loss():
    # Cross-entropy is a mean over equal-sized micro-batches, so its gradient averaged over
    # micro-batches is the full batch's gradient: the two steps must agree.
    full, m_full = _one_step(_ce_only(1))
    accum, m_accum = _one_step(_ce_only(2))
    np.testing.assert_allclose(m_full["ce"], m_accum["ce"], rtol=1e-5)
    jax.tree_util.tree_map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6),
        full.params,
        accum.params,
    )


def _ce_only(accum):
    c = _config(grad_accum_steps=accum)
    c.loss.dice_weight = 0.0
    return c


def _no_augmentation(config):
    for key in list(config.augment):
        if key.endswith("_prob"):
            config.augment[key] = 0.0
    return config


def test_accumulated_step_is_one_update_with_the_mean_micro_batch_gradient():
    """Dice + CE with 2 micro-batches: the step must equal one AdamW update with the mean of
    the two micro-batches' gradients (micro-batch j holds examples j, j + 2, ...: the
    documented assignment), and report the mean of their losses. The reference takes
    each micro-batch's gradient with `jax.grad` of the loss on that micro-batch alone.
    The batch Dice is not additive over examples, so this differs from the full batch's
    Dice (checked too: otherwise the test could not tell the two apart)."""
    accum = 2
    config = _no_augmentation(_config(grad_accum_steps=accum))
    model = model_from_config(config, INFO)
    optimizer = optimizer_lib.make_optimizer(config.train)
    init = lambda: init_train_state(model, optimizer, jax.random.key(0), jnp.zeros((1, 16, 16, 1)))
    batch = _batch()
    # Class 2 only in micro-batch 0, so the micro-batches' Dice terms differ.
    odd = batch["label"][1::2]
    batch["label"] = batch["label"].at[1::2].set(jnp.where(odd == 2, 0, odd))

    def loss(params, image, label):
        logits = model.apply({"params": params}, image, train=True)
        return losses.dice_ce_loss(
            logits, label, dice_weight=config.loss.dice_weight, ce_weight=config.loss.ce_weight
        )

    state = init()
    micro = [(batch["image"][j::accum], batch["label"][j::accum]) for j in range(accum)]
    results = [jax.value_and_grad(loss, has_aux=True)(state.params, *m) for m in micro]
    grads = jax.tree_util.tree_map(lambda *g: sum(g) / accum, *[g for _, g in results])
    updates, _ = optimizer.update(grads, state.opt_state, state.params)
    expected = optax.apply_updates(state.params, updates)
    expected_dice = np.mean([float(parts["dice_loss"]) for (_, parts), _ in results])
    expected_loss = np.mean([float(value) for (value, _), _ in results])

    got, metrics = jax.jit(make_train_step(model, optimizer, config))(
        init(), batch, jax.random.key(1)
    )
    assert int(got.step) == 1
    np.testing.assert_allclose(float(metrics["dice_loss"]), expected_dice, rtol=1e-5)
    np.testing.assert_allclose(float(metrics["loss"]), expected_loss, rtol=1e-5)
    jax.tree_util.tree_map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6), got.params, expected
    )
    _, full = loss(state.params, batch["image"], batch["label"])
    assert abs(float(full["dice_loss"]) - expected_dice) > 1e-4


def test_bfloat16_compute_keeps_float32_params_and_loss():
    state32, m32 = _one_step(_config(compute_dtype="float32"))
    state16, m16 = _one_step(_config(compute_dtype="bfloat16"))
    assert all(p.dtype == jnp.float32 for p in jax.tree_util.tree_leaves(state16.params))
    assert m16["loss"].dtype == jnp.float32
    assert float(m16["loss"]) == pytest.approx(float(m32["loss"]), rel=5e-2)


def test_unknown_compute_dtype():
    from jaxseg.errors import ConfigError

    with pytest.raises(ConfigError, match="compute_dtype"):
        model_from_config(_config(compute_dtype="float8"), INFO)
