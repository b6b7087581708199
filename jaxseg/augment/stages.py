"""The augmentation pipeline: stages drawn per example from one uniform vector, applied
batch-wide under `vmap` and skipped when no example fired (see `jaxseg.augment`)."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from jaxseg.augment.config import resolve_config
from jaxseg.augment.geometry import (
    elastic_displacement,
    resample_linear,
    resample_nearest,
    rot90,
    rot90_planes,
    rotation_matrix,
    sampling_matrix,
    spatial_coordinates,
)
from jaxseg.augment.intensity import (
    _monomials,
    adjust_brightness,
    adjust_contrast,
    adjust_gamma,
    bias_field,
    gaussian_noise,
    ghosting,
    simulate_low_resolution,
)
from jaxseg.augment.mri import anisotropy, motion
from jaxseg.errors import ConfigError


class _Stage:
    """One transform of the pipeline.

    `decide(u [n_draws] ~ U[0, 1), key[, spacing [d]]) -> (fired bool, params)` draws
    everything for one example (the spacing only for stages with `uses_spacing`); `apply(params, image [*S, C], label [*S]) -> (image, label)` applies it.
    All scalar draws of all stages come from ONE `jax.random.uniform` per example: every
    separate threefry call costs seconds of XLA:CPU compile time, so the key is used
    directly only for the big fields (elastic noise, Gaussian noise).

    `augment_batch` runs `decide` for the whole batch first and skips `apply` (a real
    `lax.cond` at batch level, outside `vmap`) when the stage fired for no example: under
    `vmap` every transform would otherwise be computed for every example and discarded by
    a select, so the cost would not scale with the probabilities.
    """

    def __init__(self, name, n_draws, decide, apply, geometric=False, uses_spacing=False):
        self.name, self.n_draws, self.decide, self.apply = name, n_draws, decide, apply
        # Geometric stages move voxels; `augment_batch`'s `fields` go through them only.
        self.geometric = geometric
        # `decide(u, key, spacing [d])`: the example's voxel spacing (mm, or 1 per axis)
        self.uses_spacing = uses_spacing


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

    def intensity(name, prob, n_draws, draw, fn, uses_spacing=False):
        """An image-only stage: `draw(u [n_draws], key[, spacing]) -> params`,
        `fn(params, image)`; the label passes unchanged."""
        if prob > 0:
            stages.append(
                _Stage(
                    name,
                    n_draws + 1,
                    lambda u, key, *spacing: (u[0] < prob, draw(u[1:], key, *spacing)),
                    lambda p, image, label: (fn(p, image), label),
                    uses_spacing=uses_spacing,
                )
            )

    _acquisition_stages(c, spatial, intensity)

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
    # torchio's RandomGamma draw, on nnU-Net's [min, max] rescaling (negative z-scores)
    intensity(
        "log_gamma",
        c.log_gamma_prob,
        channels,
        lambda u, k: jnp.exp(_lerp(u, c.log_gamma_range)),
        lambda g, x: adjust_gamma(x, g, retain_stats=False),
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


def _acquisition_stages(c: ml_collections.ConfigDict, spatial: tuple[int, ...], intensity):
    """Motion and anisotropy (`jaxseg.augment.mri`): MRI acquisition artefacts, first of the
    intensity stages because the scanner makes them before any intensity variation."""
    dims = len(spatial)
    if c.motion_prob > 0:
        k, na = c.motion_num_transforms, 1 if dims == 2 else 3

        def draw_motion(u, key, spacing):
            angles = jnp.deg2rad(_lerp(u[: k * na], c.motion_degrees)).reshape(k, na)
            rotations = jax.vmap(lambda a: rotation_matrix(a, dims))(angles)
            # rigid in mm, not in voxels: diag(1 / spacing) @ R @ diag(spacing)
            matrices = rotations * spacing[None, None, :] / spacing[None, :, None]
            shifts = _lerp(u[k * na : k * (na + dims)], c.motion_translation).reshape(k, dims)
            # torchio's times: k equal steps, each moved by up to 0.3 step (so still sorted)
            step = 1.0 / (k + 1)
            times = step * (jnp.arange(k) + 1.0) + _lerp(
                u[k * (na + dims) :], (-0.3 * step, 0.3 * step)
            )
            return matrices, shifts / spacing, times

        intensity(
            "motion",
            c.motion_prob,
            k * (na + dims + 1),
            draw_motion,
            lambda p, x: motion(x, *p, c.pad_mode),
            uses_spacing=True,
        )
    axes = [a for a in c.anisotropy_axes if a < dims]
    if c.anisotropy_prob > 0:
        if not axes:
            raise ConfigError(
                f"augment.anisotropy_axes = {c.anisotropy_axes!r}: no axis of a {dims}D "
                f"image (axes 0..{dims - 1})."
            )
        cap = c.anisotropy_max_spacing

        def draw_anisotropy(u, key, spacing):
            pick = jnp.minimum(jnp.floor(u[0] * len(axes)), len(axes) - 1).astype(jnp.int32)
            axis = jnp.asarray(axes, jnp.int32)[pick]
            factor = _lerp(u[1], c.anisotropy_downsampling)
            if cap is not None:
                # relative to the axis' spacing, never beyond `cap`: a coarse axis stays as is
                factor = jnp.minimum(factor, jnp.maximum(1.0, cap / spacing[axis]))
            return axis, factor

        def apply_anisotropy(p, x):
            axis, factor = p
            out = x  # the axis is traced: compute each candidate and select
            for a in axes:
                out = jnp.where(axis == a, anisotropy(x, a, factor, c.pad_mode), out)
            return out

        intensity("anisotropy", c.anisotropy_prob, 2, draw_anisotropy, apply_anisotropy, True)


def _batch_spacing(spacing, batch: int, dims: int) -> jax.Array:
    """`None` (1 per axis: voxels), `[d]` or `[B, d]` -> float32 `[B, d]`."""
    if spacing is None:
        return jnp.ones((batch, dims), jnp.float32)
    if np.shape(spacing) not in ((dims,), (batch, dims)):
        raise ConfigError(
            f"augment_batch: spacing has shape {np.shape(spacing)}; expected ({dims},) or "
            f"({batch}, {dims}) (mm per spatial axis)."
        )
    return jnp.broadcast_to(jnp.asarray(spacing, jnp.float32), (batch, dims))


def augment_batch(
    key: jax.Array,
    image: jax.Array,
    label: jax.Array,
    config,
    fields: jax.Array | None = None,
    spacing=None,
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
    spacing: mm per spatial axis, `[d]` or per example `[B, d]` (the model grid's,
    `data.target_spacing`); motion translations and the anisotropy cap are in mm with it,
    in voxels without it (None: 1 per axis).
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
    spacing = _batch_spacing(spacing, image.shape[0], label.ndim - 1)
    starts = np.cumsum([0] + [st.n_draws for st in stages])
    keys = jax.random.split(key, image.shape[0])
    draws = jax.vmap(lambda k: jax.random.uniform(k, (int(starts[-1]),)))(keys)  # [B, n]
    for i, stage in enumerate(stages):
        u = draws[:, starts[i] : starts[i + 1]]

        # field keys only for the stages that need them (elastic, noise); fold_in by position
        def decide(u, k, sp, stage=stage, i=i):
            return stage.decide(u, jax.random.fold_in(k, i), *((sp,) if stage.uses_spacing else ()))

        fired, params = jax.vmap(decide)(u, keys, spacing)
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


def augment_example(key: jax.Array, image: jax.Array, label: jax.Array, config, spacing=None):
    """One example `image [*S, C]`, `label [*S]` (spacing `[d]` or None): `augment_batch`
    on a batch of one."""
    x, y = augment_batch(key, image[None], label[None], config, spacing=spacing)
    return x[0], y[0]
