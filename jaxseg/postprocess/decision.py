"""nnU-Net's largest-component decision, taken on cross-validation predictions.

- `decide_postprocessing(cases, num_classes)`: which of `keep_largest`'s rules to keep,
  decided with nnU-Net v2's rule (`determine_postprocessing` in
  `nnunetv2/postprocessing/remove_connected_components.py`):

  1. All-foreground LCC is kept iff the mean foreground Dice strictly rises
     (`after > before`) and no class's mean Dice strictly falls (`after < before`; equal
     is allowed). The mean foreground Dice is the mean over classes of the per-class mean
     over cases, as in nnU-Net's `foreground_mean`.
  2. Then, on top of that decision, and only when there are two or more foreground
     classes (as in nnU-Net; with one class the rule is the same as step 1), per class
     `k = 1..K-1` in order: LCC of class `k` is kept iff class `k`'s mean Dice strictly
     rises. Removing class-`k` voxels leaves every other class's mask unchanged, so no
     other class can get worse; nnU-Net v2 tests only class `k` for the same reason.

- `apply_postprocessing(labels, decision)`, `save_decision`, `load_decision` (JSON).

Dice (per case and class, `P` prediction, `G` truth): `2|P & G| / (|P| + |G|)`, and 1 when
both are empty: the empty-mask policy of `jaxseg.metrics`, so `dice_before` equals the mean
Dice of `jaxseg.evaluation` on the same cases. nnU-Net scores an empty-empty class as NaN
and averages with `nanmean`. Both give the same decision whenever every class occurs in
some case's prediction or truth: an LCC never changes a case whose predicted class is
empty, so those cases add the same 1 before and after, and the sign of every class's mean
change is the same under both. Where a class occurs nowhere, nnU-Net's NaN foreground mean
makes step 1 always fail; here the other classes decide.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
from etils import epath

from jaxseg.errors import ConfigError, DataError
from jaxseg.postprocess.components import (
    check_classes,
    check_labels,
    keep_largest,
    largest_component,
)


def _dice(p: np.ndarray, g: np.ndarray, n_g: int) -> float:
    """Dice of bool masks with `jaxseg.metrics`' policy (both empty: 1)."""
    n_p = int(np.count_nonzero(p))
    if n_p == 0 and n_g == 0:
        return 1.0
    return 2.0 * int(np.count_nonzero(p & g)) / (n_p + n_g)


def _case_scores(pred: np.ndarray, truth: np.ndarray, num_classes: int, per_class: bool):
    """Dice per class `1..K-1` of one case: raw, after foreground LCC, and after per-class
    LCC on each of those two; float64 `[4, K-1]` (rows raw, fg, raw+class, fg+class)."""
    scores = np.empty((4, num_classes - 1), dtype=np.float64)
    fg_keep = largest_component(pred > 0)
    for i, k in enumerate(range(1, num_classes)):
        g = truth == k
        n_g = int(np.count_nonzero(g))
        p = pred == k
        p_fg = p & fg_keep
        unchanged = np.count_nonzero(p_fg) == np.count_nonzero(p)
        scores[0, i] = _dice(p, g, n_g)
        scores[1, i] = scores[0, i] if unchanged else _dice(p_fg, g, n_g)
        if per_class:
            scores[2, i] = _dice(largest_component(p), g, n_g)
            scores[3, i] = scores[2, i] if unchanged else _dice(largest_component(p_fg), g, n_g)
        else:
            scores[2:, i] = scores[:2, i]
    return scores


def _per_class(values: np.ndarray) -> dict[str, float]:
    return {str(k): float(v) for k, v in enumerate(values, start=1)}


