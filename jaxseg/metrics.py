"""Per-case segmentation metrics (host side, numpy/scipy).

`case_metrics(pred, label, num_classes, spacing)` compares two integer label maps of the
same shape `[X, Y, (Z)]` and returns one dict per foreground class `1..K-1` (list index
`i` is class `i + 1`) with the keys `dice, iou, precision, recall, hd95, asd`.
`jaxseg.evaluation.summarize` averages them over cases. Definitions (P = predicted mask of the class,
G = reference mask, TP = |P & G|, FP = |P & ~G|, FN = |~P & G|):

    dice      = 2 TP / (2 TP + FP + FN)
    iou       = TP / (TP + FP + FN)
    precision = TP / (TP + FP)
    recall    = TP / (TP + FN)

Distances are in the units of `spacing` (millimetres for medical images):

- Surface of a mask: `mask & ~binary_erosion(mask, S)` with `S` the face-connected
  structuring element (`generate_binary_structure(ndim, 1)`: 4-neighbourhood in 2D,
  6-neighbourhood in 3D), and everything outside the image counted as background
  (`border_value=0`). So a surface voxel is a mask voxel with at least one face neighbour
  outside the mask or outside the image.
- Directed distances `d(A -> B)`: for every surface voxel of A, the Euclidean distance from
  its centre to the nearest surface-voxel centre of B, coordinates scaled by `spacing`
  (nearest neighbour by `scipy.spatial.cKDTree`).
- `hd95 = max(percentile95(d(P -> G)), percentile95(d(G -> P)))` (as MONAI
  `compute_hausdorff_distance(percentile=95)`; numpy's default linear interpolation).
- `asd` (symmetric average surface distance, as MONAI `symmetric=True`):
  `(sum d(P -> G) + sum d(G -> P)) / (|surface P| + |surface G|)`.

EMPTY-MASK POLICY (a product requirement; no metric is ever NaN, because a NaN silently
drops a missed structure from a mean — MONAI issue 9095):

- Both P and G empty (class absent and correctly not predicted):
  `dice = iou = precision = recall = 1`, `hd95 = asd = 0`.
- Exactly one empty (structure missed: P empty, G not; or a false positive: G empty, P not):
  `dice = iou = 0`; precision and recall follow their formulas, and a 0/0 among them
  (precision when P is empty, recall when G is empty) is defined as 0 — 0/0 counts as 1
  only in the both-empty case. So both are 0 in either one-empty case.
  `hd95 = asd = ` the penalty distance, the image diagonal
  `sqrt(sum((shape * spacing) ** 2))` in the units of `spacing`.
- Both non-empty: the formulas above; every denominator is positive.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage
from scipy.spatial import cKDTree

__all__ = ["METRIC_NAMES", "case_metrics", "surface_voxels", "surface_distances"]

METRIC_NAMES = ("dice", "iou", "precision", "recall", "hd95", "asd")


def surface_voxels(mask: np.ndarray) -> np.ndarray:
    """Boundary voxels of a boolean mask: `mask & ~binary_erosion(mask)`.

    Face connectivity (`generate_binary_structure(ndim, 1)`), outside of the image counted
    as background. Returns a bool array of the mask's shape.
    """
    mask = np.asarray(mask, dtype=bool)
    if not mask.any():
        return np.zeros_like(mask)
    structure = ndimage.generate_binary_structure(mask.ndim, 1)
    eroded = ndimage.binary_erosion(mask, structure=structure, border_value=0)
    return mask & ~eroded


def surface_distances(
    a: np.ndarray, b: np.ndarray, spacing: Sequence[float]
) -> tuple[np.ndarray, np.ndarray]:
    """Directed surface distances `(d(a -> b), d(b -> a))` between two non-empty masks.

    Each is a float64 vector, one entry per surface voxel of the source mask, in the units of
    `spacing`. Both masks must be non-empty.
    """
    a = np.asarray(a, dtype=bool)
    b = np.asarray(b, dtype=bool)
    if not a.any() or not b.any():
        raise ValueError("surface_distances needs two non-empty masks; see the empty-mask policy.")
    # Erosion with border_value=0 only looks inside the mask, so cropping both masks to the
    # bounding box of their union changes nothing but the (cancelling) coordinate offset.
    box = ndimage.find_objects((a | b).astype(np.uint8))[0]
    a, b = a[box], b[box]
    scale = np.asarray(spacing, dtype=np.float64)
    pts_a = np.argwhere(surface_voxels(a)) * scale
    pts_b = np.argwhere(surface_voxels(b)) * scale
    d_ab, _ = cKDTree(pts_b).query(pts_a, k=1)
    d_ba, _ = cKDTree(pts_a).query(pts_b, k=1)
    return np.asarray(d_ab, np.float64), np.asarray(d_ba, np.float64)


def _check_inputs(pred, label, num_classes, spacing):
    pred = np.asarray(pred)
    label = np.asarray(label)
    if pred.shape != label.shape:
        raise ValueError(f"case_metrics: pred shape {pred.shape} != label shape {label.shape}.")
    if pred.ndim not in (2, 3):
        raise ValueError(
            f"case_metrics: expected [X, Y] or [X, Y, Z] label maps, got {pred.shape}."
        )
    if not (np.issubdtype(pred.dtype, np.integer) and np.issubdtype(label.dtype, np.integer)):
        raise ValueError(
            f"case_metrics: pred ({pred.dtype}) and label ({label.dtype}) must be integer label "
            "maps; take the argmax of probabilities first."
        )
    spacing = tuple(float(s) for s in spacing)
    if len(spacing) != pred.ndim or not all(np.isfinite(s) and s > 0 for s in spacing):
        raise ValueError(
            f"case_metrics: spacing {spacing} must be {pred.ndim} positive finite numbers "
            f"(one per spatial axis of {pred.shape})."
        )
    if num_classes < 2:
        raise ValueError(
            f"case_metrics: num_classes={num_classes}; need background plus >= 1 class."
        )
    for name, arr in (("pred", pred), ("label", label)):
        if arr.size and (arr.min() < 0 or arr.max() >= num_classes):
            raise ValueError(
                f"case_metrics: {name} has values in [{arr.min()}, {arr.max()}] outside "
                f"[0, {num_classes}); check num_classes or the label file."
            )
    return pred, label, spacing


def case_metrics(
    pred: np.ndarray, label: np.ndarray, num_classes: int, spacing: Sequence[float]
) -> list[dict[str, float]]:
    """Metrics of one case, one dict per foreground class `1..num_classes-1`.

    Args:
      pred: int `[X, Y, (Z)]` predicted label map.
      label: int `[X, Y, (Z)]` reference label map, same shape.
      num_classes: K, including background 0.
      spacing: voxel size per spatial axis (mm); distances come out in these units.

    Returns:
      A list of `K - 1` dicts with float keys `dice, iou, precision, recall, hd95, asd`;
      see the module docstring for the definitions and the empty-mask policy. Never NaN.
    """
    pred, label, spacing = _check_inputs(pred, label, num_classes, spacing)
    penalty = float(np.sqrt(np.sum((np.asarray(pred.shape) * np.asarray(spacing)) ** 2)))
    rows = []
    for c in range(1, num_classes):
        p = pred == c
        g = label == c
        tp = int(np.count_nonzero(p & g))
        n_p = int(np.count_nonzero(p))
        n_g = int(np.count_nonzero(g))
        fp, fn = n_p - tp, n_g - tp
        if n_p == 0 and n_g == 0:
            rows.append(dict(dice=1.0, iou=1.0, precision=1.0, recall=1.0, hd95=0.0, asd=0.0))
            continue
        dice = 2.0 * tp / (2 * tp + fp + fn)
        iou = tp / (tp + fp + fn)
        precision = tp / n_p if n_p else 0.0
        recall = tp / n_g if n_g else 0.0
        if n_p == 0 or n_g == 0:
            hd95 = asd = penalty
        else:
            d_pg, d_gp = surface_distances(p, g, spacing)
            hd95 = float(max(np.percentile(d_pg, 95), np.percentile(d_gp, 95)))
            asd = float((d_pg.sum() + d_gp.sum()) / (d_pg.size + d_gp.size))
        rows.append(
            dict(
                dice=float(dice),
                iou=float(iou),
                precision=float(precision),
                recall=float(recall),
                hd95=hd95,
                asd=asd,
            )
        )
    return rows
