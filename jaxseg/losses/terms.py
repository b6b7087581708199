"""Weighted combinations of segmentation losses: `loss.terms`.

`loss.terms = "dice:1,ce:1,boundary:0.01"` sums weighted terms; "" (the default) is
`loss.dice_weight * dice + loss.ce_weight * ce`, computed by `dice_ce_loss`, so runs made
before `loss.terms` existed reproduce bit for bit. With `p = softmax(logits)` (float32),
`y = one_hot(labels)`, and per class k the sums over the batch *and* all spatial axes
(batch statistics, as `dice_ce_loss`'s Dice) `I_k = sum p_k y_k`, `FP_k = sum p_k (1 - y_k)`,
`FN_k = sum (1 - p_k) y_k`; class means run over the foreground classes `1..K-1`:

    dice     1 - mean_k (2 I_k + s) / (2 I_k + FP_k + FN_k + s)            (`dice_ce_loss`)
    ce       mean over voxels of -log p_label
    focal    mean over voxels of -(1 - p_label)^gamma log p_label     (Lin et al. 2017;
             gamma = loss.focal_gamma; gamma = 0 is ce)
    iou      1 - mean_k (I_k + s) / (I_k + FP_k + FN_k + s)                (soft Jaccard)
    tversky  1 - mean_k (I_k + s) / (I_k + alpha FP_k + beta FN_k + s)     (Salehi et al.
             2017; alpha = loss.tversky_alpha weighs false positives, beta =
             loss.tversky_beta false negatives; alpha = beta = 0.5 is dice)
    boundary mean over batch, voxels and foreground classes of p_k * phi_k  (Kervadec et
             al. 2019), phi_k the signed distance map of class k (negative inside), in
             voxels of the model's grid, computed on the host for each training patch
             (`jaxseg.data.distance_maps`)

with s = 1e-5 (each denominator also floored at 1e-8). The boundary weight ramps up
linearly from 0 at step 0 to its full weight at `loss.boundary_ramp_steps` (Kervadec et al.
raise the boundary weight during training; 0 gives the full weight from the start): a
boundary loss alone, from a random start, does not train.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import ml_collections

from jaxseg.errors import ConfigError
from jaxseg.losses.dice_ce import dice_ce_loss

__all__ = [
    "TERM_NAMES",
    "LossConfig",
    "boundary_loss",
    "focal_loss",
    "iou_loss",
    "segmentation_loss",
    "tversky_loss",
]

TERM_NAMES = ("dice", "ce", "focal", "iou", "tversky", "boundary")
# The key each term is logged under (dice_ce_loss's keys for its two).
PART_NAMES = {
    "dice": "dice_loss",
    "ce": "ce",
    "focal": "focal",
    "iou": "iou_loss",
    "tversky": "tversky_loss",
    "boundary": "boundary",
}
_SMOOTH = 1e-5


@dataclasses.dataclass(frozen=True)
class LossConfig:
    """The `loss` section, validated: `terms` are (name, weight) pairs in config order."""

    terms: tuple[tuple[str, float], ...]
    focal_gamma: float = 2.0
    tversky_alpha: float = 0.3
    tversky_beta: float = 0.7
    boundary_ramp_steps: int = 0

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(name for name, _ in self.terms)

    @property
    def needs_distance_maps(self) -> bool:
        """True when the batches must carry `distance_maps` (the boundary term)."""
        return "boundary" in self.names

    @property
    def part_names(self) -> tuple[str, ...]:
        """The keys of `segmentation_loss`'s parts dict, in order."""
        extra = ("boundary_weight",) if self.needs_distance_maps else ()
        return tuple(PART_NAMES[n] for n in self.names) + extra

    @classmethod
    def from_config(cls, loss: ml_collections.ConfigDict) -> LossConfig:
        """Reads and checks `config.loss` (ConfigError naming the key on a bad value)."""
        spec = loss.get("terms", "") or ""
        if not isinstance(spec, str):
            raise ConfigError(
                f'loss.terms = {spec!r}: give a string such as "dice:1,ce:1" (name:weight, '
                f"comma separated; names: {', '.join(TERM_NAMES)})."
            )
        dice_w, ce_w = float(loss.get("dice_weight", 1.0)), float(loss.get("ce_weight", 1.0))
        if spec.strip():
            if (dice_w, ce_w) != (1.0, 1.0):
                raise ConfigError(
                    f"loss.terms = {spec!r} and loss.dice_weight / loss.ce_weight = "
                    f"{dice_w} / {ce_w}: with loss.terms give every weight there "
                    '(e.g. "dice:0.5,ce:1") and leave dice_weight and ce_weight at 1.0.'
                )
            terms = parse_terms(spec)
        else:
            terms = (("dice", dice_w), ("ce", ce_w))
            _check_weights(terms, "loss.dice_weight / loss.ce_weight")
        gamma = _number(loss, "focal_gamma", 2.0)
        alpha = _number(loss, "tversky_alpha", 0.3)
        beta = _number(loss, "tversky_beta", 0.7)
        ramp = loss.get("boundary_ramp_steps", 0)
        if gamma < 0:
            raise ConfigError(f"loss.focal_gamma = {gamma}: give gamma >= 0 (0 is plain CE).")
        for key, value in (("tversky_alpha", alpha), ("tversky_beta", beta)):
            if not 0.0 <= value <= 1.0:
                raise ConfigError(
                    f"loss.{key} = {value}: Tversky's alpha and beta lie in [0, 1] "
                    "(alpha weighs false positives, beta false negatives)."
                )
        if alpha + beta == 0:
            raise ConfigError(
                "loss.tversky_alpha = loss.tversky_beta = 0: the Tversky index is then 1 "
                "whatever the prediction; give alpha + beta > 0 (0.5, 0.5 is Dice)."
            )
        if isinstance(ramp, bool) or not isinstance(ramp, int) or ramp < 0:
            raise ConfigError(
                f"loss.boundary_ramp_steps = {ramp!r}: give a whole number of steps >= 0 "
                "(0: the full boundary weight from step 0)."
            )
        return cls(terms, gamma, alpha, beta, ramp)