def decide_postprocessing(
    cases: Iterable[tuple[np.ndarray, np.ndarray, Sequence[float]]], num_classes: int
) -> dict[str, Any]:
    """nnU-Net v2's largest-component decision on cross-validation predictions.

    Args:
      cases: `(pred, truth, spacing)` per case: int `[*S]` predicted and reference label
        maps of the same shape, values in `[0, num_classes)`. `spacing` is not used (Dice
        needs none); it is accepted so the case tuples of evaluation can be passed as they
        are. Read once, one case at a time, so a generator over files is fine.
      num_classes: K, including background 0.

    Returns:
      A JSON-ready dict: `foreground` (bool), `classes` (list of int), `dice_before` and
      `dice_after` (`{"k": mean Dice over cases}` without and with the decision),
      `mean_dice_before`, `mean_dice_after` (mean over classes), `trials` (each rule tried,
      in order: `rule`, `kept`, `dice_before`, `dice_after`), `num_cases`, `num_classes`.
      The rule is in the module docstring.
    """
    if (
        isinstance(num_classes, bool)
        or not isinstance(num_classes, int | np.integer)
        or num_classes < 2
    ):
        raise ConfigError(
            f"decide_postprocessing: num_classes={num_classes!r}; need background plus >= 1 class."
        )
    num_classes = int(num_classes)
    per_class = num_classes > 2
    rows = []
    for index, case in enumerate(cases):
        what = f"decide_postprocessing: case {index}"
        try:
            pred, truth, _spacing = case
        except (TypeError, ValueError):
            raise DataError(f"{what}: expected a (pred, truth, spacing) tuple.") from None
        pred = check_labels(pred, f"{what} (pred)")
        truth = check_labels(truth, f"{what} (truth)")
        if pred.shape != truth.shape:
            raise DataError(f"{what}: pred shape {pred.shape} != truth shape {truth.shape}.")
        for name, arr in (("pred", pred), ("truth", truth)):
            if arr.size and (arr.min() < 0 or arr.max() >= num_classes):
                raise DataError(
                    f"{what}: {name} has values in [{arr.min()}, {arr.max()}] outside "
                    f"[0, {num_classes}); check num_classes or the label file."
                )
        rows.append(_case_scores(pred, truth, num_classes, per_class))
    if not rows:
        raise DataError("decide_postprocessing: no cases; the decision needs validation cases.")
    means = np.stack(rows).mean(axis=0)  # [4, K-1]: raw, fg, raw+class, fg+class
    before, fg_after = means[0], means[1]

    trials = []
    use_fg = bool(fg_after.mean() > before.mean() and not np.any(fg_after < before))
    trials.append(
        dict(
            rule="foreground",
            kept=use_fg,
            dice_before=_per_class(before),
            dice_after=_per_class(fg_after),
        )
    )
    current = (fg_after if use_fg else before).copy()
    lcc = means[3] if use_fg else means[2]
    classes = []
    if per_class:
        for i, k in enumerate(range(1, num_classes)):
            trial = current.copy()
            trial[i] = lcc[i]
            kept = bool(trial[i] > current[i])
            trials.append(
                dict(
                    rule=f"class {k}",
                    kept=kept,
                    dice_before=_per_class(current),
                    dice_after=_per_class(trial),
                )
            )
            if kept:
                classes.append(k)
                current = trial
    return dict(
        foreground=use_fg,
        classes=classes,
        dice_before=_per_class(before),
        dice_after=_per_class(current),
        mean_dice_before=float(before.mean()),
        mean_dice_after=float(current.mean()),
        trials=trials,
        num_cases=len(rows),
        num_classes=num_classes,
    )


def _check_decision(decision: Any, what: str, error: type[Exception]) -> tuple[bool, list[int]]:
    if (
        not isinstance(decision, Mapping)
        or "foreground" not in decision
        or "classes" not in decision
    ):
        raise error(f"{what}: a postprocessing decision needs the keys 'foreground' and 'classes'.")
    if not isinstance(decision["foreground"], bool):
        raise error(f"{what}: 'foreground' is {decision['foreground']!r}; expected true or false.")
    return decision["foreground"], check_classes(decision["classes"], what, error)


def apply_postprocessing(labels: np.ndarray, decision: Mapping[str, Any]) -> np.ndarray:
    """Apply a decision of `decide_postprocessing` to an int `[*S]` label map (same dtype)."""
    foreground, classes = _check_decision(decision, "apply_postprocessing", ConfigError)
    return keep_largest(labels, foreground=foreground, classes=classes)


def save_decision(decision: Mapping[str, Any], path: str | os.PathLike) -> None:
    """Write a decision as JSON, atomically: a temporary file beside `path`, then a rename
    (`os.replace` for local paths; `path` may be an `etils.epath.Path`, `gs://` too)."""
    _check_decision(decision, f"save_decision({path})", ConfigError)
    text = json.dumps(decision, indent=2) + "\n"
    path = epath.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.{uuid.uuid4().hex}.tmp"
    try:
        tmp.write_text(text)
        tmp.replace(path)
    finally:
        if tmp.exists():
            tmp.unlink()


def load_decision(path: str | os.PathLike) -> dict[str, Any]:
    """Read a decision written by `save_decision`; a DataError names a bad file."""
    path = epath.Path(path)
    if not path.exists():
        raise DataError(f"{path}: no postprocessing decision here; run the decision first.")
    try:
        decision = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise DataError(f"{path}: not a JSON postprocessing decision ({err}).") from None
    _check_decision(decision, str(path), DataError)
    return decision
