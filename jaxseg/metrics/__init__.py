"""Per-case segmentation metrics (host side, numpy/scipy).

`case_metrics(pred, label, num_classes, spacing, nsd_tolerance_mm=1.0)` compares two integer
label maps of the same shape `[X, Y, (Z)]` and returns one dict per foreground class `1..K-1`
(list index `i` is class `i + 1`) with the keys of `METRIC_NAMES`.
`jaxseg.evaluation.summarize` averages them over cases. Definitions (P = predicted mask of
the class, G = reference mask, N = voxels in the image, TP = |P & G|, FP = |P & ~G|,
FN = |~P & G|, TN = N - TP - FP - FN, v = the voxel volume prod(spacing)):

    dice         = 2 TP / (2 TP + FP + FN)
    iou          = TP / (TP + FP + FN)
    precision    = TP / (TP + FP)
    recall       = TP / (TP + FN)
    specificity  = TN / (TN + FP)         (the recall of the background ~G)
    fpr          = FP / (TN + FP) = 1 - specificity
    vol_diff_mm3 = v (|P| - |G|)           (signed: > 0 over-segments)
    vol_diff_rel = 2 (|P| - |G|) / (|P| + |G|)   (signed, in [-2, 2]; SimpleITK's
                   volume similarity, relative to the mean of the two volumes)

Distances are in the units of `spacing` (millimetres for medical images):

- Surface of a mask: `mask & ~binary_erosion(mask, S)` with `S` the face-connected
  structuring element (`generate_binary_structure(ndim, 1)`: 4-neighbourhood in 2D,
  6-neighbourhood in 3D), and everything outside the image counted as background
  (`border_value=0`). So a surface voxel is a mask voxel with at least one face neighbour
  outside the mask or outside the image.
- Directed distances `d(A -> B)`: for every surface voxel of A, the Euclidean distance from
  its centre to the nearest surface-voxel centre of B, coordinates scaled by `spacing`
  (nearest neighbour by `scipy.spatial.cKDTree`).
- `hd = max(max d(P -> G), max d(G -> P))`, the (symmetric) Hausdorff distance.
- `hd95 = max(percentile95(d(P -> G)), percentile95(d(G -> P)))` (as MONAI
  `compute_hausdorff_distance(percentile=95)`; numpy's default linear interpolation).
- `asd` (symmetric average surface distance, as MONAI `symmetric=True`):
  `(sum d(P -> G) + sum d(G -> P)) / (|surface P| + |surface G|)`.
- `nsd`, the normalised surface Dice at tolerance tau mm, is DeepMind's `surface-distance`
  definition (Nikolov et al. 2021), which uses its own surface: the 2^d-voxel cubes (2x2 in
  2D) that straddle the mask boundary, each with the contour length / surface area of its
  marching-squares / marching-cubes element, at the cube's position. With `a` those areas
  and `d` the distance of each boundary cube to the nearest boundary cube of the other mask,
  `nsd = (sum a_G[d_G <= tau] + sum a_P[d_P <= tau]) / (sum a_G + sum a_P)`.

EMPTY-MASK POLICY (a product requirement; no metric is ever NaN, because a NaN silently
drops a missed structure from a mean — MONAI issue 9095):

- Both P and G empty (class absent and correctly not predicted):
  `dice = iou = precision = recall = nsd = 1`, `hd = hd95 = asd = 0`, volume differences 0.
- Exactly one empty (structure missed: P empty, G not; or a false positive: G empty, P not):
  `dice = iou = nsd = 0`; precision and recall follow their formulas, and a 0/0 among them
  (precision when P is empty, recall when G is empty) is defined as 0 — 0/0 counts as 1
  only in the both-empty case. So both are 0 in either one-empty case.
  `hd = hd95 = asd = ` the penalty distance, the image diagonal
  `sqrt(sum((shape * spacing) ** 2))` in the units of `spacing`. The volume differences
  follow their formulas: `vol_diff_rel` is -2 for a miss and +2 for a false positive.
- specificity and fpr follow their formulas in all of these cases (TN + FP = |~G| > 0).
  Their own 0/0 arises only when G fills the whole image (~G empty); specificity being the
  recall of ~G, the same rule applies: 1 (fpr 0) if P fills it too, else 0 (fpr 1).
- Both non-empty: the formulas above; every denominator is positive.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage
from scipy.spatial import cKDTree

from jaxseg.metrics.nsd import surface_dice

__all__ = [
    "DEFAULT_NSD_TOLERANCE_MM",
    "METRIC_NAMES",
    "case_metrics",
    "surface_dice",
    "surface_distances",
    "surface_voxels",
]

METRIC_NAMES = (
    "dice",
    "iou",
    "precision",
    "recall",
    "specificity",
    "fpr",
    "hd",
    "hd95",
    "asd",
    "nsd",
    "vol_diff_mm3",
    "vol_diff_rel",
)
DEFAULT_NSD_TOLERANCE_MM = 1.0  # `eval.nsd_tolerance_mm`'s default


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
    pred: np.ndarray,
    label: np.ndarray,
    num_classes: int,
    spacing: Sequence[float],
    *,
    nsd_tolerance_mm: float = DEFAULT_NSD_TOLERANCE_MM,
) -> list[dict[str, float]]:
    """Metrics of one case, one dict per foreground class `1..num_classes-1`.

    Args:
      pred: int `[X, Y, (Z)]` predicted label map.
      label: int `[X, Y, (Z)]` reference label map, same shape.
      num_classes: K, including background 0.
      spacing: voxel size per spatial axis (mm); distances come out in these units.
      nsd_tolerance_mm: the tolerance tau of `nsd`, > 0, in the units of `spacing`.

    Returns:
      A list of `K - 1` dicts with the float keys of `METRIC_NAMES`; see the module
      docstring for the definitions and the empty-mask policy. Never NaN.
    """
    pred, label, spacing = _check_inputs(pred, label, num_classes, spacing)
    tau = float(nsd_tolerance_mm)
    if not (np.isfinite(tau) and tau > 0):
        raise ValueError(
            f"case_metrics: nsd_tolerance_mm={nsd_tolerance_mm}; give a tolerance > 0 mm."
        )
    penalty = float(np.sqrt(np.sum((np.asarray(pred.shape) * np.asarray(spacing)) ** 2)))
    voxel_mm3 = float(np.prod(spacing))
    n_all = pred.size
    rows = []
    for c in range(1, num_classes):
        p = pred == c
        g = label == c
        tp = int(np.count_nonzero(p & g))
        n_p = int(np.count_nonzero(p))
        n_g = int(np.count_nonzero(g))
        fp, fn = n_p - tp, n_g - tp
        negatives = n_all - n_g  # TN + FP
        if negatives:
            specificity, fpr = (negatives - fp) / negatives, fp / negatives
        else:  # G fills the image: specificity is the recall of an empty ~G (module docstring)
            specificity = 1.0 if n_p == n_all else 0.0
            fpr = 1.0 - specificity
        volume = dict(
            vol_diff_mm3=voxel_mm3 * (n_p - n_g),
            vol_diff_rel=2.0 * (n_p - n_g) / (n_p + n_g) if n_p + n_g else 0.0,
        )
        if n_p == 0 and n_g == 0:
            rows.append(
                dict(
                    dice=1.0,
                    iou=1.0,
                    precision=1.0,
                    recall=1.0,
                    specificity=1.0,
                    fpr=0.0,
                    hd=0.0,
                    hd95=0.0,
                    asd=0.0,
                    nsd=1.0,
                    **volume,
                )
            )
            continue
        dice = 2.0 * tp / (2 * tp + fp + fn)
        iou = tp / (tp + fp + fn)
        precision = tp / n_p if n_p else 0.0
        recall = tp / n_g if n_g else 0.0
        if n_p == 0 or n_g == 0:
            hd = hd95 = asd = penalty
            nsd = 0.0
        else:
            d_pg, d_gp = surface_distances(p, g, spacing)
            hd = float(max(d_pg.max(), d_gp.max()))
            hd95 = float(max(np.percentile(d_pg, 95), np.percentile(d_gp, 95)))
            asd = float((d_pg.sum() + d_gp.sum()) / (d_pg.size + d_gp.size))
            nsd = surface_dice(p, g, spacing, tau)
        rows.append(
            dict(
                dice=float(dice),
                iou=float(iou),
                precision=float(precision),
                recall=float(recall),
                specificity=float(specificity),
                fpr=float(fpr),
                hd=hd,
                hd95=hd95,
                asd=asd,
                nsd=float(nsd),
                **{k: float(v) for k, v in volume.items()},
            )
        )
    return rows
