"""The learning-rate schedule against its published formula."""

import math

import ml_collections
import numpy as np
import pytest

from jaxseg.training.optimizer import decay_mask, learning_rate_schedule


def test_warmup_then_cosine_matches_formula():
    train = ml_collections.ConfigDict(
        dict(steps=1000, warmup_steps=100, learning_rate=2e-3, end_learning_rate_fraction=0.01)
    )
    schedule = learning_rate_schedule(train)
    peak, end = 2e-3, 2e-5
    for step in (0, 10, 50, 100, 101, 400, 999, 1000):
        if step <= 100:
            expected = peak * step / 100
        else:
            progress = (step - 100) / 900
            expected = end + (peak - end) * 0.5 * (1 + math.cos(math.pi * progress))
        np.testing.assert_allclose(float(schedule(step)), expected, rtol=1e-5, atol=1e-9)


def test_weight_decay_skips_biases_and_norms():
    params = {
        "dense": {"kernel": np.zeros((3, 4)), "bias": np.zeros(4)},
        "norm": {"scale": np.zeros(4)},
    }
    mask = decay_mask(params)
    assert mask == {"dense": {"kernel": True, "bias": False}, "norm": {"scale": False}}


def _abstract_params(name, dims, size, **kwargs):
    import jax
    import jax.numpy as jnp

    from jaxseg import models

    model = models.build_model(name, dims=dims, in_channels=1, num_classes=2, **kwargs)
    x = jax.ShapeDtypeStruct((1, *(size,) * dims, 1), jnp.float32)
    return jax.eval_shape(lambda x: model.init(jax.random.key(0), x, train=False), x)["params"]


@pytest.mark.parametrize(
    "name, dims, size, kwargs, leaf, decayed",
    [
        ("lightseg_tiny", 2, 64, {}, "relative_position_bias_table", False),
        ("lightseg_base", 2, 64, {}, "global_tokens", False),
        ("transmed", 2, 32, {"variant": "dynamic", "norm": "none"}, "bias", False),
        ("transmed", 2, 32, {"variant": "dynamic", "norm": "none"}, "experts", True),
        ("unetr", 3, 32, {}, "position_embeddings", False),
        ("transunet", 2, 64, {}, "pos_embedding", False),
        ("unet", 2, 32, {}, "scale", False),
        ("unet", 2, 32, {}, "kernel", True),
        ("lightseg_tiny", 2, 64, {}, "kernel", True),
    ],
)
def test_weight_decay_by_parameter_role(name, dims, size, kwargs, leaf, decayed):
    """Each family of a real model: tables, tokens, embeddings, biases of any rank and norm
    scales are not decayed; kernels are. Checked on the model's own parameter tree."""
    import jax

    params = _abstract_params(name, dims, size, **kwargs)
    flags = [
        (jax.tree_util.keystr(path), flag)
        for path, flag in jax.tree_util.tree_leaves_with_path(decay_mask(params))
        if jax.tree_util.keystr(path).endswith(f"['{leaf}']")
    ]
    assert flags, f"{name} has no parameter named {leaf}"
    assert all(flag == decayed for _, flag in flags), flags


def test_adamw_with_mask_decays_only_kernels():
    """With zero gradients, AdamW's step is -lr * wd * p on decayed leaves and 0 elsewhere
    (Loshchilov & Hutter's decoupled decay), so the update itself shows the mask."""
    import jax
    import jax.numpy as jnp

    from jaxseg.training.optimizer import make_optimizer

    train = ml_collections.ConfigDict(
        dict(
            steps=10,
            warmup_steps=0,
            learning_rate=0.1,
            end_learning_rate_fraction=1.0,
            weight_decay=0.5,
            grad_clip_norm=1.0,
        )
    )
    params = {
        "block": {"kernel": jnp.ones((3, 4)), "bias": jnp.ones((2, 4))},
        "relative_position_bias_table": jnp.ones((9, 2)),
        "global_tokens": jnp.ones((1, 4)),
    }
    opt = make_optimizer(train)
    grads = jax.tree_util.tree_map(jnp.zeros_like, params)
    updates, _ = opt.update(grads, opt.init(params), params)
    np.testing.assert_allclose(updates["block"]["kernel"], -0.1 * 0.5 * np.ones((3, 4)), rtol=1e-6)
    for leaf in (
        updates["block"]["bias"],
        updates["relative_position_bias_table"],
        updates["global_tokens"],
    ):
        np.testing.assert_array_equal(leaf, 0.0)
