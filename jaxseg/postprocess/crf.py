"""A mean-field dense CRF over softmax probabilities, in JAX, with a local window in mm.

The model is Krähenbühl and Koltun's fully connected CRF (NeurIPS 2011) with Potts
compatibility and two kernels between voxels `i != j` at positions `p` (mm: index times
spacing) with intensity features `I` (the case's channels, each standardised to zero mean
and unit std over the case, then divided by `intensity_sigma`):

    spatial   k_s(i, j) = exp(-|p_i - p_j|^2 / (2 spatial_sigma_mm^2))
    bilateral k_b(i, j) = exp(-|p_i - p_j|^2 / (2 bilateral_sigma_mm^2) - |I_i - I_j|^2 / 2)

Mean-field, `Q_0 = P` (the softmax), then for `iterations` rounds

    m_l(i) = sum_{j != i} k(i, j) Q_j(l) / sum_{j != i} k(i, j)        (per kernel)
    Q_i(l) = softmax_l( log P_i(l) + spatial_weight m_s,l(i) + bilateral_weight m_b,l(i) )

(with Potts compatibility `-sum_{l' != l} m_l' = m_l - 1`, and the constant drops out of
the softmax). Each kernel is normalised per voxel by its sum (densecrf's
`NORMALIZE_AFTER`), so a message is a weighted mean of the neighbours' `Q` in [0, 1] and a
weight is the most log-odds a kernel can add, whatever the spacing or window.

The local-window approximation sums over the neighbours `j` with `|p_i - p_j|` at most
`window_mm` along every axis (a box of `2 floor(window_mm / spacing) + 1` voxels per
axis; outside the image there are no neighbours). When the window covers the whole image
it is the dense CRF exactly (tests/postprocess/test_crf.py checks that against a float64
N x N transcription). Message passing is one shifted slice of the padded `Q` and image per
window offset, accumulated in a `lax.fori_loop`: memory is `O(V (K + C))` for V voxels,
never `O(V x window)`; time is `O(iterations x offsets x V x (K + C))`.

`crf_labels` runs it on the probabilities' foreground box only (voxels whose foreground
probability `1 - P_0` reaches 1%, grown by two windows and rounded up to a multiple of 16
voxels per axis so that cases share compiled shapes); outside it the argmax of `P` is
background anyway and is kept.
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxseg.errors import ConfigError, DataError
from jaxseg.postprocess.components import bounding_box

_MIN_PROB = 1e-8  # log P is taken of max(P, this)
_BOX_PROB = 0.01  # crf_labels: the foreground probability that marks a voxel as uncertain
_BUCKET = 16  # crf_labels: box sizes are rounded up to multiples of this (fewer compiles)

DEFAULTS = dict(
    iterations=5,
    window_mm=3.0,
    spatial_sigma_mm=1.0,
    spatial_weight=1.0,
    bilateral_sigma_mm=3.0,
    intensity_sigma=0.5,
    bilateral_weight=2.0,
)


def check_params(params: dict, what: str = "crf") -> dict:
    """`DEFAULTS` updated by `params`; a ConfigError names a bad or unknown one."""
    unknown = sorted(set(params) - set(DEFAULTS))
    if unknown:
        raise ConfigError(f"{what}: unknown keys {unknown}; valid: {', '.join(DEFAULTS)}.")
    out = {**DEFAULTS, **params}
    it = out["iterations"]
    if isinstance(it, bool) or not isinstance(it, int | np.integer) or it < 0:
        raise ConfigError(f"{what}: iterations={it!r}; use an int >= 0.")
    for key in ("window_mm", "spatial_sigma_mm", "bilateral_sigma_mm", "intensity_sigma"):
        v = out[key]
        if isinstance(v, bool) or not isinstance(v, int | float | np.number) or not v > 0:
            raise ConfigError(f"{what}: {key}={v!r}; it must be a number > 0.")
        out[key] = float(v)
    for key in ("spatial_weight", "bilateral_weight"):
        v = out[key]
        if isinstance(v, bool) or not isinstance(v, int | float | np.number) or not v >= 0:
            raise ConfigError(f"{what}: {key}={v!r}; it must be a number >= 0.")
        out[key] = float(v)
    out["iterations"] = int(it)
    return out


def window_reach(window_mm: float, spacing: Sequence[float], shape: Sequence[int]) -> tuple:
    """Voxels the window reaches along each axis: `floor(window_mm / spacing)`, at most
    `shape - 1` (further offsets have no neighbour inside the image)."""
    reach = np.floor(float(window_mm) / np.asarray(spacing, np.float64) + 1e-9).astype(int)
    return tuple(int(min(r, n - 1)) for r, n in zip(reach, shape))


@functools.partial(jax.jit, static_argnames=("reach", "iterations"))
def _mean_field(log_p, features, spacing, weights, sigmas, *, reach, iterations):
    """`Q [*S, K]` f32; see the module docstring. weights = (spatial, bilateral); sigmas =
    (spatial, bilateral) in mm; features are already divided by intensity_sigma."""
    shape = log_p.shape[:-1]
    ndim = len(shape)
    offsets = [d for d in itertools.product(*[range(-r, r + 1) for r in reach]) if any(d)]
    if not offsets:  # a one-voxel image: no neighbours, no messages
        return jax.nn.softmax(log_p, axis=-1)
    d = jnp.asarray(offsets, jnp.float32)
    dist2 = jnp.sum((d * spacing) ** 2, axis=-1)
    g_spatial = jnp.exp(-dist2 / (2 * sigmas[0] ** 2))
    g_bilateral = jnp.exp(-dist2 / (2 * sigmas[1] ** 2))
    starts = jnp.asarray(offsets, jnp.int32) + jnp.asarray(reach, jnp.int32)
    pad = [(r, r) for r in reach]
    f_pad = jnp.pad(features, pad + [(0, 0)])
    inside_pad = jnp.pad(jnp.ones(shape, jnp.float32), pad)  # 0 where no neighbour exists

    def shifted(array, i):
        start = tuple(starts[i, a] for a in range(ndim)) + (0,) * (array.ndim - ndim)
        return jax.lax.dynamic_slice(array, start, shape + array.shape[ndim:])

    def bilateral(i):
        diff = features - shifted(f_pad, i)
        return g_bilateral[i] * jnp.exp(-0.5 * jnp.sum(diff * diff, axis=-1))

    def norm_body(i, acc):
        inside = shifted(inside_pad, i)
        return acc[0] + g_spatial[i] * inside, acc[1] + bilateral(i) * inside

    zeros = jnp.zeros(shape, jnp.float32)
    norm_s, norm_b = jax.lax.fori_loop(0, len(offsets), norm_body, (zeros, zeros))
    inv_s = jnp.where(norm_s > 0, 1.0 / jnp.where(norm_s > 0, norm_s, 1.0), 0.0)[..., None]
    inv_b = jnp.where(norm_b > 0, 1.0 / jnp.where(norm_b > 0, norm_b, 1.0), 0.0)[..., None]

    def step(_, q):
        q_pad = jnp.pad(q, pad + [(0, 0)])  # zeros outside: no neighbour there

        def body(i, acc):
            qs = shifted(q_pad, i)
            return acc[0] + g_spatial[i] * qs, acc[1] + bilateral(i)[..., None] * qs

        m_s, m_b = jax.lax.fori_loop(0, len(offsets), body, (jnp.zeros_like(q), jnp.zeros_like(q)))
        return jax.nn.softmax(log_p + weights[0] * m_s * inv_s + weights[1] * m_b * inv_b, axis=-1)

    return jax.lax.fori_loop(0, iterations, step, jax.nn.softmax(log_p, axis=-1))


def dense_crf(
    probs: np.ndarray,
    features: np.ndarray,
    spacing: Sequence[float],
    **params,
) -> np.ndarray:
    """Mean-field CRF marginals `Q [*S, K]` float32 (module docstring).

    Args:
      probs: `[*S, K]` class probabilities (softmax; rows summing to 1).
      features: `[*S, C]` intensity features, used as given (in units where the bilateral
        kernel's intensity sigma is 1 after division by `intensity_sigma`).
      spacing: mm per spatial axis.
      **params: `DEFAULTS`' keys.
    """
    p = check_params(params)
    probs = np.asarray(probs, np.float32)
    features = np.asarray(features, np.float32)
    shape = probs.shape[:-1]
    if features.shape[:-1] != shape or len(spacing) != len(shape):
        raise DataError(
            f"crf: probabilities {probs.shape}, image {features.shape} and spacing "
            f"{tuple(spacing)} do not describe one grid."
        )
    log_p = np.log(np.maximum(probs, _MIN_PROB))
    q = _mean_field(
        log_p,
        features / p["intensity_sigma"],
        jnp.asarray(spacing, jnp.float32),
        jnp.asarray([p["spatial_weight"], p["bilateral_weight"]], jnp.float32),
        jnp.asarray([p["spatial_sigma_mm"], p["bilateral_sigma_mm"]], jnp.float32),
        reach=window_reach(p["window_mm"], spacing, shape),
        iterations=p["iterations"],
    )
    return np.asarray(q)


def standardise(image: np.ndarray) -> np.ndarray:
    """`[*S, C]` -> float32, each channel minus its mean over the case, over its std (a
    constant channel: 0)."""
    image = np.asarray(image, np.float32)
    axes = tuple(range(image.ndim - 1))
    mean = image.mean(axis=axes, dtype=np.float64)
    std = image.std(axis=axes, dtype=np.float64)
    return ((image - mean) / np.where(std > 0, std, 1.0)).astype(np.float32)


def _bucket(box: tuple[slice, ...], shape: Sequence[int]) -> tuple[slice, ...]:
    """`box` grown to a multiple of `_BUCKET` voxels per axis (or the whole axis): a
    bigger box only adds context, and few distinct shapes mean few compilations."""
    out = []
    for sl, n in zip(box, shape):
        size = min(-(-(sl.stop - sl.start) // _BUCKET) * _BUCKET, n)
        stop = min(sl.start + size, n)
        out.append(slice(stop - size, stop))
    return tuple(out)


def crf_labels(
    probs: np.ndarray, image: np.ndarray, spacing: Sequence[float], **params
) -> np.ndarray:
    """The CRF's class map `[*S]` (uint8; uint16 past 256 classes) for probabilities
    `[*S, K]` and the image `[*S, C]` on the same grid; `dense_crf` on the foreground box
    (module docstring), the argmax of `probs` elsewhere."""
    p = check_params(params)
    probs = np.asarray(probs)
    image = np.asarray(image)
    if image.ndim == probs.ndim - 1:
        image = image[..., None]
    if image.shape[:-1] != probs.shape[:-1]:
        raise DataError(
            f"crf: image {image.shape} is not on the grid of probabilities {probs.shape}."
        )
    dtype = np.uint8 if probs.shape[-1] <= 256 else np.uint16
    labels = np.argmax(probs, axis=-1).astype(dtype)
    uncertain = probs[..., 0] <= 1.0 - _BOX_PROB
    if not uncertain.any() or p["iterations"] == 0:
        return labels
    shape = probs.shape[:-1]
    reach = window_reach(p["window_mm"], spacing, shape)
    box = _bucket(bounding_box(uncertain, [2 * r for r in reach]), shape)
    q = dense_crf(probs[box], standardise(image)[box], spacing, **p)
    labels[box] = np.argmax(q, axis=-1)
    return labels
