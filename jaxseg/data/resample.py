"""Resampling to a target spacing and back, and cropping to the nonzero region (numpy/scipy).

Every grid here is pixel-centre aligned, as in nnU-Net and `skimage.transform.resize`:
a grid of `n` voxels resampled to `m` keeps its outer faces (voxel -0.5 and n-0.5), so
output voxel `j` samples input coordinate `(j + 0.5) * n / m - 0.5`, and coordinates
outside the image take the nearest edge voxel (skimage's `mode="edge"`).

- `resample_image`: per channel, cubic B-spline (order 3) without anti-aliasing, clipped
  to the channel's input range, as nnU-Net's `resample_data_or_seg` with
  `resize(order=3, mode="edge", anti_aliasing=False)` (whose default `clip=True` clips).
- `resample_label`: each class present in the case is resampled as a one-hot with order 1
  and the output takes the argmax; a class the case lacks scores 0 everywhere and so can
  never win (nnU-Net thresholds each one-hot at 0.5 instead, which can leave voxels
  unassigned).
- `resample_probabilities`: back to the original grid, linear per class (nnU-Net's
  softmax export: `resample_data_or_seg_to_shape(order=1, order_z=0)`, which it applies
  to the logits; this works on either).
- "Separate z" (nnU-Net): when the source or the target spacing is anisotropic (the
  coarsest spacing more than `threshold` times the finest, on exactly one axis), the
  other axes are resampled slice by slice with the interpolation order and the coarse
  axis by nearest neighbour, so that no value is interpolated across thick slices. Going
  forward the source spacing is checked first, going back the spacing of the grid being
  resampled (nnU-Net's order).

Memory: one channel or class at a time, in float32; cubic interpolation needs one padded
float32 copy of the channel for its spline coefficients (scipy's own prefilter would
make a float64 one).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from scipy import ndimage as ndi

from jaxseg.errors import DataError

__all__ = [
    "target_shape",
    "anisotropic_axis",
    "resample_image",
    "resample_label",
    "resample_probabilities",
    "vanished_classes",
    "resampled_affine",
    "nonzero_box",
    "nonzero_mask",
    "crop",
    "uncrop",
]

ANISOTROPY_THRESHOLD = 3.0
# Edge padding before the spline prefilter, as scipy.ndimage does for mode="nearest".
_SPLINE_PAD = 12


# ----------------------------------------------------------------------------- checks


def _spacing(spacing, dims: int, what: str) -> tuple[float, ...]:
    try:
        values = tuple(float(s) for s in spacing)
    except (TypeError, ValueError) as e:
        raise DataError(f"{what} {spacing!r}: must be {dims} numbers.") from e
    if len(values) != dims:
        raise DataError(f"{what} {values}: has {len(values)} values for a {dims}D image.")
    if not all(math.isfinite(s) and s > 0 for s in values):
        raise DataError(f"{what} {values}: every value must be finite and > 0.")
    return values


def _shape(shape, dims: int, what: str) -> tuple[int, ...]:
    values = tuple(int(s) for s in shape)
    if len(values) != dims or any(s < 1 for s in values):
        raise DataError(f"{what} {values}: must be {dims} sizes >= 1.")
    return values


# ----------------------------------------------------------------------------- grids


def target_shape(shape: Sequence[int], spacing, target_spacing) -> tuple[int, ...]:
    """Grid size covering the same extent at `target_spacing`: `round(shape * spacing /
    target)` per axis (Python rounding, as nnU-Net's `compute_new_shape`), at least 1."""
    dims = len(shape)
    shape = _shape(shape, dims, "shape")
    spacing = _spacing(spacing, dims, "spacing")
    target_spacing = _spacing(target_spacing, dims, "target spacing")
    # nnU-Net's operation order (spacing / target * shape) decides exact .5 ties alike.
    return tuple(max(1, int(round(s / t * n))) for n, s, t in zip(shape, spacing, target_spacing))


def anisotropic_axis(spacing, threshold: float = ANISOTROPY_THRESHOLD) -> int | None:
    """The coarse axis when `max(spacing) > threshold * min(spacing)` and exactly one axis
    has the largest spacing (nnU-Net's `get_do_separate_z` and `get_lowres_axis`), else
    None (e.g. (0.24, 1.25, 1.25) has two coarse axes: no separate axis)."""
    spacing = _spacing(spacing, len(spacing), "spacing")
    if max(spacing) <= threshold * min(spacing):
        return None
    coarse = [i for i, s in enumerate(spacing) if s == max(spacing)]
    return coarse[0] if len(coarse) == 1 else None


def _separate_axis(first, second, threshold: float) -> int | None:
    axis = anisotropic_axis(first, threshold)
    return axis if axis is not None else anisotropic_axis(second, threshold)


def _nearest_indices(n: int, m: int) -> np.ndarray:
    """Source index of each of `m` output voxels along an axis of `n`, by nearest
    neighbour on the pixel-centre grid, rounded exactly as nnU-Net's
    `map_coordinates(order=0, mode="nearest")` rounds its coordinates."""
    coords = (np.arange(m) + 0.5) * (float(n) / m) - 0.5
    picked = ndi.map_coordinates(
        np.arange(n, dtype=np.float64), coords[None], order=0, mode="nearest"
    )
    return np.clip(picked.astype(np.int64), 0, n - 1)


def _resize(x: np.ndarray, new_shape: tuple[int, ...], order: int, out: np.ndarray, clip: bool):
    """`x` `[*s]` -> `out` `[*new_shape]` (float32, written in place), pixel-centre aligned,
    edge mode; equal to `skimage.transform.resize(x, new_shape, order, mode="edge",
    anti_aliasing=False, clip=clip)` up to float32 rounding."""
    if x.shape == new_shape:
        out[...] = x
        return
    scale = np.array(x.shape, np.float64) / np.array(new_shape, np.float64)
    offset = 0.5 * scale - 0.5
    source = x
    if order > 1:
        # The spline coefficients in float32 on an edge-padded copy: scipy's prefilter
        # does the same padding but allocates float64.
        source = np.pad(x.astype(np.float32, copy=False), _SPLINE_PAD, mode="edge")
        ndi.spline_filter(source, order, output=source, mode="nearest")
        offset = offset + _SPLINE_PAD
    ndi.affine_transform(
        source,
        scale,
        offset=offset,
        output_shape=new_shape,
        output=out,
        order=order,
        mode="nearest",
        prefilter=False,
    )
    if clip and order > 1:
        np.clip(out, np.min(x), np.max(x), out=out)


def _view(array: np.ndarray, axis: int, index: int) -> np.ndarray:
    return array[(slice(None),) * axis + (int(index),)]


def _resample_volume(
    x: np.ndarray, new_shape: tuple[int, ...], order: int, axis: int | None, out: np.ndarray
):
    """`x` `[*S]` -> `out` `[*new_shape]` float32 in place: order `order` on every axis, or
    (with `axis`) slice by slice with `order` and nearest neighbour along `axis`, each
    slice clipped to its own range (nnU-Net resizes each slice with skimage)."""
    if axis is None or x.ndim == 1:
        _resize(x, new_shape, order, out, clip=True)
        return
    plane = new_shape[:axis] + new_shape[axis + 1 :]
    picked = _nearest_indices(x.shape[axis], new_shape[axis])
    # Nearest neighbour along the axis only copies slices: resample each source slice
    # that is used once, into every output slice that takes it.
    for source in np.unique(picked):
        targets = np.flatnonzero(picked == source)
        first = _view(out, axis, targets[0])
        _resize(_view(x, axis, source), plane, order, first, clip=True)
        for t in targets[1:]:
            _view(out, axis, t)[...] = first


# ----------------------------------------------------------------------------- resampling


def resample_image(
    image: np.ndarray,
    spacing,
    target_spacing,
    *,
    order: int = 3,
    threshold: float = ANISOTROPY_THRESHOLD,
) -> np.ndarray:
    """Image `[*S, C]` at `spacing` -> float32 `[*S', C]` at `target_spacing`, with
    `S' = target_shape(S, spacing, target_spacing)`.

    Per channel, spline interpolation of `order` (3: cubic), clipped to the channel's
    range; nearest neighbour along the coarse axis when either spacing is anisotropic
    (see the module docstring). When `S' == S` the image is returned as float32 (no copy
    if it already is).
    """
    image = np.asarray(image)
    if image.ndim < 2:
        raise DataError(f"image of shape {image.shape}: expected [*S, C] channels-last.")
    dims = image.ndim - 1
    spacing = _spacing(spacing, dims, "spacing")
    target_spacing = _spacing(target_spacing, dims, "target spacing")
    new_shape = target_shape(image.shape[:-1], spacing, target_spacing)
    if new_shape == image.shape[:-1]:
        return image.astype(np.float32, copy=False)
    axis = _separate_axis(spacing, target_spacing, threshold)
    out = np.empty((*new_shape, image.shape[-1]), np.float32)
    for c in range(image.shape[-1]):
        _resample_volume(image[..., c], new_shape, order, axis, out[..., c])
    return out


def resample_label(
    label: np.ndarray,
    spacing,
    target_spacing,
    *,
    classes: Sequence[int] | None = None,
    threshold: float = ANISOTROPY_THRESHOLD,
) -> np.ndarray:
    """Label map `[*S]` (int) -> int32 `[*S']` at `target_spacing`.

    Each class present is resampled as a one-hot with order 1 (nearest along the coarse
    axis of anisotropic data) and each voxel takes the class scoring highest (ties: the
    smaller class value), so only classes of the input can appear. `classes`: the values
    to expect (default: those present); a value present but not listed is a DataError.
    A class smaller than about one target voxel can vanish: check `vanished_classes`.
    """
    label = np.asarray(label)
    if not np.issubdtype(label.dtype, np.integer) and label.dtype != bool:
        raise DataError(f"label of dtype {label.dtype}: expected integer class values.")
    dims = label.ndim
    spacing = _spacing(spacing, dims, "spacing")
    target_spacing = _spacing(target_spacing, dims, "target spacing")
    new_shape = target_shape(label.shape, spacing, target_spacing)
    present = np.unique(label)
    if classes is not None:
        unlisted = sorted(set(present.tolist()) - {int(c) for c in classes})
        if unlisted:
            raise DataError(
                f"label holds values {unlisted} that are not among the classes "
                f"{sorted(int(c) for c in classes)}."
            )
    if new_shape == label.shape:
        return label.astype(np.int32, copy=False)
    if present.size == 1:
        return np.full(new_shape, present[0], np.int32)
    axis = _separate_axis(spacing, target_spacing, threshold)
    result = np.empty(new_shape, np.int32)
    best = np.full(new_shape, -np.inf, np.float32)
    score = np.empty(new_shape, np.float32)
    for value in present:
        _resample_volume((label == value).astype(np.float32), new_shape, 1, axis, score)
        wins = score > best
        result[wins] = value
        np.maximum(best, score, out=best)
    return result


def vanished_classes(before: np.ndarray, after: np.ndarray) -> list[int]:
    """Class values present in `before` but absent from `after` (e.g. a structure smaller
    than one target voxel lost by `resample_label`), sorted."""
    return sorted(set(np.unique(before).tolist()) - set(np.unique(after).tolist()))


def resample_probabilities(
    probs: np.ndarray,
    shape: Sequence[int],
    *,
    spacing=None,
    target_spacing=None,
    threshold: float = ANISOTROPY_THRESHOLD,
) -> np.ndarray:
    """Class scores `[*S', K]` (probabilities or logits) on the resampled grid -> float32
    `[*shape, K]` on the original grid, linear per class.

    `spacing` (the original grid's) and `target_spacing` (that of `probs`), the same pair
    as given to `resample_image`, enable nnU-Net's export rule: nearest neighbour along
    the coarse axis when either is anisotropic. Without them every axis is linear. Memory:
    the output plus one class at a time.
    """
    probs = np.asarray(probs)
    if probs.ndim < 2:
        raise DataError(f"probabilities of shape {probs.shape}: expected [*S, K].")
    dims = probs.ndim - 1
    shape = _shape(shape, dims, "shape")
    if (spacing is None) != (target_spacing is None):
        raise DataError("resample_probabilities: give both spacing and target_spacing, or neither.")
    axis = None
    if spacing is not None:
        spacing = _spacing(spacing, dims, "spacing")
        target_spacing = _spacing(target_spacing, dims, "target spacing")
        axis = _separate_axis(target_spacing, spacing, threshold)
    if shape == probs.shape[:-1]:
        return probs.astype(np.float32, copy=False)
    out = np.empty((*shape, probs.shape[-1]), np.float32)
    for k in range(probs.shape[-1]):
        _resample_volume(probs[..., k], shape, 1, axis, out[..., k])
    return out


def resampled_affine(
    affine: np.ndarray, old_shape: Sequence[int], new_shape: Sequence[int]
) -> np.ndarray:
    """Voxel-to-world 4x4 of a grid of `new_shape` covering the same extent as `old_shape`
    under `affine`, pixel-centre aligned: new voxel `j` sits at old voxel coordinate
    `(j + 0.5) * old / new - 0.5`. Axes beyond `len(shape)` (2D) are unchanged."""
    affine = np.asarray(affine, np.float64)
    if affine.shape != (4, 4):
        raise DataError(f"affine of shape {affine.shape}: expected 4x4.")
    dims = len(old_shape)
    if not 1 <= dims <= 3:
        raise DataError(f"shape {tuple(old_shape)}: expected 1 to 3 spatial axes.")
    old = np.array(_shape(old_shape, dims, "old shape"), np.float64)
    new = np.array(_shape(new_shape, dims, "new shape"), np.float64)
    scale = old / new
    out = affine.copy()
    out[:3, :dims] = affine[:3, :dims] * scale
    out[:3, 3] = affine[:3, 3] + affine[:3, :dims] @ (0.5 * scale - 0.5)
    return out


# ----------------------------------------------------------------------------- cropping


def nonzero_mask(image: np.ndarray) -> np.ndarray:
    """bool `[*S]`: voxels where any channel of `image` `[*S, C]` is nonzero, with holes
    filled (`scipy.ndimage.binary_fill_holes`), as nnU-Net's `create_nonzero_mask`."""
    image = np.asarray(image)
    return ndi.binary_fill_holes(np.any(image != 0, axis=-1))


def nonzero_box(image: np.ndarray) -> tuple[slice, ...]:
    """Bounding box (one slice per spatial axis) of `nonzero_mask(image)` for an image
    `[*S, C]`; the whole image when nothing is nonzero.

    Filling holes never moves the box (a background voxel outside the box lies in the
    background slab that reaches the image border, so it is no hole), so the box is
    taken from the unfilled mask, which is much cheaper.
    """
    image = np.asarray(image)
    if image.ndim < 2:
        raise DataError(f"image of shape {image.shape}: expected [*S, C] channels-last.")
    mask = np.any(image != 0, axis=-1)
    if not mask.any():
        return tuple(slice(0, n) for n in mask.shape)
    box = []
    for axis in range(mask.ndim):
        others = tuple(a for a in range(mask.ndim) if a != axis)
        hit = np.flatnonzero(mask.any(axis=others))
        box.append(slice(int(hit[0]), int(hit[-1]) + 1))
    return tuple(box)


def _check_box(box: Sequence[slice], shape: tuple[int, ...], what: str):
    if len(box) > len(shape):
        raise DataError(f"{what}: box of {len(box)} axes for an array of shape {shape}.")
    for s, n in zip(box, shape):
        if not (isinstance(s, slice) and s.step in (None, 1)):
            raise DataError(f"{what}: box {tuple(box)} must hold unit-step slices.")
        start, stop = s.start or 0, n if s.stop is None else s.stop
        if not 0 <= start < stop <= n:
            raise DataError(f"{what}: box {tuple(box)} lies outside shape {shape}.")


def crop(array: np.ndarray, box: Sequence[slice]) -> np.ndarray:
    """`array` `[*S, ...]` -> the view `[*s, ...]` inside `box` (spatial axes first)."""
    array = np.asarray(array)
    _check_box(box, array.shape, "crop")
    return array[tuple(box)]


def uncrop(array: np.ndarray, box: Sequence[slice], shape: Sequence[int], fill=0) -> np.ndarray:
    """Undo `crop`: `array` `[*s, ...]` placed at `box` in a new `[*shape, ...]` array of
    `array`'s dtype, `fill` elsewhere."""
    array = np.asarray(array)
    shape = tuple(int(n) for n in shape)
    _check_box(box, shape, "uncrop")
    if len(shape) != len(box) or array.ndim < len(box):
        raise DataError(
            f"uncrop: box {tuple(box)} and shape {shape} must name the same spatial axes "
            f"as the array of shape {array.shape}."
        )
    sizes = tuple(
        (s.stop if s.stop is not None else n) - (s.start or 0) for s, n in zip(box, shape)
    )
    if array.shape[: len(box)] != sizes:
        raise DataError(f"uncrop: array of shape {array.shape} does not fit box {tuple(box)}.")
    out = np.full((*shape, *array.shape[len(box) :]), fill, dtype=array.dtype)
    out[tuple(box)] = array
    return out
