"""Host-side preprocessing: intensity normalisation (numpy).

Normalisation, per channel, chosen by the channel's modality (see
`jaxseg.data.dataset.DatasetSpec.modalities`):

- "CT" (case-insensitive): clip to the window `(lo, hi)` and scale linearly to [-1, 1]:
  `y = (clip(x, lo, hi) - (lo + hi) / 2) / ((hi - lo) / 2)`. The default window
  (-1000, 1000) HU keeps air (-1) to dense bone (+1).
- "noNorm": unchanged (cast to float32). "rgb_to_0_1": `x / 255`.
- anything else (MRI, US, T1, FLAIR, ...): z-score `y = (x - mean) / max(std, 1e-8)`.
  If more than half of the channel's voxels are exactly 0 (skull-stripped brain MRI,
  zero-padded scans) the mean and std are computed over the nonzero voxels only, those
  voxels are z-scored and the zero voxels stay 0 (as nnU-Net does with its nonzero mask).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from jaxseg.errors import DataError

__all__ = ["normalize", "normalization_scheme"]

_EPS = 1e-8


def _zscore(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    nonzero = x != 0
    if np.count_nonzero(~nonzero) > 0.5 * x.size:
        vals = x[nonzero]
        if vals.size == 0:
            return np.zeros_like(x)
        out = np.zeros_like(x)
        out[nonzero] = (vals - vals.mean()) / max(vals.std(), _EPS)
        return out
    return (x - x.mean()) / max(x.std(), _EPS)


def _scheme_key(modality: str) -> str:
    key = str(modality).casefold()
    return key if key in ("ct", "nonorm", "rgb_to_0_1") else "zscore"


def normalization_scheme(
    modalities: Sequence[str], ct_window: tuple[float, float] = (-1000.0, 1000.0)
) -> list[dict]:
    """What `normalize` does to each channel, as JSON-ready dicts (export metadata).

    One dict per channel: {"channel", "modality", "scheme"} plus, for CT, the window and
    the formula. A serving client applies the same per-channel transform before the model.
    """
    lo, hi = float(ct_window[0]), float(ct_window[1])
    described = {
        "ct": {
            "scheme": "ct_window",
            "window": [lo, hi],
            "formula": "(clip(x, lo, hi) - (lo + hi) / 2) / ((hi - lo) / 2)",
        },
        "nonorm": {"scheme": "none", "formula": "x"},
        "rgb_to_0_1": {"scheme": "rgb_to_0_1", "formula": "x / 255"},
        "zscore": {
            "scheme": "zscore",
            "formula": "(x - mean) / max(std, 1e-8), per case; over the nonzero voxels "
            "(zeros kept 0) when more than half of the channel is exactly 0",
        },
    }
    return [
        {"channel": c, "modality": str(m), **described[_scheme_key(m)]}
        for c, m in enumerate(modalities)
    ]


def normalize(
    image: np.ndarray, modalities: Sequence[str], ct_window: tuple[float, float] = (-1000.0, 1000.0)
) -> np.ndarray:
    """Normalises each channel of `image` `[..., C]` according to `modalities[c]`.

    Returns float32 of the same shape. Raises DataError when the channel count and the
    number of modalities differ, and ValueError for an empty CT window.
    """
    image = np.asarray(image)
    if image.shape[-1] != len(modalities):
        raise DataError(
            f"normalize: image has {image.shape[-1]} channels but {len(modalities)} "
            f"modalities were given ({list(modalities)})."
        )
    lo, hi = float(ct_window[0]), float(ct_window[1])
    if not hi > lo:
        raise ValueError(f"ct_window must be (lo, hi) with hi > lo, got {ct_window}.")
    out = np.empty(image.shape, np.float32)
    for c, mod in enumerate(modalities):
        x = image[..., c]
        key = _scheme_key(mod)
        if key == "ct":
            y = (np.clip(x.astype(np.float64), lo, hi) - (lo + hi) / 2) / ((hi - lo) / 2)
        elif key == "nonorm":
            y = x
        elif key == "rgb_to_0_1":
            y = x.astype(np.float64) / 255.0
        else:
            y = _zscore(x)
        out[..., c] = y
    return out
