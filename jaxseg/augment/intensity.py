"""Intensity transforms of the on-device augmentation, one example `image [*S, C]` at a
time: bias field, brightness, contrast, gamma, simulated low resolution, ghosting, noise."""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import jax
import jax.numpy as jnp


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
