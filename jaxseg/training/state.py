"""The train state: everything that trains, as one pytree."""

from __future__ import annotations

from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import optax


class TrainState(flax.struct.PyTreeNode):
    """step: int32 scalar; params: the model's parameters; opt_state: optax state."""

    step: jax.Array
    params: Any
    opt_state: Any


def init_train_state(
    model, optimizer: optax.GradientTransformation, rng: jax.Array, sample_image: jax.Array
) -> TrainState:
    """Initialises parameters from `sample_image` [B, *patch, C] (only its shape matters)."""
    params = model.init({"params": rng}, sample_image, train=False)["params"]
    return TrainState(
        step=jnp.zeros((), jnp.int32), params=params, opt_state=optimizer.init(params)
    )
