"""Case-classification metrics (host side, numpy): AUC, accuracy, sensitivity, specificity.

`classification_metrics(probs [N, C], targets [N])`, with the predicted class the argmax:

- 2 classes (class 1 the positive one, p = probs[:, 1]):
    auc          Mann-Whitney: P(p of a random positive > p of a random negative), ties
                 counting 1/2, = U / (n1 n0) (the area under the ROC curve)
    sensitivity  TP / (TP + FN);  specificity  TN / (TN + FP)
- C > 2: each of them the macro mean over the classes, one against the rest (a class
  absent from the targets, or the only one present, is left out of the AUC's mean).
- accuracy: the share of cases whose argmax is the target.

A value that cannot be computed (no positives for sensitivity, one class only for the
AUC) is NaN.
"""

from __future__ import annotations

import numpy as np
from scipy import stats

__all__ = ["binary_auc", "classification_metrics"]


def binary_auc(scores: np.ndarray, positive: np.ndarray) -> float:
    """Mann-Whitney AUC of `scores [N]` for the bool `positive [N]`: U / (n1 n0), ties 1/2;
    NaN unless both groups are non-empty."""
    scores = np.asarray(scores, np.float64)
    positive = np.asarray(positive, bool)
    n1, n0 = int(positive.sum()), int((~positive).sum())
    if not n1 or not n0:
        return float("nan")
    ranks = stats.rankdata(scores)  # average ranks: a tie counts 1/2
    u = ranks[positive].sum() - n1 * (n1 + 1) / 2.0
    return float(u / (n1 * n0))


def _rate(hit: np.ndarray, of: np.ndarray) -> float:
    n = int(of.sum())
    return float((hit & of).sum() / n) if n else float("nan")


def classification_metrics(probs: np.ndarray, targets: np.ndarray) -> dict:
    """`probs [N, C]` (class probabilities per case) and int `targets [N]` -> {"auc",
    "accuracy", "sensitivity", "specificity", "num_cases"} (see the module docstring)."""
    probs = np.asarray(probs, np.float64)
    targets = np.asarray(targets, np.int64)
    if probs.ndim != 2 or probs.shape[0] != targets.shape[0] or probs.shape[1] < 2:
        raise ValueError(
            f"classification_metrics: probs {probs.shape} must be [N, C >= 2] and targets "
            f"{targets.shape} [N]."
        )
    pred = probs.argmax(axis=1)
    classes = [1] if probs.shape[1] == 2 else range(probs.shape[1])
    aucs, sens, spec = [], [], []
    for k in classes:
        pos = targets == k
        aucs.append(binary_auc(probs[:, k], pos))
        sens.append(_rate(pred == k, pos))
        spec.append(_rate(pred != k, ~pos))

    def mean(values):
        finite = [v for v in values if np.isfinite(v)]
        return float(np.mean(finite)) if finite else float("nan")

    return {
        "auc": mean(aucs),
        "accuracy": float((pred == targets).mean()) if len(targets) else float("nan"),
        "sensitivity": mean(sens),
        "specificity": mean(spec),
        "num_cases": int(len(targets)),
    }
