"""The case-classification term: `loss.class_weight` and `loss.class_target`.

A model with a classification head (`lightseg_fusion` with `num_case_classes` = C) gives
class logits `[B, C]` next to the segmentation; the train step adds

    class_weight * mean over the batch of -log softmax(class_logits)[target]

to the segmentation loss (logged as `class_ce`, unweighted). The target of each training
patch comes from `loss.class_target`:

    "field"         the case's `class` in dataset.json (`Case.case_class`), C = the
                    dataset's `case_classes`
    "foreground:K"  1 when the patch, after augmentation, holds a voxel of label class K,
                    else 0 (C = 2); a patch is a 2D slice in 2D, a sub-volume in 3D
    "auto"          "field" when the dataset declares `case_classes`, else "foreground:1"
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp

from jaxseg.errors import ConfigError

__all__ = [
    "ClassTarget",
    "check_class_head",
    "class_ce",
    "class_weight",
    "foreground_target",
    "resolve_class_target",
]

FIELD, FOREGROUND, AUTO = "field", "foreground", "auto"


@dataclasses.dataclass(frozen=True)
class ClassTarget:
    """A resolved `loss.class_target`: where the targets come from and how many classes.

    source: FIELD or FOREGROUND; foreground_class: K of "foreground:K" (None for FIELD);
    num_classes: C, what the model's `num_case_classes` must be; names: the class names.
    """

    source: str
    foreground_class: int | None
    num_classes: int
    names: tuple[str, ...]

    @property
    def derived(self) -> bool:
        """True when the targets are computed from the labels on device."""
        return self.source == FOREGROUND

    def describe(self) -> str:
        return FIELD if not self.derived else f"{FOREGROUND}:{self.foreground_class}"


def class_weight(loss) -> float:
    """`loss.class_weight` checked: a finite number >= 0 (0: no classification term)."""
    w = loss.get("class_weight", 0.0)
    if isinstance(w, bool) or not isinstance(w, int | float) or not math.isfinite(w) or w < 0:
        raise ConfigError(f"loss.class_weight = {w!r}: give a finite number >= 0 (0: off).")
    return float(w)


def resolve_class_target(
    loss, case_classes: tuple[str, ...], labels: dict[int, str]
) -> ClassTarget:
    """`loss.class_target` for a dataset with `case_classes` (dataset.json) and the
    segmentation classes `labels` (index -> name); ConfigError naming the key."""
    value = loss.get("class_target", AUTO)
    spec = str(value).strip() if isinstance(value, str) else None
    if spec == AUTO:
        spec = FIELD if case_classes else f"{FOREGROUND}:1"
    if spec == FIELD:
        if not case_classes:
            raise ConfigError(
                'loss.class_target = "field": the dataset declares no case_classes (nor a '
                '"class" per case); use "foreground:K" to derive the targets from the labels.'
            )
        return ClassTarget(FIELD, None, len(case_classes), tuple(case_classes))
    head, _, k = (spec or "").partition(":")
    if head == FOREGROUND and k.strip().isdigit() and 1 <= int(k) < len(labels):
        k = int(k)
        name = labels.get(k, str(k))
        return ClassTarget(FOREGROUND, k, 2, (f"no {name}", name))
    raise ConfigError(
        f'loss.class_target = {value!r}: give "auto", "field" or "foreground:K" with K a '
        f"foreground class in 1..{len(labels) - 1} ({dict(labels)})."
    )


def check_class_head(target: ClassTarget, num_case_classes: int, model_name: str) -> None:
    """ConfigError unless the model's head has `target.num_classes` classes."""
    if not num_case_classes:
        raise ConfigError(
            f"loss.class_weight > 0 needs a classification head, but model {model_name!r} has "
            "none; use lightseg_fusion with model.args.num_case_classes, or class_weight = 0."
        )
    if num_case_classes != target.num_classes:
        raise ConfigError(
            f"model.args.num_case_classes = {num_case_classes} but loss.class_target = "
            f"{target.describe()!r} has {target.num_classes} classes {target.names}; make "
            "them agree."
        )


def foreground_target(label: jax.Array, k: int) -> jax.Array:
    """`label [B, *S]` int -> int32 `[B]`: 1 where the patch holds a voxel of class k."""
    return jnp.any(label == k, axis=tuple(range(1, label.ndim))).astype(jnp.int32)


def class_ce(class_logits: jax.Array, target: jax.Array) -> jax.Array:
    """Mean softmax cross-entropy of `class_logits [B, C]` against int `target [B]`, f32."""
    log_probs = jax.nn.log_softmax(class_logits.astype(jnp.float32), axis=-1)
    picked = jnp.take_along_axis(log_probs, target[:, None].astype(jnp.int32), axis=-1)
    return -jnp.mean(picked)
