"""Normalised surface Dice (NSD) with DeepMind's `surface-distance` surface elements.

The surface of a mask is made of the 2^d-voxel cubes (2x2 squares in 2D) of the mask padded
by one background voxel on every side whose corners are neither all inside nor all outside.
Each such cube carries the contour length (2D: marching squares) or surface area (3D:
marching cubes, Lorensen's cases, a configuration with more than four corners inside
meshed as its complement) of the element it holds, in mm for the given spacing, and sits at
its cube's position on the (shifted) voxel grid. This is the definition of Nikolov et al.
2021 (`surface_distance.compute_surface_distances`), which the tests compare against.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import numpy as np
from scipy import ndimage
from scipy.spatial import cKDTree

__all__ = ["surface_elements", "surface_dice"]

# Per 3D cube code 1..254 (bit i is corner i of `np.ndindex(2, 2, 2)`), the marching-cubes
# triangles' area vectors |n| at unit spacing, times 8 ("xyz" digits, triangles separated by
# spaces, codes by commas). Generated with `skimage.measure.marching_cubes(method=
# "lorensen")` on each 2x2x2 configuration (see `tests/test_metrics.py`, which regenerates
# it); scikit-image is not a runtime dependency, so the table is stored.
_CUBE_TRIANGLES = (
    "111,111,220 220,111,202 202,111 111,111 222 400,111,111 111,202 202,111 222 400,220 220,"
    "111 222 400,111 222 400,400 400,111,022 022,111 111,111 222 040,111 111,111 222 004,"
    "111 111 111,111 222 222 111,111 111,022 022 111,202 202 111,202 333 022 111,220 220 111,"
    "220 333 022 111,111 222 400 111,111 222 400,111,111 111,022 022,111 222 040,111 111,"
    "202 202 111,022 022 111,022 333 202 111,111 111,111 111 111,111 222 004,111 222 222 111,"
    "220 220 111,111 111 222 400,022 333 220 111,111 222 400,220 220,111 222 040,111 222 040,"
    "040 040,220 220 111,220 333 202 111,111 111 222 040,111 222 040,220 220 111,"
    "111 111 222 040,202 333 220 111,111 222 040,220 220 220 220,220 220 111,220 220 111,"
    "220 220,111,111 111,111 111,220 220 111,022 022,111 222 004,022 022 111,022 333 220 111,"
    "111 111,111 111 111,202 202 111,111 111 222 400,111 222 040,111 222 222 111,"
    "022 333 202 111,111 222 400,202 202,111 222 004,202 202 111,202 333 220 111,111 222 004,"
    "004 004,111 222 004 111,111 222 004,202 202 111,111 111 222 004,202 202 202 202,"
    "202 202 111,220 333 202 111,111 222 004,202 202 111,202 202,111 111,111 111 111,"
    "022 022 111,111 111 222 040,022 022 111,111 222 004 111,022 022 022 022,022 022 111,"
    "111 111 111,111 111 111 111,111 111 222 004,111 111 111,111 111 222 040,111 111 111,"
    "022 022 111,111 111,111 222 400,111 222 222 111,202 333 022 111,111 222 040,"
    "220 333 022 111,111 222 004,022 022 111,022 022,111 222 400 111,111 111 111,202 202 111,"
    "111 111,220 220 111,111 111,111 111,111,111,111 111,111 111,220 220 111,111 111,"
    "202 202 111,111 111 111,111 111 222 400,022 022,022 022 111,111 222 004,220 333 022 111,"
    "111 222 040,202 333 022 111,111 222 222 111,111 222 400,111 111,022 022 111,111 111 111,"
    "111 222 040 111,111 111 111,111 222 004 111,111 111 111 111,111 111 111,022 022 111,"
    "022 022 022 022,111 111 222 004,022 022 111,111 222 040 111,022 022 111,111 111 111,"
    "111 111,202 202,202 202 111,111 222 004,220 333 202 111,202 202 111,202 202 202 202,"
    "111 222 004 111,202 202 111,111 222 004,111 111 222 004,004 004,111 222 004,"
    "202 333 220 111,202 202 111,111 222 004,202 202,111 222 400,022 333 202 111,"
    "111 222 222 111,111 222 040,111 222 400 111,202 202 111,111 111 111,111 111,"
    "022 333 220 111,022 022 111,111 222 004,022 022,220 220 111,111 111,111 111,111,220 220,"
    "220 220 111,220 220 111,220 220 220 220,111 222 040,202 333 220 111,111 222 040 111,"
    "220 220 111,111 222 040,111 222 040 111,220 333 202 111,220 220 111,040 040,111 222 040,"
    "111 222 040,220 220,111 222 400,022 333 220 111,111 222 400 111,220 220 111,"
    "111 222 222 111,111 222 004,111 111 111,111 111,022 333 202 111,022 022 111,202 202 111,"
    "111 111,111 222 040,022 022,111 111,111,111 222 400,111 111 222 400,220 333 022 111,"
    "220 220 111,202 333 022 111,202 202 111,022 022 111,111 111,111 222 222 111,111 111 111,"
    "111 222 004,111 111,111 222 040,111 111,022 022,111,400 400,111 222 400,111 222 400,"
    "220 220,111 222 400,202 202,111 111,111,111 222 400,111 111,202 202,111,220 220,111,111"
)


@functools.cache
def _cube_normals() -> tuple[np.ndarray, ...]:
    """Per code 0..255, the `[T, 3]` float64 area vectors of its triangles at unit spacing."""
    codes = _CUBE_TRIANGLES.split(",")
    empty = np.zeros((0, 3))
    out = [empty]
    for text in codes:
        tris = [[int(ch) / 8.0 for ch in tri] for tri in text.split()]
        out.append(np.asarray(tris, np.float64).reshape(-1, 3))
    out.append(empty)
    assert len(out) == 256
    return tuple(out)


def _square_segments(code: int) -> np.ndarray:
    """The marching-squares segments of one 2x2 code as `[S, 2]` half-voxel direction
    vectors (bit i is corner i of `np.ndindex(2, 2)`): a segment joins the midpoints of two
    edges whose corners differ; with diagonal corners inside, two segments cut the corners."""
    inside = [(code >> i) & 1 for i in range(4)]
    n_in = sum(inside)
    if n_in in (0, 4):
        return np.zeros((0, 2))
    if n_in == 2 and inside[0] == inside[3]:  # diagonal: two corner-cutting segments
        return np.asarray([[0.5, 0.5], [0.5, 0.5]])
    if n_in == 2:  # one side inside: a straight segment across the square
        along = 1 if inside[0] == inside[1] else 0  # corners 0, 1 differ along axis 1
        seg = np.zeros((1, 2))
        seg[0, along] = 1.0
        return seg
    return np.asarray([[0.5, 0.5]])  # one corner in or out: one corner-cutting segment


def _element_sizes(spacing: tuple[float, ...]) -> np.ndarray:
    """Per cube code, its contour length (2D) or surface area (3D) in mm for `spacing`."""
    if len(spacing) == 2:
        scale = np.asarray(spacing, np.float64)
        return np.asarray(
            [np.linalg.norm(_square_segments(c) * scale, axis=1).sum() for c in range(16)]
        )
    s0, s1, s2 = spacing
    scale = np.asarray([s1 * s2, s0 * s2, s0 * s1], np.float64)  # area vectors scale so
    return np.asarray([np.linalg.norm(n * scale, axis=1).sum() for n in _cube_normals()])


def _cube_codes(mask: np.ndarray) -> np.ndarray:
    """Codes of all 2^d-voxel cubes of `mask` padded by one background voxel: `[*(S + 1)]`."""
    padded = np.pad(mask.astype(np.uint8), 1)
    codes = np.zeros(tuple(n - 1 for n in padded.shape), np.uint8)
    for bit, corner in enumerate(np.ndindex(*(2,) * mask.ndim)):
        window = tuple(slice(c, c + n - 1) for c, n in zip(corner, padded.shape))
        codes |= padded[window] << bit
    return codes


def surface_elements(mask: np.ndarray, spacing: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """Boundary cubes of a non-empty bool mask `[X, Y, (Z)]`: `(points [M, d] mm, sizes [M])`,
    the cube positions scaled by `spacing` and their contour lengths / areas in mm(^2)."""
    spacing = tuple(float(s) for s in spacing)
    codes = _cube_codes(np.asarray(mask, bool))
    full = (1 << (2**mask.ndim)) - 1
    border = (codes != 0) & (codes != full)
    sizes = _element_sizes(spacing)[codes[border]]
    return np.argwhere(border) * np.asarray(spacing, np.float64), sizes


def surface_dice(
    pred: np.ndarray, label: np.ndarray, spacing: Sequence[float], tolerance_mm: float
) -> float:
    """NSD of two non-empty bool masks at `tolerance_mm` (module docstring), in [0, 1]."""
    pred = np.asarray(pred, bool)
    label = np.asarray(label, bool)
    if not pred.any() or not label.any():
        raise ValueError("surface_dice needs two non-empty masks; see the empty-mask policy.")
    # Cropping both to the bounding box of their union moves both surfaces alike.
    box = ndimage.find_objects((pred | label).astype(np.uint8))[0]
    pts_p, a_p = surface_elements(pred[box], spacing)
    pts_g, a_g = surface_elements(label[box], spacing)
    d_pg, _ = cKDTree(pts_g).query(pts_p, k=1)
    d_gp, _ = cKDTree(pts_p).query(pts_g, k=1)
    # A distance equal to tau (e.g. 1.5 mm between voxels 1.2 mm and 0.9 mm apart) counts,
    # whatever the last bit of its float computation says.
    tau = tolerance_mm * (1.0 + 1e-9)
    near = a_p[d_pg <= tau].sum() + a_g[d_gp <= tau].sum()
    return float(near / (a_p.sum() + a_g.sum()))
