"""Geometry of the on-device augmentation: affine sampling coordinates, linear/nearest
resampling with a constant or edge fill, the elastic displacement field, flips and 90-degree
rotations. Each works on one example (`image [*S, C]`, `label [*S]`)."""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxseg.data.preprocess import PAD_VALUE
from jaxseg.errors import ConfigError

PAD_MODES = ("constant", "nearest")


def rotation_matrix(angles: jax.Array, dims: int) -> jax.Array:
    """Rotation `[dims, dims]` from radians: 2D one angle `[1]` (in the x-y plane); 3D three
    angles `[3]` about the x, y and z axes, composed as `Rx @ Ry @ Rz`."""
    angles = jnp.asarray(angles, jnp.float32)
    if dims == 2:
        c, s = jnp.cos(angles[0]), jnp.sin(angles[0])
        return jnp.array([[c, -s], [s, c]])
    cx, cy, cz = jnp.cos(angles)
    sx, sy, sz = jnp.sin(angles)
    one, zero = jnp.ones_like(cx), jnp.zeros_like(cx)
    rx = jnp.array([[one, zero, zero], [zero, cx, -sx], [zero, sx, cx]])
    ry = jnp.array([[cy, zero, sy], [zero, one, zero], [-sy, zero, cy]])
    rz = jnp.array([[cz, -sz, zero], [sz, cz, zero], [zero, zero, one]])
    return rx @ ry @ rz


def sampling_matrix(angles: jax.Array, zoom: jax.Array, dims: int) -> jax.Array:
    """`M = R(angles) @ diag(1 / zoom)` `[dims, dims]`: the output voxel `o` reads the input at
    `M @ (o - c) + c`, so structures appear `zoom` times larger (zoom > 1 zooms in)."""
    return rotation_matrix(angles, dims) / jnp.asarray(zoom, jnp.float32)[None, :]


def spatial_coordinates(
    shape: Sequence[int], matrix: jax.Array, displacement: jax.Array | None = None
) -> jax.Array:
    """Input coordinates `[*shape, d]` read by each output voxel: `M @ (o - c) + c + u(o)`
    with `c = (shape - 1) / 2` and `u` an optional displacement field `[*shape, d]` (voxels)."""
    d = len(shape)
    matrix = jnp.asarray(matrix, jnp.float32)
    # open (broadcast) grids: d^2 rank-1 terms instead of a [N, d] @ [d, d] matmul, which
    # is a poor shape for XLA:CPU
    rel = []
    for a, n in enumerate(shape):
        sh = [1] * d
        sh[a] = n
        rel.append((jnp.arange(n, dtype=jnp.float32) - (n - 1) / 2.0).reshape(sh))
    comps = []
    for i in range(d):
        ci = (shape[i] - 1) / 2.0
        for a in range(d):
            ci = ci + matrix[i, a] * rel[a]
        comps.append(jnp.broadcast_to(ci, tuple(shape)))
    coords = jnp.stack(comps, axis=-1)
    if displacement is not None:
        coords = coords + displacement
    return coords


def _padded(x: jax.Array, spatial: int, pad_mode: str, cval) -> jax.Array:
    """Pads the first `spatial` axes by one voxel (cval or edge) so that every clamped
    lookup is in range and no per-corner validity mask is needed."""
    pad = [(1, 1)] * spatial + [(0, 0)] * (x.ndim - spatial)
    if pad_mode == "constant":
        return jnp.pad(x, pad, mode="constant", constant_values=jnp.asarray(cval, x.dtype))
    if pad_mode == "nearest":
        return jnp.pad(x, pad, mode="edge")
    raise ConfigError(f"augment.pad_mode = {pad_mode!r}: expected one of {PAD_MODES}.")


