"""`augment.*` config keys: defaults from `jaxseg.defaults`, validation with errors that
name the key."""

from __future__ import annotations

import ml_collections

from jaxseg.augment.geometry import PAD_MODES
from jaxseg.errors import ConfigError


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
    pair("log_gamma_range")
    pair("motion_degrees")
    pair("motion_translation")
    pair("anisotropy_downsampling", lo_min=1.0)
    n = c["motion_num_transforms"]
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ConfigError(f"augment.motion_num_transforms = {n!r}: expected an int >= 1.")
    axes = c["anisotropy_axes"]
    axes = (axes,) if isinstance(axes, int) else axes
    try:
        ok = len(axes) > 0 and all(a in (0, 1, 2) and not isinstance(a, bool) for a in axes)
    except TypeError:
        ok = False
    if not ok or len(set(axes)) != len(axes):
        raise ConfigError(
            f"augment.anisotropy_axes = {c['anisotropy_axes']!r}: expected distinct spatial "
            "axes from (0, 1, 2) (2D images use those below 2)."
        )
    c["anisotropy_axes"] = tuple(int(a) for a in axes)
    cap = c["anisotropy_max_spacing"]
    if cap is not None and (not isinstance(cap, (int, float)) or not cap > 0):
        raise ConfigError(
            f"augment.anisotropy_max_spacing = {cap!r}: expected None or a spacing > 0 "
            "(mm with the batch's spacing, voxels without)."
        )
    if c["pad_mode"] not in PAD_MODES:
        raise ConfigError(f"augment.pad_mode = {c['pad_mode']!r}: expected one of {PAD_MODES}.")
    for k in ("scale_per_axis", "gamma_retain_stats"):
        if not isinstance(c[k], bool):
            raise ConfigError(f"augment.{k} = {c[k]!r}: expected True or False.")
    return ml_collections.ConfigDict(c)
