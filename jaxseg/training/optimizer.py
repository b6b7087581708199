"""The optimiser: AdamW with linear warm-up, cosine decay and global-norm clipping."""

from __future__ import annotations

from typing import Any

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
# LoRA factors and adapter matrices (`jaxseg.models.peft`) are weight matrices too.
DECAYED_PARAMS = frozenset(
    {
        "kernel",
        "kernel_down",
        "kernel_up",
        "experts",
        "lora_a",
        "lora_b",
        "adapter_down",
        "adapter_up",
    }
)


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


TRAINABLE, FROZEN = "trainable", "frozen"  # optax.multi_transform labels


def make_optimizer(
    train: ml_collections.ConfigDict, trainable: Any | None = None
) -> optax.GradientTransformation:
    """Clipped AdamW (`train`). With `trainable` (a bool per parameter leaf,
    `jaxseg.training.finetune`), it runs on the True leaves only: `optax.multi_transform`
    gives the others `set_to_zero`, so they hold no moments and the clipping norm is
    over the trainable gradients."""
    adamw = optax.chain(
        optax.clip_by_global_norm(train.grad_clip_norm),
        optax.adamw(
            learning_rate_schedule(train), weight_decay=train.weight_decay, mask=decay_mask
        ),
    )
    if trainable is None:
        return adamw
    labels = jax.tree_util.tree_map(lambda t: TRAINABLE if t else FROZEN, trainable)
    return optax.multi_transform({TRAINABLE: adamw, FROZEN: optax.set_to_zero()}, labels)
