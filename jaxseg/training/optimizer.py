"""The optimiser: AdamW with linear warm-up, cosine decay and global-norm clipping."""

from __future__ import annotations

import jax
import ml_collections
import optax


def learning_rate_schedule(train: ml_collections.ConfigDict) -> optax.Schedule:
    """Linear warm-up from 0 to `learning_rate`, then cosine decay over the remaining steps.

    The schedule is a function of the step alone, so a resumed run continues it exactly.
    Raising `train.steps` and resuming stretches the decay over the new total.
    """
    warmup = min(train.warmup_steps, max(train.steps - 1, 0))
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0,
        peak_value=train.learning_rate,
        warmup_steps=warmup,
        decay_steps=max(train.steps, warmup + 1),
        end_value=train.learning_rate * train.end_learning_rate_fraction,
    )


def decay_mask(params):
    """True for the weights that get weight decay: kernels, not biases, norms or tables."""
    return jax.tree_util.tree_map(lambda p: p.ndim > 1, params)


def make_optimizer(train: ml_collections.ConfigDict) -> optax.GradientTransformation:
    return optax.chain(
        optax.clip_by_global_norm(train.grad_clip_norm),
        optax.adamw(
            learning_rate_schedule(train), weight_decay=train.weight_decay, mask=decay_mask
        ),
    )
