"""Acquisition artefacts of the on-device augmentation, one example `image [*S, C]` at a
time, after torchio's `Motion` and `RandomAnisotropy` (torchio 1.2.1; docs/data.md).

- `motion`: rigid patient motion during the acquisition, simulated in k-space
  (`resample_under_motion` then `compose_kspace`).
- `anisotropy`: nearest downsampling along one axis onto a coarser, centred grid, then
  linear upsampling back to the original grid.

Labels are never touched: both are image artefacts.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxseg.augment.geometry import resample_linear, spatial_coordinates
from jaxseg.data.preprocess import PAD_VALUE


def resample_under_motion(
    image: jax.Array, matrices: jax.Array, offsets: jax.Array, pad_mode: str = "constant"
) -> jax.Array:
    """The image as each of `K` rigid positions sees it: `[K + 1, *S, C]`, position 0 the
    image itself, position `k + 1` read (linearly) at `matrices[k] @ (o - c) + c +
    offsets[k]` for output voxel `o` (`matrices [K, d, d]`, `offsets [K, d]` in voxels,
    `c = (S - 1) / 2`); outside the volume reads `PAD_VALUE` ("constant") or the edge."""
    shape = image.shape[:-1]

    def one(m, t):
        return resample_linear(image, spatial_coordinates(shape, m) + t, pad_mode)

    moved = jax.vmap(one)(jnp.asarray(matrices, jnp.float32), jnp.asarray(offsets, jnp.float32))
    return jnp.concatenate([image[None], moved.astype(image.dtype)], axis=0)


def compose_kspace(images: jax.Array, times: jax.Array) -> jax.Array:
    """k-space of a scan during which the patient moved: `images [K + 1, *S, C]` (position
    0 the reference, `resample_under_motion`), sorted `times [K]` in (0, 1) -> `[*S, C]`.

    As torchio's `Motion`: each image's centred spectrum (`fftshift(fftn)` over the spatial
    axes) fills the lines `[floor(n t_{k-1}), floor(n t_k))` of the last spatial axis (the
    phase-encoding axis, `n` lines, `t_{-1} = 0`, `t_K = 1`) in acquisition order, except
    that the reference image is swapped into the segment holding the k-space centre (the
    first `k` with `t_k > 0.5`, else the last), so the contrast comes from the reference
    position; then `ifftn(ifftshift(.))` and the real part (torchio's; intensities keep
    their sign, as z-scored images need)."""
    k1 = images.shape[0]
    axes = tuple(range(1, images.ndim - 1))
    n = images.shape[-2]
    spectra = jnp.fft.fftshift(jnp.fft.fftn(images, axes=axes), axes=axes)
    times = jnp.asarray(times, jnp.float32)
    # float32 product then truncation, as torchio's `(n * times).astype(int)` on float32 times
    bounds = jnp.floor(jnp.float32(n) * times).astype(jnp.int32)  # [K]
    line = jnp.arange(n, dtype=jnp.int32)
    segment = jnp.sum(line[:, None] >= bounds[None, :], axis=1)  # [n], 0..K
    late = times > 0.5
    centre = jnp.where(jnp.any(late), jnp.argmax(late), k1 - 1)
    source = jnp.where(segment == 0, centre, jnp.where(segment == centre, 0, segment))
    pick = source[None, :] == jnp.arange(k1)[:, None]  # [K + 1, n]
    pick = pick.reshape((k1,) + (1,) * (len(axes) - 1) + (n, 1))
    composed = jnp.sum(jnp.where(pick, spectra, 0), axis=0)  # [*S, C]
    spatial = tuple(range(len(axes)))
    out = jnp.fft.ifftn(jnp.fft.ifftshift(composed, axes=spatial), axes=spatial)
    return jnp.real(out).astype(images.dtype)


def motion(
    image: jax.Array,
    matrices: jax.Array,
    offsets: jax.Array,
    times: jax.Array,
    pad_mode: str = "constant",
) -> jax.Array:
    """Rigid motion artefact on `image [*S, C]` (same motion for every channel):
    `compose_kspace(resample_under_motion(image, matrices, offsets), times)`."""
    return compose_kspace(resample_under_motion(image, matrices, offsets, pad_mode), times)


def anisotropy(
    image: jax.Array, axis: int, factor: jax.Array, pad_mode: str = "constant"
) -> jax.Array:
    """Downsample `image [*S, C]` along `axis` by `factor >= 1` and back, as torchio's
    `RandomAnisotropy` (SimpleITK resampling) does it.

    The coarse grid has `m = max(1, floor(n / factor))` samples of step `factor` centred on
    the original one (coarse sample `j` at input voxel `c + (j - (m - 1) / 2) factor`,
    `c = (n - 1) / 2`), each the nearest input voxel (`floor(p + 0.5)`). Output voxel `o`
    interpolates the coarse samples linearly at `u = (o - c) / factor + (m - 1) / 2`,
    edge-clamped within half a coarse voxel of the grid; beyond that (the border slabs that
    `floor` cut off) it reads `PAD_VALUE` with `pad_mode="constant"` (SimpleITK's default
    pixel value 0), or the edge sample with "nearest". Static shapes for a traced factor.
    """
    n = image.shape[axis]
    if n < 2:
        return image
    factor = jnp.maximum(jnp.asarray(factor, jnp.float32), 1.0)
    m = jnp.maximum(jnp.floor(n / factor), 1.0)
    c = (n - 1) / 2.0
    u = (jnp.arange(n, dtype=jnp.float32) - c) / factor + (m - 1.0) / 2.0
    inside = (u >= -0.5) & (u < m - 0.5)
    uc = jnp.clip(u, 0.0, m - 1.0)
    j0 = jnp.floor(uc)
    w = uc - j0
    j1 = jnp.minimum(j0 + 1.0, m - 1.0)

    def voxel(j):  # input voxel that coarse sample j copies
        p = c + (j - (m - 1.0) / 2.0) * factor
        return jnp.clip(jnp.floor(p + 0.5), 0, n - 1).astype(jnp.int32)

    sh = [1] * image.ndim
    sh[axis] = n
    w = w.reshape(sh).astype(image.dtype)
    out = (1.0 - w) * jnp.take(image, voxel(j0), axis=axis) + w * jnp.take(
        image, voxel(j1), axis=axis
    )
    if pad_mode == "constant":
        out = jnp.where(inside.reshape(sh), out, jnp.asarray(PAD_VALUE, image.dtype))
    return out