def resample_linear(
    image: jax.Array, coords: jax.Array, pad_mode: str = "constant", cval: float = PAD_VALUE
) -> jax.Array:
    """(Bi/tri)linear interpolation of `image [*S, C]` at `coords [*T, d]` -> `[*T, C]`.

    "constant" treats voxels outside the grid as `cval` and still interpolates towards
    them (scipy's "grid-constant"); "nearest" uses the edge voxel (scipy's "nearest").
    The image is padded by one voxel and coordinates clamped to `[-1, n]`, so all channels
    share 2^d gathers of `[N, C]` rows with no bounds masks.
    """
    spatial, channels = image.shape[:-1], image.shape[-1]
    d = len(spatial)
    padded = _padded(image, d, pad_mode, cval)
    pshape = padded.shape[:-1]
    flat = padded.reshape(-1, channels)
    strides = [int(np.prod(pshape[a + 1 :])) for a in range(d)]
    base = jnp.zeros(coords.shape[:-1], jnp.int32)
    fracs = []
    for a, n in enumerate(spatial):
        p = jnp.clip(coords[..., a], -1.0, float(n))
        lo = jnp.clip(jnp.floor(p), -1.0, float(n - 1))
        fracs.append(p - lo)
        base = base + (lo.astype(jnp.int32) + 1) * strides[a]  # +1: the padding
    out = jnp.zeros(coords.shape[:-1] + (channels,), image.dtype)
    for corner in itertools.product((0, 1), repeat=d):
        w = jnp.ones(coords.shape[:-1], image.dtype)
        for a, bit in enumerate(corner):
            w = w * (fracs[a] if bit else 1.0 - fracs[a])
        offset = sum(bit * strides[a] for a, bit in enumerate(corner))
        out = out + w[..., None] * jnp.take(flat, base + offset, axis=0)
    return out


def resample_nearest(
    label: jax.Array, coords: jax.Array, pad_mode: str = "constant", cval: int = 0
) -> jax.Array:
    """Nearest-voxel lookup of `label [*S]` at `coords [*T, d]` -> `[*T]`; rounds half up
    (`floor(p + 0.5)`) like scipy's order 0, so only values already in `label` (or `cval`
    for "constant", scipy's "grid-constant") appear."""
    spatial = label.shape
    padded = _padded(label, len(spatial), pad_mode, cval)
    pshape = padded.shape
    flat_idx = jnp.zeros(coords.shape[:-1], jnp.int32)
    for a, n in enumerate(spatial):
        idx = jnp.floor(jnp.clip(coords[..., a], -1.0, float(n)) + 0.5).astype(jnp.int32)
        idx = jnp.clip(idx, -1, n)
        flat_idx = flat_idx + (idx + 1) * int(np.prod(pshape[a + 1 :]))
    return jnp.take(padded.reshape(-1), flat_idx, axis=0)


def _gaussian_kernel(sigma: float, truncate: float = 3.0) -> np.ndarray:
    """The same discrete kernel as scipy.ndimage.gaussian_filter1d (radius int(t*s + 0.5))."""
    radius = int(truncate * sigma + 0.5)
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    k = np.exp(-0.5 * (x / sigma) ** 2)
    return (k / k.sum()).astype(np.float32)


def _smoothing_matrix(n: int, sigma: float) -> np.ndarray:
    """`[n, n]` matrix of the 1D Gaussian filter with half-sample symmetric borders
    (scipy's "reflect", `dcba|abcd|dcba`), any `n`."""
    k = _gaussian_kernel(sigma).astype(np.float64)
    r = len(k) // 2
    src = np.mod(np.arange(-r, n + r), 2 * n)
    src = np.where(src >= n, 2 * n - 1 - src, src)  # padded position -> input index
    g = np.zeros((n, n), np.float64)
    for i in range(n):
        np.add.at(g[i], src[i : i + 2 * r + 1], k)
    return g


def _linear_upsample_matrix(n: int, n_coarse: int, h: float) -> np.ndarray:
    """`[n, n_coarse]` weights of linear interpolation at coarse coordinates `o / h`,
    clamped to the coarse grid (scipy order 1, mode "nearest")."""
    u = np.clip(np.arange(n, dtype=np.float64) / h, 0.0, n_coarse - 1)
    j0 = np.floor(u).astype(int)
    w = u - j0
    j1 = np.minimum(j0 + 1, n_coarse - 1)
    m = np.zeros((n, n_coarse), np.float64)
    np.add.at(m, (np.arange(n), j0), 1.0 - w)
    np.add.at(m, (np.arange(n), j1), w)
    return m