def _number(loss, key: str, default: float) -> float:
    value = loss.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ConfigError(f"loss.{key} = {value!r}: give a finite number.")
    return float(value)


def _check_weights(terms, where: str) -> None:
    for name, weight in terms:
        if not (math.isfinite(weight) and weight >= 0):
            raise ConfigError(f"{where}: the weight of {name} is {weight}; give a weight >= 0.")
    if not any(weight > 0 for _, weight in terms):
        raise ConfigError(f"{where}: every weight is 0, so nothing would train.")


def parse_terms(spec: str) -> tuple[tuple[str, float], ...]:
    """`"dice:1,ce:0.5"` -> `(("dice", 1.0), ("ce", 0.5))`; a bare name has weight 1."""
    terms, seen = [], set()
    for item in spec.split(","):
        item = item.strip()
        if not item:
            raise ConfigError(f"loss.terms = {spec!r}: an empty entry; write name:weight,...")
        name, _, raw = item.partition(":")
        name = name.strip()
        if name not in TERM_NAMES:
            raise ConfigError(
                f"loss.terms = {spec!r}: unknown term {name!r}; valid terms: "
                f"{', '.join(TERM_NAMES)}."
            )
        if name in seen:
            raise ConfigError(f"loss.terms = {spec!r}: {name} is given twice.")
        seen.add(name)
        try:
            weight = float(raw) if raw.strip() else 1.0
        except ValueError:
            raise ConfigError(
                f"loss.terms = {spec!r}: the weight of {name}, {raw!r}, is not a number."
            ) from None
        terms.append((name, weight))
    _check_weights(terms, f"loss.terms = {spec!r}")
    return tuple(terms)


def _check(logits, labels, name):
    if logits.ndim != labels.ndim + 1 or logits.shape[:-1] != labels.shape:
        raise ValueError(
            f"{name}: logits {logits.shape} must be labels {labels.shape} plus a trailing "
            "class axis ([B, *S, K] and [B, *S])."
        )
    if logits.shape[-1] < 2:
        raise ValueError(f"{name}: {logits.shape[-1]} class(es); need background plus >= 1.")


def _probs_onehot(logits, labels):
    log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    onehot = jax.nn.one_hot(labels, logits.shape[-1], dtype=jnp.float32)
    return log_probs, onehot


def _overlap(probs, onehot):
    """Per class (over batch and space): I, FP, FN, each `[K]`."""
    axes = tuple(range(probs.ndim - 1))
    inter = jnp.sum(probs * onehot, axis=axes)
    fp = jnp.sum(probs * (1.0 - onehot), axis=axes)
    fn = jnp.sum((1.0 - probs) * onehot, axis=axes)
    return inter, fp, fn


def focal_loss(logits: jax.Array, labels: jax.Array, gamma: float = 2.0) -> jax.Array:
    """Mean over voxels of `-(1 - p_label)^gamma log p_label`.

    logits `[B, *S, K]` (computed in float32), labels int `[B, *S]`; a float32 scalar.
    """
    _check(logits, labels, "focal_loss")
    log_probs, onehot = _probs_onehot(logits, labels)
    log_pt = jnp.sum(onehot * log_probs, axis=-1)
    # 1 - p as -expm1(log p): exact near p = 1; floored so that d/dp (1 - p)^gamma stays
    # finite at p = 1 for gamma < 1.
    one_minus = jnp.maximum(-jnp.expm1(log_pt), 1e-12)
    return -jnp.mean(one_minus**gamma * log_pt)


