"""Connected components of label maps: the largest one, nnU-Net's rules, top-K and volume.

Label maps are integer `[X, Y, (Z)]` arrays (any spatial rank), 0 = background.

Connectivity: full (`generate_binary_structure(ndim, ndim)`: 8-neighbourhood in 2D, 26 in
3D) by default, as nnU-Net (skimage `label` with `connectivity=None`).

Ties: when several components share a size, the one with the lowest `scipy.ndimage.label`
index ranks first, i.e. the one whose first voxel comes first in C (raster) order.
nnU-Net (acvl_utils `remove_all_but_largest_component`) keeps all tied components instead;
the two differ only on exact ties.

Memory: each mask is cropped to its bounding box before labelling; `ndimage.label` gives
int32 labels and component sizes are counted in slabs, so no full-volume int64 array is made.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy import ndimage

from jaxseg.errors import ConfigError, DataError

_COUNT_CHUNK = 1 << 22  # voxels per bincount call: bounds its int64 temporary to 32 MB


def bounding_box(mask: np.ndarray, margin: Sequence[int] | int = 0) -> tuple[slice, ...]:
    """Slices of the bounding box of a non-empty bool mask, grown by `margin` voxels per
    axis and clipped to the array."""
    margins = [int(margin)] * mask.ndim if np.isscalar(margin) else [int(m) for m in margin]
    box = []
    for axis in range(mask.ndim):
        others = tuple(a for a in range(mask.ndim) if a != axis)
        hits = np.flatnonzero(mask.any(axis=others))
        lo = max(int(hits[0]) - margins[axis], 0)
        hi = min(int(hits[-1]) + 1 + margins[axis], mask.shape[axis])
        box.append(slice(lo, hi))
    return tuple(box)


def _component_sizes(labelled: np.ndarray, n: int) -> np.ndarray:
    """Voxel count per label `0..n` of an int label array; int64 `[n + 1]`."""
    flat = labelled.reshape(-1)
    counts = np.zeros(n + 1, dtype=np.int64)
    # np.bincount casts its input to intp; chunks keep that copy small.
    for start in range(0, flat.size, _COUNT_CHUNK):
        counts += np.bincount(flat[start : start + _COUNT_CHUNK], minlength=n + 1)
    return counts


def _structure(ndim: int, connectivity: Any, what: str) -> np.ndarray:
    conn = ndim if connectivity is None else connectivity
    if (
        isinstance(conn, bool)
        or not isinstance(conn, int | np.integer)
        or not 1 <= conn <= max(ndim, 1)
    ):
        raise ConfigError(
            f"{what}: connectivity={connectivity!r}; use None or an int in "
            f"1..{ndim} for a {ndim}D mask."
        )
    return ndimage.generate_binary_structure(ndim, int(conn))


def largest_component(mask: np.ndarray, *, connectivity: int | None = None) -> np.ndarray:
    """The largest connected component of `mask` (nonzero = inside).

    Args:
      mask: `[*S]` bool (other dtypes: nonzero is inside).
      connectivity: neighbours as in `generate_binary_structure(ndim, connectivity)`,
        1..ndim (1: face neighbours only); None (default): full, `ndim`, as nnU-Net.

    Returns:
      bool `[*S]`, True on the largest component only; ties go to the lowest
      `ndimage.label` index (first in C order). An empty mask gives an empty mask.
    """
    _structure(np.ndim(mask), connectivity, "largest_component")  # its own error message
    return keep_top_components(mask, top_k=1, connectivity=connectivity)


def keep_top_components(
    mask: np.ndarray,
    *,
    top_k: int | None = None,
    min_voxels: float = 0,
    connectivity: int | None = None,
) -> np.ndarray:
    """The components of `mask` among the `top_k` largest AND of at least `min_voxels`.

    Args:
      mask: `[*S]` bool (nonzero is inside).
      top_k: keep at most this many components, largest first (ties: lowest
        `ndimage.label` index first); None: no limit.
      min_voxels: drop components with fewer voxels than this.
      connectivity: as in `largest_component`.

    Returns:
      bool `[*S]`.
    """
    mask = np.asarray(mask).astype(bool, copy=False)
    structure = _structure(mask.ndim, connectivity, "keep_components")
    out = np.zeros(mask.shape, dtype=bool)
    if not mask.any():
        return out
    box = bounding_box(mask)
    sub = mask[box]
    labelled, n = ndimage.label(sub, structure=structure)
    sizes = _component_sizes(labelled, n)
    keep = np.zeros(n + 1, dtype=bool)
    # Stable sort on -size: equal sizes keep the label order, so ties go to the first.
    order = np.argsort(-sizes[1:], kind="stable") + 1
    if top_k is not None:
        order = order[: int(top_k)]
    keep[order] = sizes[order] >= min_voxels
    if keep[1:].all():
        out[box] = sub
    else:
        out[box] = keep[labelled]
    return out


def check_labels(labels: Any, what: str) -> np.ndarray:
    """`labels` as an integer array; a DataError for a float (probability) map."""
    labels = np.asarray(labels)
    if not np.issubdtype(labels.dtype, np.integer):
        raise DataError(
            f"{what}: labels have dtype {labels.dtype}; postprocessing needs an integer label "
            "map (take the argmax of probabilities first)."
        )
    return labels


def check_classes(classes: Any, what: str, error: type[Exception] = ConfigError) -> list[int]:
    """`classes` as a list of foreground class indices (ints >= 1)."""
    try:
        out = [int(k) for k in classes]
        ok = all(k >= 1 and float(k) == float(c) for k, c in zip(out, classes))
    except (TypeError, ValueError):
        ok = False
    if not ok or isinstance(classes, str | bytes):
        raise error(f"{what}: classes={classes!r}; expected a list of foreground labels >= 1.")
    return out


def keep_largest(labels: np.ndarray, *, foreground: bool, classes: Sequence[int]) -> np.ndarray:
    """nnU-Net's largest-component rules on a label map; the input is not modified.

    Args:
      labels: int `[*S]` label map, 0 = background.
      foreground: (a) keep only the largest component of all foreground (`labels > 0`)
        taken together; the rest of the foreground becomes 0.
      classes: (b) for each class `k` here, in this order, after (a): class-`k` voxels
        outside the largest component of `labels == k` become 0.

    Returns:
      int `[*S]`, same dtype as `labels`.
    """
    labels = check_labels(labels, "keep_largest")
    classes = check_classes(classes, "keep_largest")
    out = labels.copy()
    if foreground:
        fg = out > 0
        out[fg & ~largest_component(fg)] = 0
    for k in classes:
        m = out == k
        out[m & ~largest_component(m)] = 0
    return out


def keep_components(
    labels: np.ndarray,
    spacing: Sequence[float],
    *,
    top_k: int | None = None,
    min_volume_mm3: float = 0.0,
    classes: Sequence[int] | None = None,
    foreground: bool = False,
    connectivity: int | None = None,
) -> np.ndarray:
    """Connected-component false-positive removal; removed voxels become background 0.

    Args:
      labels: int `[*S]` label map.
      spacing: mm per axis (a voxel's volume is their product; in 2D it is an area, mm^2).
      top_k: keep the `top_k` largest components (None: all).
      min_volume_mm3: drop components smaller than this volume (mm^3; mm^2 in 2D).
      classes: with `foreground=False`, the classes handled, each on its own mask
        `labels == k`, in this order (None: every class present, 1..max).
      foreground: True: one pass over the components of all foreground `labels > 0`
        taken together (`classes` is then ignored).
      connectivity: as in `largest_component` (None: full).

    Returns:
      int `[*S]`, same dtype; the input is not modified.
    """
    labels = check_labels(labels, "keep_components")
    if len(spacing) != labels.ndim:
        raise DataError(f"keep_components: spacing {tuple(spacing)} for a {labels.ndim}D map.")
    voxel = float(np.prod(np.asarray(spacing, np.float64)))
    # A voxel count below which a component is too small; the tolerance keeps a component
    # of exactly min_volume_mm3 (e.g. 0.1 mm^3 voxels) from being lost to rounding.
    min_voxels = min_volume_mm3 / voxel * (1 - 1e-9) if min_volume_mm3 > 0 else 0
    out = labels.copy()
    if foreground:
        fg = out > 0
        out[
            fg
            & ~keep_top_components(
                fg, top_k=top_k, min_voxels=min_voxels, connectivity=connectivity
            )
        ] = 0
        return out
    if classes is None:
        classes = range(1, int(out.max()) + 1) if out.size else ()
    for k in check_classes(list(classes), "keep_components"):
        m = out == k
        if m.any():
            kept = keep_top_components(
                m, top_k=top_k, min_voxels=min_voxels, connectivity=connectivity
            )
            out[m & ~kept] = 0
    return out
