"""Intensity normalisation per channel (numpy, host side).

`data.normalize` chooses one method per channel (a single name applies to every channel):

- "auto" (the default, `None`): by the channel's modality (`DatasetSpec.modalities`):
  - "CT" (case-insensitive) with dataset statistics (`data.intensity_stats[c] = (p0.5,
    p99.5, mean, std)` of the foreground voxels, from `python -m jaxseg.plan`): clip to
    `[p0.5, p99.5]`, then `(x - mean) / max(std, 1e-8)` (nnU-Net's CTNormalization).
    Without statistics: "ct_window" below.
  - "noNorm": unchanged (cast to float32). "rgb_to_0_1": `x / 255`.
  - anything else (MRI, US, T1, FLAIR, ...): "zscore".
- "zscore": `y = (x - mean) / max(std, 1e-8)` per image. With a nonzero mask
  (`data.crop_nonzero`) the statistics come from the mask (holes filled, any channel) and
  voxels outside it are 0, as nnU-Net does when cropping removed a large share of each
  image. Otherwise, if more than half of the channel's voxels are exactly 0 (skull-stripped
  MRI, zero-padded scans), the statistics are over the nonzero voxels and zeros stay 0.
  `data.normalize_mask` chooses the voxels explicitly (`NORMALIZE_MASKS`; `normalize`'s
  `nonzero_mask` and `stats_mask`): "foreground" the nonzero mask always, "label" the
  mean/std of the label's foreground (training only) applied over the nonzero mask.
- "minmax01": `(x - min) / max(max - min, 1e-8)`, in [0, 1], per image.
- "minmax11": `2 (x - min) / max(max - min, 1e-8) - 1`, in [-1, 1], per image.
- "ct_window": clip to the window `(lo, hi)` HU and scale linearly to [-1, 1],
  `y = (clip(x, lo, hi) - (lo + hi) / 2) / ((hi - lo) / 2)`; the window is
  `data.ct_window`, or `level -+ width / 2` from `data.window_level`/`data.window_width`.
  The default (-1000, 1000) HU keeps air (-1) to dense bone (+1).
- "none": unchanged.
- "percentile_clip+M" (M one of zscore, minmax01, minmax11, ct_window; "percentile_clip"
  alone is "+zscore"): clip to this image's `data.clip_percentiles` (default 0.5, 99.5)
  percentiles, then M. The percentiles and the clip use the voxels z-score statistics
  use (the mask, or the nonzero voxels of a mostly-zero channel, else all), so a
  skull-stripped background stays 0.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from jaxseg.errors import ConfigError, DataError

__all__ = [
    "METHODS",
    "NORMALIZE_MASKS",
    "channel_methods",
    "normalization_scheme",
    "normalize",
    "window_from_level_width",
]

_EPS = 1e-8

# The names `data.normalize` accepts; "percentile_clip+<one of _AFTER_CLIP>" as well.
METHODS = ("auto", "zscore", "minmax01", "minmax11", "ct_window", "none", "percentile_clip")
_AFTER_CLIP = ("zscore", "minmax01", "minmax11", "ct_window")

# `data.normalize_mask`: which voxels z-score statistics come from (preprocess.Preprocessing).
# "none": the rules above; "foreground": the nonzero mask (any channel, holes filled, as
# nnU-Net's use_mask_for_norm), 0 outside; "label": the label's foreground voxels when the
# case has a label (training patches), the nonzero mask when it has none (inference).
NORMALIZE_MASKS = ("none", "foreground", "label")

_FORMULAS = {
    "ct_window": "(clip(x, lo, hi) - (lo + hi) / 2) / ((hi - lo) / 2)",
    "minmax01": "(x - min) / max(max - min, 1e-8)",
    "minmax11": "2 * (x - min) / max(max - min, 1e-8) - 1",
    "none": "x",
}


def _valid_names() -> str:
    return ", ".join(METHODS[:-1]) + ", percentile_clip[+" + "|".join(_AFTER_CLIP) + "]"


def _canonical_method(name, where: str) -> str:
    text = str(name).strip().lower() if name is not None else "auto"
    first, _, then = text.partition("+")
    if first == "percentile_clip":
        then = then or "zscore"
        if then in _AFTER_CLIP:
            return f"percentile_clip+{then}"
    elif not then and first in METHODS:
        return first
    raise ConfigError(f"{where} = {name!r} is not a normalisation; valid: {_valid_names()}.")


def channel_methods(normalize, channels: int) -> tuple[str, ...]:
    """`data.normalize` (None, one name, or one name per channel) -> a canonical name per
    channel. ConfigError for an unknown name or a list of the wrong length."""
    if normalize is None or isinstance(normalize, str):
        return (_canonical_method(normalize, "data.normalize"),) * channels
    names = list(normalize)
    if len(names) != channels:
        raise ConfigError(
            f"data.normalize has {len(names)} entries for {channels} channel(s); give one "
            "name, or one per channel."
        )
    return tuple(_canonical_method(n, f"data.normalize[{c}]") for c, n in enumerate(names))


def window_from_level_width(level, width) -> tuple[float, float]:
    """A CT window given as level and width (HU) -> (lo, hi)."""
    level, width = float(level), float(width)
    if not (math.isfinite(level) and math.isfinite(width) and width > 0):
        raise ConfigError(
            f"data.window_level = {level}, data.window_width = {width}: expected finite "
            "values with a width > 0 HU."
        )
    return level - width / 2, level + width / 2


def _check_percentiles(percentiles) -> tuple[float, float]:
    lo, hi = (float(p) for p in percentiles)
    if not 0.0 <= lo < hi <= 100.0:
        raise ConfigError(
            f"data.clip_percentiles = {tuple(percentiles)}: expected (lo, hi) with "
            "0 <= lo < hi <= 100."
        )
    return lo, hi


def _stats_mask(x: np.ndarray, mask: np.ndarray | None) -> np.ndarray | None:
    # The voxels whose statistics describe the image (None: all of them).
    if mask is None and np.count_nonzero(x == 0) > 0.5 * x.size:
        return x != 0
    return mask


def _zscore(
    x: np.ndarray, mask: np.ndarray | None, stats_mask: np.ndarray | None = None
) -> np.ndarray:
    # stats_mask: the voxels mean and std come from (default: those of `mask`).
    x = x.astype(np.float64)
    mask = _stats_mask(x, mask)
    vals = x[stats_mask] if stats_mask is not None else (x if mask is None else x[mask])
    if not vals.size:
        return np.zeros_like(x) if mask is not None else x - x.mean()
    mean, std = vals.mean(), max(vals.std(), _EPS)
    if mask is None:
        return (x - mean) / std
    out = np.zeros_like(x)
    out[mask] = (x[mask] - mean) / std
    return out


def _percentile_clip(x: np.ndarray, mask, percentiles) -> np.ndarray:
    x = x.astype(np.float64)
    mask = _stats_mask(x, mask)
    vals = x if mask is None else x[mask]
    if not vals.size:
        return x
    lo, hi = np.percentile(vals, percentiles)
    if mask is None:
        return np.clip(x, lo, hi)
    out = x.copy()
    out[mask] = np.clip(vals, lo, hi)
    return out


def _scheme_key(modality: str) -> str:
    key = str(modality).casefold()
    return key if key in ("ct", "nonorm", "rgb_to_0_1") else "zscore"


def _channel_stats(intensity_stats, channels: int) -> list[tuple[float, ...] | None]:
    if intensity_stats is None:
        return [None] * channels
    stats = list(intensity_stats)
    if len(stats) != channels:
        raise ConfigError(
            f"data.intensity_stats has {len(stats)} entries for {channels} channel(s); "
            "give one (p0.5, p99.5, mean, std) or None per channel."
        )
    out = []
    for c, s in enumerate(stats):
        if s is None:
            out.append(None)
            continue
        values = tuple(float(v) for v in s)
        if len(values) != 4 or not all(math.isfinite(v) for v in values) or values[1] < values[0]:
            raise ConfigError(
                f"data.intensity_stats[{c}] = {s!r}: expected (p0.5, p99.5, mean, std), "
                "finite, with p0.5 <= p99.5."
            )
        out.append(values)
    return out


def _auto_method(modality: str, stats) -> str:
    key = _scheme_key(modality)
    if key == "ct":
        return "ct_dataset_zscore" if stats is not None else "ct_window"
    return {"nonorm": "none", "rgb_to_0_1": "rgb_to_0_1"}.get(key, "zscore")


def normalization_scheme(
    modalities: Sequence[str],
    ct_window: tuple[float, float] = (-1000.0, 1000.0),
    intensity_stats=None,
    nonzero_mask: bool = False,
    methods: Sequence[str] | None = None,
    clip_percentiles: tuple[float, float] = (0.5, 99.5),
    normalize_mask: str = "none",
) -> list[dict]:
    """What `normalize` does to each channel, as JSON-ready dicts (export metadata).

    One dict per channel: {"channel", "modality", "scheme", "formula"} plus the window,
    the dataset statistics or the clip percentiles. A serving client applies the same
    transform before the model. "auto" channels are described as before `methods` existed.
    """
    lo, hi = float(ct_window[0]), float(ct_window[1])
    methods = channel_methods(methods, len(modalities))
    zscore_rule = (
        "over the nonzero mask (holes filled, any channel; 0 outside it)"
        if nonzero_mask or normalize_mask != "none"
        else "over the nonzero voxels (zeros kept 0) when more than half of the channel is 0"
    )
    if normalize_mask == "label":  # this describes inference, where there is no label
        zscore_rule += "; in training the mean and std came from the label's foreground"
    out = []
    stats_all = _channel_stats(intensity_stats, len(modalities))
    for c, (m, stats, method) in enumerate(zip(modalities, stats_all, methods)):
        name = _auto_method(m, stats) if method == "auto" else method
        then = name.partition("+")[2] or name
        if name == "ct_dataset_zscore":
            d = {
                "scheme": "ct_dataset_zscore",
                "clip": [stats[0], stats[1]],
                "mean": stats[2],
                "std": stats[3],
                "formula": "(clip(x, p0.5, p99.5) - mean) / max(std, 1e-8)",
            }
        elif name == "rgb_to_0_1":
            d = {"scheme": "rgb_to_0_1", "formula": "x / 255"}
        elif then == "zscore":
            d = {
                "scheme": name,
                "formula": f"(x - mean) / max(std, 1e-8), per image, {zscore_rule}",
            }
        else:
            d = {"scheme": name, "formula": _FORMULAS[then]}
        if then == "ct_window":
            d["window"] = [lo, hi]
        if name.startswith("percentile_clip"):
            d["percentiles"] = list(_check_percentiles(clip_percentiles))
            d["formula"] = f"clip to the image's percentiles, then {d['formula']}"
        if method != "auto":
            d["normalize"] = method
        out.append({"channel": c, "modality": str(m), **d})
    return out


def normalize(
    image: np.ndarray,
    modalities: Sequence[str],
    ct_window: tuple[float, float] = (-1000.0, 1000.0),
    intensity_stats=None,
    nonzero_mask: np.ndarray | None = None,
    methods: Sequence[str] | str | None = None,
    clip_percentiles: tuple[float, float] = (0.5, 99.5),
    stats_mask: np.ndarray | None = None,
) -> np.ndarray:
    """Normalises each channel of `image` `[..., C]` by `methods[c]` (module docstring).

    methods: None or "auto" (by `modalities[c]`), one name, or one name per channel.
    intensity_stats: None, or per channel None / (p0.5, p99.5, mean, std) for CT channels.
    nonzero_mask: bool `[...]`; z-scored channels use it for their statistics and are 0
      outside it (None: the automatic more-than-half-zeros rule).
    stats_mask: bool `[...]` or None; z-scored channels take mean and std from these voxels
      (the label's foreground for `data.normalize_mask="label"`) instead, and apply them
      where `nonzero_mask` says. Nothing else reads it.
    Returns float32 of the same shape. Raises DataError when the channel count and the
    number of modalities differ, ConfigError for an unknown method, an empty CT window,
    bad percentiles or bad statistics.
    """
    image = np.asarray(image)
    if image.shape[-1] != len(modalities):
        raise DataError(
            f"normalize: image has {image.shape[-1]} channels but {len(modalities)} "
            f"modalities were given ({list(modalities)})."
        )
    lo, hi = float(ct_window[0]), float(ct_window[1])
    if not hi > lo:
        raise ConfigError(f"data.ct_window must be (lo, hi) with hi > lo, got {ct_window}.")
    methods = channel_methods(methods, len(modalities))
    percentiles = _check_percentiles(clip_percentiles)
    stats = _channel_stats(intensity_stats, len(modalities))
    out = np.empty(image.shape, np.float32)
    for c, (mod, method) in enumerate(zip(modalities, methods)):
        x = image[..., c]
        name = _auto_method(mod, stats[c]) if method == "auto" else method
        if name.startswith("percentile_clip"):
            x = _percentile_clip(x, nonzero_mask, percentiles)
            name = name.partition("+")[2]
        if name == "ct_dataset_zscore":
            p_lo, p_hi, mean, std = stats[c]
            y = (np.clip(x.astype(np.float64), p_lo, p_hi) - mean) / max(std, _EPS)
        elif name == "ct_window":
            y = (np.clip(x.astype(np.float64), lo, hi) - (lo + hi) / 2) / ((hi - lo) / 2)
        elif name == "none":
            y = x
        elif name == "rgb_to_0_1":
            y = x.astype(np.float64) / 255.0
        elif name in ("minmax01", "minmax11"):
            x = x.astype(np.float64)
            y = (x - x.min()) / max(float(x.max() - x.min()), _EPS) if x.size else x
            if name == "minmax11":
                y = 2.0 * y - 1.0
        else:
            y = _zscore(x, nonzero_mask, stats_mask)
        out[..., c] = y
    return out
