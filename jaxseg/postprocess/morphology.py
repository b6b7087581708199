"""Per-class binary morphology on label maps: opening, closing and hole filling, in mm.

Label maps are integer `[X, Y, (Z)]`, 0 = background; `spacing` is mm per axis.

- Structuring element (`ellipsoid_element`): every integer offset `d` with
  `sum((d_i * spacing_i / radius_mm)^2) <= 1`, an ellipsoid in voxels when the spacing is
  anisotropic (a ball of `radius_mm` in mm). Along an axis whose spacing exceeds the
  radius it is one voxel thick. With unit spacing and an integer radius it is exactly
  `skimage.morphology.ball(r)` (3D) / `disk(r)` (2D). Radius 0: the single voxel (no-op).
- Borders follow scikit-image's `binary_opening`/`binary_closing`: erosion treats
  outside the image as inside the mask, dilation as outside, so neither shrinks a
  structure that touches the image border.
- Per class, in the order given (default: every class 1..max present): opening removes
  class-`k` voxels outside the opened mask (they become background 0); closing and hole
  filling add voxels to class `k` only where the map is background, so they never
  overwrite another class (a tumour core inside a tumour's hole stays core).
- `fill_holes`: `scipy.ndimage.binary_fill_holes` semantics (a hole is background not
  face-connected to the image border), in the map's own rank (3D in 3D), or per 2D slice
  across `axis`.

Each mask is cropped to its bounding box plus twice the element's reach before
filtering, which gives the whole-image result (see `_filter_box`) at the cost of the box.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage

from jaxseg.errors import ConfigError, DataError
from jaxseg.postprocess.components import bounding_box, check_classes, check_labels


def ellipsoid_element(radius_mm: float, spacing: Sequence[float]) -> np.ndarray:
    """Bool structuring element `[2r_0 + 1, ..., 2r_n + 1]` of a ball of `radius_mm`
    (mm) on a grid of `spacing` (mm per axis), `r_i = floor(radius_mm / spacing_i)`."""
    radius_mm = check_radius(radius_mm, "ellipsoid_element")
    spacing = np.asarray(spacing, np.float64)
    if np.any(spacing <= 0):
        raise DataError(f"ellipsoid_element: spacing {tuple(spacing)} must be positive.")
    if radius_mm == 0:
        return np.ones((1,) * len(spacing), bool)
    # The 1e-9 keeps offsets that lie exactly on the surface (ball(r)'s own rule is <=).
    reach = np.floor(radius_mm / spacing + 1e-9).astype(int)
    grids = np.meshgrid(*[np.arange(-r, r + 1) * s for r, s in zip(reach, spacing)], indexing="ij")
    dist2 = sum(g**2 for g in grids)
    return dist2 <= radius_mm**2 * (1 + 1e-9)


def check_radius(radius_mm, what: str) -> float:
    if isinstance(radius_mm, bool) or not isinstance(radius_mm, int | float | np.number):
        raise ConfigError(f"{what}: radius_mm={radius_mm!r}; expected a number of mm >= 0.")
    if not np.isfinite(radius_mm) or radius_mm < 0:
        raise ConfigError(f"{what}: radius_mm={radius_mm!r} is negative or not finite; use >= 0.")
    return float(radius_mm)


def _filter_box(mask: np.ndarray, element: np.ndarray) -> tuple[slice, ...]:
    # Two passes each reach `r` voxels: a voxel of the box's result depends on the mask
    # within 2r of it, so a margin of 2r + 1 past the mask's bounding box is exact.
    margin = [2 * (n // 2) + 1 for n in element.shape]
    return bounding_box(mask, margin)


def binary_open(mask: np.ndarray, element: np.ndarray) -> np.ndarray:
    """scikit-image `binary_opening(mask, element)`: bool `[*S]`."""
    out = np.zeros(mask.shape, bool)
    if not mask.any():
        return out
    box = _filter_box(mask, element)
    eroded = ndimage.binary_erosion(mask[box], element, border_value=1)
    out[box] = ndimage.binary_dilation(eroded, element, border_value=0)
    return out


def binary_close(mask: np.ndarray, element: np.ndarray) -> np.ndarray:
    """scikit-image `binary_closing(mask, element)`: bool `[*S]`."""
    out = np.zeros(mask.shape, bool)
    if not mask.any():
        return out
    box = _filter_box(mask, element)
    dilated = ndimage.binary_dilation(mask[box], element, border_value=0)
    out[box] = ndimage.binary_erosion(dilated, element, border_value=1)
    return out


def _classes(out: np.ndarray, classes, what: str) -> list[int]:
    if classes is None:
        return list(range(1, int(out.max()) + 1)) if out.size else []
    return check_classes(list(classes), what)


def _prepare(labels, spacing, what):
    labels = check_labels(labels, what)
    if len(spacing) != labels.ndim:
        raise DataError(f"{what}: spacing {tuple(spacing)} for a {labels.ndim}D label map.")
    return labels.copy()


def open_labels(
    labels: np.ndarray,
    spacing: Sequence[float],
    radius_mm: float,
    classes: Sequence[int] | None = None,
) -> np.ndarray:
    """Per-class opening: class-`k` voxels the opening removes become 0. int `[*S]`."""
    out = _prepare(labels, spacing, "open")
    element = ellipsoid_element(check_radius(radius_mm, "open"), spacing)
    for k in _classes(out, classes, "open"):
        m = out == k
        out[m & ~binary_open(m, element)] = 0
    return out


def close_labels(
    labels: np.ndarray,
    spacing: Sequence[float],
    radius_mm: float,
    classes: Sequence[int] | None = None,
) -> np.ndarray:
    """Per-class closing: background voxels inside class `k`'s closing become `k`."""
    out = _prepare(labels, spacing, "close")
    element = ellipsoid_element(check_radius(radius_mm, "close"), spacing)
    for k in _classes(out, classes, "close"):
        m = out == k
        out[binary_close(m, element) & (out == 0)] = k
    return out


def _fill(mask: np.ndarray, axis: int | None) -> np.ndarray:
    if axis is None:
        return ndimage.binary_fill_holes(mask)
    filled = np.empty_like(mask)
    for i in range(mask.shape[axis]):
        index = (slice(None),) * axis + (i,)
        filled[index] = ndimage.binary_fill_holes(mask[index])
    return filled


def fill_holes(
    labels: np.ndarray,
    classes: Sequence[int] | None = None,
    axis: int | None = None,
) -> np.ndarray:
    """Per-class hole filling: background voxels in a hole of class `k` become `k`.

    axis: None fills in the map's own rank (3D holes in 3D); an int fills each 2D slice
    across that axis (`labels[..., i, ...]`), as slice-wise annotations have them.
    """
    out = check_labels(labels, "fill_holes").copy()
    if axis is not None and not (
        isinstance(axis, int | np.integer) and not isinstance(axis, bool) and 0 <= axis < out.ndim
    ):
        raise ConfigError(f"fill_holes: axis={axis!r}; use None or an axis in 0..{out.ndim - 1}.")
    for k in _classes(out, classes, "fill_holes"):
        m = out == k
        if not m.any():
            continue
        # A background voxel on the bounding box's face touches background outside it, so
        # it reaches the image border there too: filling the box alone is exact.
        box = bounding_box(m)
        filled = np.zeros_like(m)
        filled[box] = _fill(m[box], None if axis is None else int(axis))
        out[filled & (out == 0)] = k
    return out