def elastic_coarse_shape(shape: Sequence[int], sigma: float) -> tuple[float, tuple[int, ...]]:
    """(step h in voxels, coarse grid shape) used by `elastic_displacement`.

    The smooth field varies on the scale of `sigma`, so it is generated on a grid with
    step `h = max(1, sigma / 2)` (Gaussian of 2 coarse voxels) and linearly upsampled: at
    sigma 10 that is 25x fewer voxels to smooth in 2D and 125x in 3D.
    """
    h = max(1.0, float(sigma) / 2.0)
    return h, tuple(int(math.ceil((n - 1) / h)) + 1 for n in shape)


def elastic_displacement(
    key: jax.Array, shape: Sequence[int], sigma: float, magnitude: jax.Array
) -> jax.Array:
    """Smooth random displacement field `[*shape, d]` in voxels.

    Standard-normal noise `[d, *coarse]` (see `elastic_coarse_shape`) is Gaussian-smoothed
    with `sigma / h` coarse voxels, linearly upsampled to `shape` (coarse coordinate
    `o / h`, edge-clamped) and scaled so that the largest |component| is `magnitude`.
    """
    d = len(shape)
    h, coarse = elastic_coarse_shape(shape, sigma)
    noise = jax.random.normal(key, (d, *coarse), jnp.float32)
    # Smoothing and linear upsampling are both separable and linear, so each axis is one
    # small static matrix `[n, n_coarse]` = upsample @ smooth: d tiny matmuls (a gather from
    # the coarse grid was ~40x slower on XLA:CPU, unrolled filter taps slow to compile).
    field = noise
    for a, n in enumerate(shape):
        op = _linear_upsample_matrix(n, coarse[a], h) @ _smoothing_matrix(
            coarse[a], float(sigma) / h
        )
        field = jnp.moveaxis(
            jnp.tensordot(jnp.asarray(op, jnp.float32), field, axes=[[1], [a + 1]]), 0, a + 1
        )
    field = jnp.moveaxis(field, 0, -1)  # [*S, d]
    peak = jnp.max(jnp.abs(field))
    return field * (magnitude / jnp.maximum(peak, 1e-12))


# ----------------------------------------------------------------------------- flips / rot90


def random_flip(key: jax.Array, image: jax.Array, label: jax.Array, prob: float):
    """Flips each spatial axis of one example `[*S, C]`, `[*S]` with probability `prob`."""
    keys = jax.random.split(key, label.ndim)
    for axis, k in enumerate(keys):
        flip = jax.random.bernoulli(k, prob)
        image = jnp.where(flip, jnp.flip(image, axis), image)
        label = jnp.where(flip, jnp.flip(label, axis), label)
    return image, label


def rot90_planes(shape: Sequence[int]) -> list[tuple[int, int]]:
    """Planes `(a, b)` of a spatial shape whose two axes have equal size (rotatable)."""
    return [(a, b) for a, b in itertools.combinations(range(len(shape)), 2) if shape[a] == shape[b]]


def rot90(x: jax.Array, k: jax.Array, axes: tuple[int, int]) -> jax.Array:
    """`np.rot90(x, k, axes)` for a traced `k` (0..3): flip axis `a` when k in {2, 3}, flip
    axis `b` when k in {1, 2}, then swap the axes when k is odd (axes of equal size)."""
    a, b = axes
    k = jnp.mod(k, 4)
    x = jnp.where((k == 2) | (k == 3), jnp.flip(x, a), x)
    x = jnp.where((k == 1) | (k == 2), jnp.flip(x, b), x)
    return jnp.where(k % 2 == 1, jnp.swapaxes(x, a, b), x)
