"""On-device augmentation, run inside the jitted train step.

`augment_batch(key, image [B, *S, C], label [B, *S], config.augment)` splits the key into
one key per example and `vmap`s `augment_example` over the batch, so each example is
augmented independently, the result is a pure function of the step's key (identical on
resume) and every shape is static (no host round trip, no recompilation). `S` is 2D
`(X, Y)` or 3D `(X, Y, Z)`, channels last; labels are integer class maps.

Order of the transforms (each fires per example with its own probability; the arrays are
always computed and selected with `jnp.where`, because under `vmap` a `lax.cond` would run
both branches anyway):

1. spatial, one resampling for rotation + scaling + elastic deformation together (one
   gather instead of three, and no compounding of interpolation blur):
   output voxel `o` reads the input at `M @ (o - c) + c + u(o)`, with `c = (S - 1) / 2`
   the centre, `M = R(angles) @ diag(1 / zoom)` and `u` the elastic displacement field.
   This is scipy's `affine_transform(matrix=M, offset=c - M @ c)` convention. The image is
   linearly interpolated and the label takes the nearest voxel (`floor(p + 0.5)`, as
   scipy's order 0), so labels keep their original values. Outside the volume the image
   reads 0 and the label 0 (background) with `pad_mode="constant"` (scipy's
   "grid-constant"), or the edge voxel with `pad_mode="nearest"`. Everything happens in
   the voxel grid: on anisotropic data use small out-of-plane angles (e.g.
   `rotation_degrees_3d = (0, 0, 180)` for thick axial slices) and `scale_per_axis`.
2. 90-degree rotations (in each plane whose two axes have the same size; other planes
   are skipped, because rotating them would change the array shape) and flips.
3. intensity, per channel where it makes sense: smooth multiplicative bias field,
   brightness (multiply and shift), contrast, simulated low resolution, gamma, motion
   ghosting, Gaussian noise.

Each transform is also a public function on one example so that it can be tested against
`scipy.ndimage` / numpy on the same parameters.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from jaxseg.data.preprocess import PAD_VALUE
from jaxseg.errors import ConfigError

__all__ = [
    "augment_batch",
    "augment_example",
    "resolve_config",
    "rotation_matrix",
    "sampling_matrix",
    "spatial_coordinates",
    "resample_linear",
    "resample_nearest",
    "elastic_displacement",
    "elastic_coarse_shape",
    "random_flip",
    "rot90",
    "bias_field",
    "adjust_brightness",
    "adjust_contrast",
    "adjust_gamma",
    "simulate_low_resolution",
    "ghosting",
    "gaussian_noise",
]

PAD_MODES = ("constant", "nearest")


# ----------------------------------------------------------------------------- config


def _as_dict(config) -> dict:
    if config is None:
        return {}
    if hasattr(config, "to_dict"):
        return config.to_dict()
    if hasattr(config, "as_configdict"):  # FrozenConfigDict
        return config.as_configdict().to_dict()
    return dict(config)


def resolve_config(config) -> ml_collections.ConfigDict:
    """Fills missing `augment.*` keys from `jaxseg.defaults` and validates every value.

    Raises ConfigError naming the key for unknown keys and out-of-range values.
    """
    from jaxseg.defaults import base_config  # local: defaults is a leaf module

    base = base_config().augment.to_dict()
    given = _as_dict(config)
    unknown = sorted(set(given) - set(base))
    if unknown:
        raise ConfigError(f"augment: unknown key(s) {unknown}; known keys: {sorted(base)}.")
    c = {**base, **given}

    def prob(k):
        v = c[k]
        if not isinstance(v, (int, float)) or not 0.0 <= float(v) <= 1.0:
            raise ConfigError(f"augment.{k} = {v!r}: a probability must be a number in [0, 1].")

    def pair(k, lo_min=None, positive=False):
        v = c[k]
        try:
            lo, hi = (float(t) for t in v)
        except (TypeError, ValueError):
            raise ConfigError(
                f"augment.{k} = {v!r}: expected a (low, high) pair of numbers."
            ) from None
        if lo > hi or (positive and lo <= 0) or (lo_min is not None and lo < lo_min):
            need = (
                "0 < low <= high"
                if positive
                else (f"{lo_min} <= low <= high" if lo_min is not None else "low <= high")
            )
            raise ConfigError(f"augment.{k} = {v!r}: expected {need}.")
        c[k] = (lo, hi)

    def nonneg(k):
        v = c[k]
        if not isinstance(v, (int, float)) or float(v) < 0:
            raise ConfigError(f"augment.{k} = {v!r}: expected a number >= 0.")

    for k in base:
        if k.endswith("_prob"):
            prob(k)
    pair("scale_range", positive=True)
    pair("elastic_magnitude", lo_min=0.0)
    pair("brightness_range")
    pair("contrast_range", lo_min=0.0)
    pair("gamma_range", positive=True)
    pair("lowres_zoom", positive=True)
    pair("ghosting_intensity", lo_min=0.0)
    pair("ghosting_shift", lo_min=0.0)
    if c["lowres_zoom"][1] > 1.0:
        raise ConfigError(f"augment.lowres_zoom = {c['lowres_zoom']!r}: zoom factors must be <= 1.")
    for k in ("rotation_degrees_2d", "brightness_shift", "noise_std", "bias_field_magnitude"):
        nonneg(k)
    if not isinstance(c["elastic_sigma"], (int, float)) or c["elastic_sigma"] <= 0:
        raise ConfigError(
            f"augment.elastic_sigma = {c['elastic_sigma']!r}: expected a number > 0 "
            "(smoothness of the displacement field, in voxels)."
        )
    r3 = c["rotation_degrees_3d"]
    try:
        r3 = tuple(float(t) for t in r3)
    except (TypeError, ValueError):
        r3 = ()
    if len(r3) != 3 or min(r3) < 0:
        raise ConfigError(
            f"augment.rotation_degrees_3d = {c['rotation_degrees_3d']!r}: expected "
            "three numbers >= 0 (max |angle| about the x, y and z axes)."
        )
    c["rotation_degrees_3d"] = r3
    if not isinstance(c["bias_field_order"], int) or c["bias_field_order"] < 0:
        raise ConfigError(
            f"augment.bias_field_order = {c['bias_field_order']!r}: expected an int >= 0."
        )
    if c["pad_mode"] not in PAD_MODES:
        raise ConfigError(f"augment.pad_mode = {c['pad_mode']!r}: expected one of {PAD_MODES}.")
    for k in ("scale_per_axis", "gamma_retain_stats"):
        if not isinstance(c[k], bool):
            raise ConfigError(f"augment.{k} = {c[k]!r}: expected True or False.")
    return ml_collections.ConfigDict(c)


# ----------------------------------------------------------------------------- geometry


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


# ----------------------------------------------------------------------------- intensity


def _monomials(dims: int, order: int) -> list[tuple[int, ...]]:
    return [p for p in itertools.product(range(order + 1), repeat=dims) if sum(p) <= order]


def bias_field(coeffs: jax.Array, shape: Sequence[int], order: int) -> jax.Array:
    """Smooth multiplicative field `[*shape]`: `exp(sum_k coeffs[k] * prod_a x_a^p_ka)` over the
    monomials of total degree <= `order` (in `_monomials` order), with each `x_a` spanning
    [-1, 1] across the axis."""
    axes = [
        jnp.linspace(-1.0, 1.0, n, dtype=jnp.float32) if n > 1 else jnp.zeros((1,), jnp.float32)
        for n in shape
    ]
    log_field = jnp.zeros(tuple(shape), jnp.float32)
    for c, powers in zip(coeffs, _monomials(len(shape), order)):
        term = c
        for a, p in enumerate(powers):
            if p:
                sh = [1] * len(shape)
                sh[a] = -1
                term = term * (axes[a] ** p).reshape(sh)
        log_field = log_field + term
    return jnp.exp(log_field)


def adjust_brightness(image: jax.Array, scale: jax.Array, shift: jax.Array) -> jax.Array:
    """`image * scale + shift`, `scale`/`shift` per channel `[C]`."""
    return image * scale + shift


def _spatial_axes(image: jax.Array) -> tuple[int, ...]:
    return tuple(range(image.ndim - 1))


def adjust_contrast(image: jax.Array, factor: jax.Array) -> jax.Array:
    """`(x - mean) * factor + mean` per channel, clipped to the channel's original [min, max]
    (nnU-Net's contrast augmentation with preserve_range)."""
    ax = _spatial_axes(image)
    mean = jnp.mean(image, ax)
    out = (image - mean) * factor + mean
    return jnp.clip(out, jnp.min(image, ax), jnp.max(image, ax))


def adjust_gamma(
    image: jax.Array, gamma: jax.Array, retain_stats: bool = True, eps: float = 1e-7
) -> jax.Array:
    """Per channel: rescale to [0, 1] with the channel's min/max, raise to `gamma [C]`, map
    back; with `retain_stats` restore the channel's original mean and std."""
    ax = _spatial_axes(image)
    lo, hi = jnp.min(image, ax), jnp.max(image, ax)
    rng = hi - lo
    unit = jnp.clip((image - lo) / jnp.maximum(rng, eps), 0.0, 1.0)
    out = unit**gamma * rng + lo
    if retain_stats:
        mean, std = jnp.mean(image, ax), jnp.std(image, ax)
        out = (out - jnp.mean(out, ax)) / jnp.maximum(jnp.std(out, ax), eps) * std + mean
    return out


def simulate_low_resolution(image: jax.Array, zoom: jax.Array, apply: jax.Array) -> jax.Array:
    """Nearest downsampling to `m = round(n * zoom)` samples then linear upsampling back to
    `n`, along each spatial axis where `apply [d]` is true (`zoom [d]` in (0, 1]).

    Static shapes with a traced `m`: coarse sample `j` is the input voxel
    `round(j (n - 1) / (m - 1))` and output voxel `o` interpolates coarse samples at
    `u = o (m - 1) / (n - 1)` (corner-aligned grids). `image [*S, C]`.
    """
    for a in range(image.ndim - 1):
        n = image.shape[a]
        if n < 2:
            continue
        m = jnp.clip(jnp.round(n * zoom[a]), 1.0, float(n))
        step_down = (n - 1) / jnp.maximum(m - 1.0, 1.0)  # input voxels per coarse sample
        u = jnp.arange(n, dtype=jnp.float32) * (m - 1.0) / (n - 1)
        j0 = jnp.floor(u)
        w = u - j0
        j1 = jnp.minimum(j0 + 1.0, m - 1.0)
        p0 = jnp.round(j0 * step_down).astype(jnp.int32)
        p1 = jnp.round(j1 * step_down).astype(jnp.int32)
        sh = [1] * image.ndim
        sh[a] = n
        w = w.reshape(sh)
        low = (1.0 - w) * jnp.take(image, p0, axis=a) + w * jnp.take(image, p1, axis=a)
        image = jnp.where(apply[a], low, image)
    return image


def ghosting(image: jax.Array, axis: int, shift: jax.Array, intensity: jax.Array) -> jax.Array:
    """MRI motion ghosts along `axis`: `(1 - a) x + a/2 (S_d x + S_-d x)` where `S_d` is a
    circular shift by `d = shift` voxels (fractional allowed), applied in k-space as the
    real multiplier `(1 - a) + a cos(2 pi f d)` on the rFFT along the axis; the k-space
    centre (mean) is unchanged. `image [*S, C]`."""
    n = image.shape[axis]
    f = jnp.fft.rfftfreq(n).astype(jnp.float32)  # cycles per voxel
    mult = (1.0 - intensity) + intensity * jnp.cos(2.0 * jnp.pi * f * shift)
    sh = [1] * image.ndim
    sh[axis] = -1
    spec = jnp.fft.rfft(image, axis=axis) * mult.reshape(sh)
    return jnp.fft.irfft(spec, n=n, axis=axis).astype(image.dtype)


def gaussian_noise(key: jax.Array, image: jax.Array, std: jax.Array) -> jax.Array:
    """`image + std * N(0, 1)`."""
    return image + std * jax.random.normal(key, image.shape, image.dtype)


# ----------------------------------------------------------------------------- the pipeline


class _Stage:
    """One transform of the pipeline.

    `decide(u [n_draws] ~ U[0, 1), key) -> (fired bool, params)` draws everything for one
    example; `apply(params, image [*S, C], label [*S]) -> (image, label)` applies it.
    All scalar draws of all stages come from ONE `jax.random.uniform` per example: every
    separate threefry call costs seconds of XLA:CPU compile time, so the key is used
    directly only for the big fields (elastic noise, Gaussian noise).

    `augment_batch` runs `decide` for the whole batch first and skips `apply` (a real
    `lax.cond` at batch level, outside `vmap`) when the stage fired for no example: under
    `vmap` every transform would otherwise be computed for every example and discarded by
    a select, so the cost would not scale with the probabilities.
    """

    def __init__(self, name, n_draws, decide, apply, geometric=False):
        self.name, self.n_draws, self.decide, self.apply = name, n_draws, decide, apply
        # Geometric stages move voxels; `augment_batch`'s `fields` go through them only.
        self.geometric = geometric


def _lerp(u, lo_hi):
    lo, hi = lo_hi
    return lo + (hi - lo) * u


def _stages(c: ml_collections.ConfigDict, spatial: tuple[int, ...], channels: int) -> list[_Stage]:
    dims = len(spatial)
    stages = []

    if c.rotation_prob > 0 or c.scale_prob > 0 or c.elastic_prob > 0:
        limits = (c.rotation_degrees_2d,) if dims == 2 else tuple(c.rotation_degrees_3d)
        limits = np.deg2rad(np.array(limits, np.float32))
        na = len(limits)
        log_scale = (math.log(c.scale_range[0]), math.log(c.scale_range[1]))

        def decide_spatial(u, key):
            rot = u[0] < c.rotation_prob
            angles = jnp.where(rot, (2.0 * u[1 : 1 + na] - 1.0) * limits, 0.0)
            scl = u[4] < c.scale_prob
            # log-uniform, so zooming in and out are equally likely around 1
            zoom = jnp.exp(_lerp(u[5 : 5 + dims] if c.scale_per_axis else u[5:6], log_scale))
            zoom = jnp.broadcast_to(jnp.where(scl, zoom, 1.0), (dims,))
            el = u[8] < c.elastic_prob
            mag = jnp.where(el, _lerp(u[9], c.elastic_magnitude), 0.0)
            return rot | scl | el, dict(angles=angles, zoom=zoom, mag=mag, key=key)

        def apply_spatial(p, image, label):
            disp = (
                elastic_displacement(p["key"], spatial, c.elastic_sigma, p["mag"])
                if c.elastic_prob > 0
                else None
            )
            coords = spatial_coordinates(
                spatial, sampling_matrix(p["angles"], p["zoom"], dims), disp
            )
            return (
                resample_linear(image, coords, c.pad_mode),
                resample_nearest(label, coords, c.pad_mode),
            )

        stages.append(_Stage("spatial", 10, decide_spatial, apply_spatial, geometric=True))

    planes = rot90_planes(spatial)
    if c.rot90_prob > 0 and planes:
        npl = len(planes)

        def decide_rot90(u, key):
            fire = u[:npl] < c.rot90_prob
            turns = jnp.where(fire, 1 + jnp.minimum(jnp.floor(u[npl:] * 3), 2).astype(jnp.int32), 0)
            return jnp.any(fire), turns

        def apply_rot90(turns, image, label):
            for i, plane in enumerate(planes):
                image, label = rot90(image, turns[i], plane), rot90(label, turns[i], plane)
            return image, label

        stages.append(_Stage("rot90", 2 * npl, decide_rot90, apply_rot90, geometric=True))

    if c.flip_prob > 0:

        def decide_flip(u, key):
            return jnp.any(u < c.flip_prob), u < c.flip_prob

        def apply_flip(flips, image, label):
            for axis in range(dims):
                image = jnp.where(flips[axis], jnp.flip(image, axis), image)
                label = jnp.where(flips[axis], jnp.flip(label, axis), label)
            return image, label

        stages.append(_Stage("flip", dims, decide_flip, apply_flip, geometric=True))

    def intensity(name, prob, n_draws, draw, fn):
        """An image-only stage: `draw(u [n_draws], key) -> params`, `fn(params, image)`."""
        if prob > 0:
            stages.append(
                _Stage(
                    name,
                    n_draws + 1,
                    lambda u, key: (u[0] < prob, draw(u[1:], key)),
                    lambda p, image, label: (fn(p, image), label),
                )
            )

    order = c.bias_field_order
    n_terms = len(_monomials(dims, order))
    m = c.bias_field_magnitude
    intensity(
        "bias_field",
        c.bias_field_prob,
        n_terms,
        lambda u, k: _lerp(u, (-m, m)),
        lambda coeffs, x: x * bias_field(coeffs, spatial, order)[..., None],
    )
    sh = c.brightness_shift
    intensity(
        "brightness",
        c.brightness_prob,
        2 * channels,
        lambda u, k: (_lerp(u[:channels], c.brightness_range), _lerp(u[channels:], (-sh, sh))),
        lambda p, x: adjust_brightness(x, *p),
    )
    intensity(
        "contrast",
        c.contrast_prob,
        channels,
        lambda u, k: _lerp(u, c.contrast_range),
        lambda f, x: adjust_contrast(x, f),
    )

    def draw_lowres(u, key):
        zoom = _lerp(u[:dims], c.lowres_zoom)
        # each axis with probability 1/2, plus one random axis so that at least one is hit
        one = jnp.minimum(jnp.floor(u[2 * dims] * dims), dims - 1)
        return zoom, (u[dims : 2 * dims] < 0.5) | (jnp.arange(dims) == one)

    intensity(
        "lowres",
        c.lowres_prob,
        2 * dims + 1,
        draw_lowres,
        lambda p, x: simulate_low_resolution(x, *p),
    )

    glo, ghi = c.gamma_range

    def draw_gamma(u, key):
        # as nnU-Net: half the draws below 1 (brighten), half above (darken)
        below = (u[:channels] < 0.5) & (glo < 1.0)
        return jnp.where(
            below,
            _lerp(u[channels:], (glo, min(ghi, 1.0))),
            _lerp(u[channels:], (max(glo, 1.0), ghi)),
        )

    intensity(
        "gamma",
        c.gamma_prob,
        2 * channels,
        draw_gamma,
        lambda g, x: adjust_gamma(x, g, c.gamma_retain_stats),
    )

    def draw_ghosting(u, key):
        axis = jnp.minimum(jnp.floor(u[2] * dims), dims - 1).astype(jnp.int32)
        return _lerp(u[0], c.ghosting_intensity), _lerp(u[1], c.ghosting_shift), axis

    def apply_ghosting(p, x):
        a, frac, axis = p
        # the axis is traced: compute each axis' ghosts and select (FFTs are cheap here)
        out = x
        for ax in range(dims):
            out = jnp.where(axis == ax, ghosting(x, ax, frac * spatial[ax], a), out)
        return out

    intensity("ghosting", c.ghosting_prob, 3, draw_ghosting, apply_ghosting)
    if c.noise_std > 0:
        intensity(
            "noise",
            c.noise_prob,
            1,
            lambda u, k: (u[0] * c.noise_std, k),
            lambda p, x: gaussian_noise(p[1], x, p[0]),
        )
    return stages


def augment_batch(
    key: jax.Array, image: jax.Array, label: jax.Array, config, fields: jax.Array | None = None
):
    """Augments a batch `image [B, *S, C]`, `label [B, *S]` with one key per example.

    `config` is the `augment` section (ConfigDict or dict); missing keys take the
    defaults of `jaxseg.defaults`, unknown or invalid ones raise ConfigError. Pure and
    jit-friendly; example `i`'s result depends only on `(key, i)` and its own arrays.
    fields: optional float `[B, *S, F]` maps that must stay aligned with the labels (the
    boundary loss's signed distance maps): they take the geometric stages (rotation,
    scaling, elastic, rot90, flips; linear interpolation, as the image) and no intensity
    stage. Distances are not rescaled by a zoom: a boundary term's weight, not its sign,
    changes by the zoom factor (at most the scale range).
    Returns `(image [B, *S, C] same dtype, label [B, *S] same dtype)`, and `fields` after
    them when given.
    """
    if image.ndim != label.ndim + 1 or image.shape[:-1] != label.shape or label.ndim not in (3, 4):
        raise ConfigError(
            f"augment_batch: expected image [B, *S, C] and label [B, *S] with 2 or 3 "
            f"spatial axes, got image {image.shape} and label {label.shape}."
        )
    if fields is not None and fields.shape[:-1] != label.shape:
        raise ConfigError(
            f"augment_batch: fields {fields.shape} must be [B, *S, F] with the labels' "
            f"[B, *S] = {label.shape}."
        )
    c = resolve_config(config)
    stages = _stages(c, tuple(label.shape[1:]), image.shape[-1])
    if not stages:
        return (image, label) if fields is None else (image, label, fields)
    in_dtype = image.dtype
    image = image.astype(jnp.float32)
    channels = image.shape[-1]
    starts = np.cumsum([0] + [st.n_draws for st in stages])
    keys = jax.random.split(key, image.shape[0])
    draws = jax.vmap(lambda k: jax.random.uniform(k, (int(starts[-1]),)))(keys)  # [B, n]
    for i, stage in enumerate(stages):
        u = draws[:, starts[i] : starts[i + 1]]
        # field keys only for the stages that need them (elastic, noise); fold_in by position
        fired, params = jax.vmap(lambda u, k: stage.decide(u, jax.random.fold_in(k, i)))(u, keys)  # noqa: B023 (called at once)
        # The fields ride along as extra image channels through a geometric stage.
        carried = fields is not None and stage.geometric
        x = jnp.concatenate([image, fields.astype(jnp.float32)], -1) if carried else image

        def run(image, label, fired=fired, params=params, stage=stage):
            new_image, new_label = jax.vmap(stage.apply)(params, image, label)
            sel = lambda new, old: jnp.where(  # noqa: E731
                fired.reshape((-1,) + (1,) * (old.ndim - 1)), new.astype(old.dtype), old
            )
            return sel(new_image, image), sel(new_label, label)

        x, label = jax.lax.cond(jnp.any(fired), run, lambda x, y: (x, y), x, label)
        if carried:
            image, fields = x[..., :channels], x[..., channels:].astype(fields.dtype)
        else:
            image = x
    out = (image.astype(in_dtype), label)
    return out if fields is None else (*out, fields)


def augment_example(key: jax.Array, image: jax.Array, label: jax.Array, config):
    """One example `image [*S, C]`, `label [*S]`: `augment_batch` on a batch of one."""
    x, y = augment_batch(key, image[None], label[None], config)
    return x[0], y[0]
