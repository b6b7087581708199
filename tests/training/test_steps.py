"""The train step: gradient accumulation and mixed precision."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

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


def test_accumulated_dice_is_per_micro_batch():
    _, m1 = _one_step(_config(grad_accum_steps=1))
    _, m2 = _one_step(_config(grad_accum_steps=2))
    assert abs(float(m1["dice_loss"]) - float(m2["dice_loss"])) > 1e-6


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
