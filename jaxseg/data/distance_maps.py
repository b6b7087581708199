"""Signed distance maps of label maps, for the boundary loss (host side, scipy).

Kervadec et al. 2019 ("Boundary loss for highly unbalanced segmentation", their
`one_hot2dist`): for each foreground class k with mask G_k,

    phi_k = edt(~G_k) * ~G_k - (edt(G_k) - 1) * G_k

where `edt(M)` is, at each voxel of M, the Euclidean distance to the nearest voxel outside
M (`scipy.ndimage.distance_transform_edt`, in voxels or, with `spacing`, in its units). So
phi_k > 0 outside the class (its distance to it), and <= 0 inside (the voxels on its inner
boundary are 0, deeper ones negative). A class absent from the map, or filling all of it,
has no boundary there: phi_k = 0.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage

__all__ = ["signed_distance_maps"]


def signed_distance_maps(
    label: np.ndarray, num_classes: int, spacing: Sequence[float] | None = None
) -> np.ndarray:
    """Per foreground class, the signed distance map of one label map.

    Args:
      label: int `[X, Y, (Z)]`, values in `[0, num_classes)`.
      num_classes: K, including background 0.
      spacing: voxel size per axis; None measures in voxels (as the training patches, which
        are on the model's grid, do).

    Returns:
      float32 `[X, Y, (Z), K - 1]`; channel `k - 1` is phi_k of the module docstring.
    """
    label = np.asarray(label)
    out = np.zeros((*label.shape, num_classes - 1), np.float32)
    sampling = None if spacing is None else tuple(float(s) for s in spacing)
    for k in range(1, num_classes):
        inside = label == k
        if not inside.any() or inside.all():
            continue
        outside = ~inside
        phi = ndimage.distance_transform_edt(outside, sampling=sampling) * outside
        phi -= (ndimage.distance_transform_edt(inside, sampling=sampling) - 1.0) * inside
        out[..., k - 1] = phi
    return out