def iou_loss(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Soft Jaccard loss `1 - mean_k (I + s) / (I + FP + FN + s)` over foreground classes,
    batch statistics. logits `[B, *S, K]`, labels int `[B, *S]`; a float32 scalar."""
    _check(logits, labels, "iou_loss")
    log_probs, onehot = _probs_onehot(logits, labels)
    inter, fp, fn = _overlap(jnp.exp(log_probs), onehot)
    jaccard = (inter + _SMOOTH) / jnp.maximum(inter + fp + fn + _SMOOTH, 1e-8)
    return 1.0 - jnp.mean(jaccard[1:])


def tversky_loss(
    logits: jax.Array, labels: jax.Array, alpha: float = 0.3, beta: float = 0.7
) -> jax.Array:
    """Tversky loss `1 - mean_k (I + s) / (I + alpha FP + beta FN + s)` over foreground
    classes, batch statistics. logits `[B, *S, K]`, labels int `[B, *S]`; float32 scalar."""
    _check(logits, labels, "tversky_loss")
    log_probs, onehot = _probs_onehot(logits, labels)
    inter, fp, fn = _overlap(jnp.exp(log_probs), onehot)
    index = (inter + _SMOOTH) / jnp.maximum(inter + alpha * fp + beta * fn + _SMOOTH, 1e-8)
    return 1.0 - jnp.mean(index[1:])


def boundary_loss(logits: jax.Array, distance_maps: jax.Array) -> jax.Array:
    """Kervadec's boundary loss: mean of `softmax(logits)[..., 1:] * distance_maps`.

    logits `[B, *S, K]`; distance_maps float `[B, *S, K - 1]`, the signed distance maps of
    the labels' foreground classes (`data.distance_maps.signed_distance_maps`). A float32
    scalar; it is minimal (negative) when all foreground probability lies inside the
    classes, so it is not a loss >= 0 like the others."""
    if distance_maps.shape != (*logits.shape[:-1], logits.shape[-1] - 1):
        raise ValueError(
            f"boundary_loss: distance_maps {distance_maps.shape} must be logits "
            f"{logits.shape} with K - 1 = {logits.shape[-1] - 1} foreground channels."
        )
    probs = jax.nn.softmax(logits.astype(jnp.float32), axis=-1)
    return jnp.mean(probs[..., 1:] * distance_maps.astype(jnp.float32))


def boundary_weight(config: LossConfig, step) -> jax.Array:
    """The boundary term's weight at `step`: linear from 0 to its weight over the ramp."""
    weight = dict(config.terms)["boundary"]
    if config.boundary_ramp_steps == 0:
        return jnp.float32(weight)
    ramp = jnp.minimum(jnp.asarray(step, jnp.float32) / config.boundary_ramp_steps, 1.0)
    return (weight * ramp).astype(jnp.float32)


def segmentation_loss(
    logits: jax.Array,
    labels: jax.Array,
    config: LossConfig,
    *,
    distance_maps: jax.Array | None = None,
    step=0,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """The weighted sum of `config.terms`.

    Args:
      logits: `[B, *S, K]` float (computed in float32); labels: int `[B, *S]`.
      config: `LossConfig.from_config(config.loss)`.
      distance_maps: `[B, *S, K - 1]`, needed by the boundary term only.
      step: the optimiser step (int or int array), for the boundary weight's ramp.

    Returns:
      `(loss, parts)`: float32 scalars; parts holds each term under `PART_NAMES` (unweighted)
      and, with the boundary term, its current weight `boundary_weight`.
    """
    if config.names in (("dice", "ce"), ("ce", "dice")):
        weights = dict(config.terms)
        return dice_ce_loss(logits, labels, dice_weight=weights["dice"], ce_weight=weights["ce"])
    _check(logits, labels, "segmentation_loss")
    if config.needs_distance_maps and distance_maps is None:
        raise ValueError(
            "segmentation_loss: loss.terms has a boundary term but the batch carries no "
            "distance_maps (the pipeline adds them when the loss config asks for them)."
        )
    parts = {}
    if "dice" in config.names or "ce" in config.names:
        _, dc = dice_ce_loss(logits, labels)
        parts.update(dc)
    for name in config.names:
        if name == "focal":
            parts["focal"] = focal_loss(logits, labels, config.focal_gamma)
        elif name == "iou":
            parts["iou_loss"] = iou_loss(logits, labels)
        elif name == "tversky":
            parts["tversky_loss"] = tversky_loss(
                logits, labels, config.tversky_alpha, config.tversky_beta
            )
        elif name == "boundary":
            parts["boundary"] = boundary_loss(logits, distance_maps)
            parts["boundary_weight"] = boundary_weight(config, step)
    loss = jnp.zeros((), jnp.float32)
    for name, weight in config.terms:
        w = parts["boundary_weight"] if name == "boundary" else weight
        loss = loss + w * parts[PART_NAMES[name]]
    parts = {k: parts[k].astype(jnp.float32) for k in config.part_names}
    return loss.astype(jnp.float32), parts
