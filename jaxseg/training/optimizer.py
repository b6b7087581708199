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


# Parameter names (the last key of a parameter's path) that are weight matrices or
# convolution kernels, and so get weight decay: Dense/Conv kernels, lightseg's low-rank
# factors and TransMed's expert kernels. Everything else is a bias, a norm scale, a
# relative-position table, a position embedding or a learned token, and is not decayed.
DECAYED_PARAMS = frozenset({"kernel", "kernel_down", "kernel_up", "experts"})


def decay_mask(params):
    """True for the parameters that get weight decay: kernels (`DECAYED_PARAMS`), by name.

    Biases (of any rank, e.g. DynamicConv's per-expert bias), norm scales, relative
    position bias tables, position embeddings and global tokens are not decayed, as in
    big_vision and timm. A new kind of parameter is not decayed until it is named here.
    """

    def decayed(path, _):
        last = path[-1]
        return getattr(last, "key", getattr(last, "name", None)) in DECAYED_PARAMS

    return jax.tree_util.tree_map_with_path(decayed, params)


def make_optimizer(train: ml_collections.ConfigDict) -> optax.GradientTransformation:
    return optax.chain(
        optax.clip_by_global_norm(train.grad_clip_norm),
        optax.adamw(
            learning_rate_schedule(train), weight_decay=train.weight_decay, mask=decay_mask
        ),
    )
