"""Segmentation losses (device side, jit-compatible).

`dice_ce_loss` is the nnU-Net default: softmax cross-entropy plus soft Dice.

Choices, stated once:

- **Cross-entropy** is the mean over every voxel of every case in the batch of
  `-log softmax(logits)[label]` (no class weights).
- **Soft Dice is "batch Dice"** (nnU-Net `batch_dice=True`): for each class `k` the
  intersection `I_k = sum(p_k * y_k)` and the sums `sum(p_k)`, `sum(y_k)` run over the batch
  *and* all spatial axes together, then

      dice_k = (2 * I_k + smooth) / max(sum(p_k) + sum(y_k) + smooth, 1e-8)
      dice_loss = 1 - mean_k dice_k

  where `p = softmax(logits)` and `y = one_hot(labels)`. The mean runs over classes
  `1..K-1` (or `0..K-1` with `include_background=True`). Pooling over the batch makes a
  class that is small or absent in one case of the batch count less noisily than a per-case
  Dice would; a class absent from the whole batch gives `dice_k = smooth / (sum(p_k) +
  smooth)`, which pushes its probabilities towards zero and has a finite gradient.
- Everything is computed in float32 whatever the dtype of `logits` (bf16 logits are cast
  up before the softmax).

Labels must lie in `[0, K)`; this is not checked on device (a voxel with an out-of-range
label contributes zero to both terms). Validate labels on the host (`data.dataset.load_case`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

__all__ = ["dice_ce_loss"]


def dice_ce_loss(
    logits: jax.Array,
    labels: jax.Array,
    *,
    dice_weight: float = 1.0,
    ce_weight: float = 1.0,
    smooth: float = 1e-5,
    include_background: bool = False,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Weighted sum of softmax cross-entropy and soft (batch) Dice loss.

    Args:
      logits: `[B, X, Y, (Z,) K]` float (any float dtype; computed in float32).
      labels: `[B, X, Y, (Z)]` int, values in `[0, K)`.
      dice_weight, ce_weight: weights of the two terms.
      smooth: added to the Dice numerator and denominator.
      include_background: if False (default) the Dice mean runs over classes `1..K-1`
        only; cross-entropy always covers every class.

    Returns:
      `(loss, {"dice_loss": ..., "ce": ...})`, all float32 scalars, with
      `loss = dice_weight * dice_loss + ce_weight * ce`.
    """
    if logits.ndim != labels.ndim + 1 or logits.shape[:-1] != labels.shape:
        raise ValueError(
            f"dice_ce_loss: logits {logits.shape} must be labels {labels.shape} plus a "
            "trailing class axis ([B, *S, K] and [B, *S])."
        )
    num_classes = logits.shape[-1]
    first = 0 if include_background else 1
    if num_classes - first < 1:
        raise ValueError(
            f"dice_ce_loss: {num_classes} class(es) with include_background={include_background} "
            "leaves no class for the Dice term; use at least 2 classes or include_background=True."
        )

    logits = logits.astype(jnp.float32)
    log_probs = jax.nn.log_softmax(logits, axis=-1)
    onehot = jax.nn.one_hot(labels, num_classes, dtype=jnp.float32)

    ce = -jnp.mean(jnp.sum(onehot * log_probs, axis=-1))

    probs = jnp.exp(log_probs)
    reduce_axes = tuple(range(logits.ndim - 1))  # batch and space
    intersection = jnp.sum(probs * onehot, axis=reduce_axes)
    denominator = jnp.sum(probs, axis=reduce_axes) + jnp.sum(onehot, axis=reduce_axes)
    dice = (2.0 * intersection + smooth) / jnp.maximum(denominator + smooth, 1e-8)
    dice_loss = 1.0 - jnp.mean(dice[first:])

    loss = dice_weight * dice_loss + ce_weight * ce
    return loss.astype(jnp.float32), {
        "dice_loss": dice_loss.astype(jnp.float32),
        "ce": ce.astype(jnp.float32),
    }
