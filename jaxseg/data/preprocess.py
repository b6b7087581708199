"""Host-side preprocessing: a case from its file grid to the model's grid, and back (numpy).

`Preprocessing.from_config(config.data, modalities)` is the one description of it that
training, validation, evaluation, predict and export share. For an image `[*S, C]` with
its spacing, `Preprocessing.image` does, in nnU-Net's order:

1. crop to the nonzero region (`data.crop_nonzero`; the box is undone on the way back);
2. normalise each channel by its modality (`normalize`, below);
3. resample to `data.target_spacing` (cubic; `jaxseg.data.resample`).

and returns the model-grid image with a `CaseGrid` recording the way back:
`Preprocessing.to_file_grid` resamples class probabilities back to the cropped file
grid (linear) and `CaseGrid.uncrop` puts a label map back into the full file grid, so
predictions have the input's own shape and metrics are computed on it, in mm.
Labels take the same crop and a per-class linear resampling (`Preprocessing.label`).

Normalisation, per channel, chosen by the channel's modality (`DatasetSpec.modalities`):

- "CT" (case-insensitive) with dataset statistics (`data.intensity_stats[c] = (p0.5, p99.5,
  mean, std)` of the foreground voxels, from `python -m jaxseg.plan`): clip to
  `[p0.5, p99.5]`, then `(x - mean) / max(std, 1e-8)` (nnU-Net's CTNormalization).
  Without statistics: clip to the window `(lo, hi)` and scale linearly to [-1, 1],
  `y = (clip(x, lo, hi) - (lo + hi) / 2) / ((hi - lo) / 2)`; the default window
  (-1000, 1000) HU keeps air (-1) to dense bone (+1).
- "noNorm": unchanged (cast to float32). "rgb_to_0_1": `x / 255`.
- anything else (MRI, US, T1, FLAIR, ...): z-score `y = (x - mean) / max(std, 1e-8)` per
  image. With `crop_nonzero` the statistics come from the nonzero mask (holes filled,
  any channel) and voxels outside it are 0, as nnU-Net does when cropping removed a large
  share of each image. Otherwise, if more than half of the channel's voxels are exactly 0
  (skull-stripped MRI, zero-padded scans), the mean and std are computed over the nonzero
  voxels only and the zero voxels stay 0.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import numpy as np

from jaxseg.data import resample
from jaxseg.errors import ConfigError, DataError

__all__ = [
    "PAD_VALUE",
    "CaseGrid",
    "Preprocessing",
    "normalize",
    "normalization_scheme",
]

_EPS = 1e-8

# The value of every voxel outside an image once it is normalised: training patches that
# overhang the image, sliding-window inference on an image smaller than the patch, and
# the augmentation's out-of-volume fill all read it. They must agree (nnU-Net pads with 0
# on both sides): a model trained on one border value and run on another sees a patch
# that is mostly out of distribution, and on cases smaller than the patch that cost
# 0.94 Dice (issue 10). 0 is the z-scored mean and the nonzero-mask background.
PAD_VALUE = 0.0


def _zscore(x: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
    x = x.astype(np.float64)
    if mask is None and np.count_nonzero(x == 0) > 0.5 * x.size:
        mask = x != 0
    if mask is None:
        return (x - x.mean()) / max(x.std(), _EPS)
    out = np.zeros_like(x)
    vals = x[mask]
    if vals.size:
        out[mask] = (vals - vals.mean()) / max(vals.std(), _EPS)
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


def normalization_scheme(
    modalities: Sequence[str],
    ct_window: tuple[float, float] = (-1000.0, 1000.0),
    intensity_stats=None,
    nonzero_mask: bool = False,
) -> list[dict]:
    """What `normalize` does to each channel, as JSON-ready dicts (export metadata).

    One dict per channel: {"channel", "modality", "scheme", "formula"} plus the window or
    the dataset statistics. A serving client applies the same transform before the model.
    """
    lo, hi = float(ct_window[0]), float(ct_window[1])
    zscore_rule = (
        "over the nonzero mask (holes filled, any channel; 0 outside it)"
        if nonzero_mask
        else "over the nonzero voxels (zeros kept 0) when more than half of the channel is 0"
    )
    out = []
    for c, (m, stats) in enumerate(
        zip(modalities, _channel_stats(intensity_stats, len(modalities)))
    ):
        key = _scheme_key(m)
        if key == "ct" and stats is not None:
            d = {
                "scheme": "ct_dataset_zscore",
                "clip": [stats[0], stats[1]],
                "mean": stats[2],
                "std": stats[3],
                "formula": "(clip(x, p0.5, p99.5) - mean) / max(std, 1e-8)",
            }
        elif key == "ct":
            d = {
                "scheme": "ct_window",
                "window": [lo, hi],
                "formula": "(clip(x, lo, hi) - (lo + hi) / 2) / ((hi - lo) / 2)",
            }
        elif key == "nonorm":
            d = {"scheme": "none", "formula": "x"}
        elif key == "rgb_to_0_1":
            d = {"scheme": "rgb_to_0_1", "formula": "x / 255"}
        else:
            d = {
                "scheme": "zscore",
                "formula": f"(x - mean) / max(std, 1e-8), per image, {zscore_rule}",
            }
        out.append({"channel": c, "modality": str(m), **d})
    return out


def normalize(
    image: np.ndarray,
    modalities: Sequence[str],
    ct_window: tuple[float, float] = (-1000.0, 1000.0),
    intensity_stats=None,
    nonzero_mask: np.ndarray | None = None,
) -> np.ndarray:
    """Normalises each channel of `image` `[..., C]` according to `modalities[c]`.

    intensity_stats: None, or per channel None / (p0.5, p99.5, mean, std) for CT channels.
    nonzero_mask: bool `[...]`; z-scored channels use it for their statistics and are 0
      outside it (None: the automatic more-than-half-zeros rule).
    Returns float32 of the same shape. Raises DataError when the channel count and the
    number of modalities differ, ConfigError for an empty CT window or bad statistics.
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
    stats = _channel_stats(intensity_stats, len(modalities))
    out = np.empty(image.shape, np.float32)
    for c, mod in enumerate(modalities):
        x = image[..., c]
        key = _scheme_key(mod)
        if key == "ct" and stats[c] is not None:
            p_lo, p_hi, mean, std = stats[c]
            y = (np.clip(x.astype(np.float64), p_lo, p_hi) - mean) / max(std, _EPS)
        elif key == "ct":
            y = (np.clip(x.astype(np.float64), lo, hi) - (lo + hi) / 2) / ((hi - lo) / 2)
        elif key == "nonorm":
            y = x
        elif key == "rgb_to_0_1":
            y = x.astype(np.float64) / 255.0
        else:
            y = _zscore(x, nonzero_mask)
        out[..., c] = y
    return out


@dataclasses.dataclass(frozen=True)
class CaseGrid:
    """Where a model-grid image came from: the file grid `shape`/`spacing`, the crop
    `box` within it, and the grid the model saw (`model_shape`, `model_spacing`)."""

    shape: tuple[int, ...]
    spacing: tuple[float, ...]
    box: tuple[slice, ...]
    model_shape: tuple[int, ...]
    model_spacing: tuple[float, ...]

    @property
    def cropped_shape(self) -> tuple[int, ...]:
        return tuple(s.stop - s.start for s in self.box)

    def uncrop(self, labels: np.ndarray) -> np.ndarray:
        """A label map `[*cropped_shape]` -> `[*shape]`, background (0) outside the box."""
        return resample.uncrop(labels, self.box, self.shape, fill=0)


@dataclasses.dataclass(frozen=True)
class Preprocessing:
    """How cases go to the model's grid and back (see the module docstring)."""

    modalities: tuple[str, ...]
    ct_window: tuple[float, float] = (-1000.0, 1000.0)
    intensity_stats: tuple | None = None
    target_spacing: tuple[float, ...] | None = None
    crop_nonzero: bool = False

    @classmethod
    def from_config(cls, data, modalities: Sequence[str]) -> Preprocessing:
        """From a config's `data` section (`ct_window`, `intensity_stats`,
        `target_spacing`, `crop_nonzero`; absent keys, as in old workdirs, are off)."""
        stats = data.get("intensity_stats")
        target = data.get("target_spacing")
        prep = cls(
            modalities=tuple(str(m) for m in modalities),
            ct_window=tuple(float(v) for v in data.ct_window),
            intensity_stats=None
            if stats is None
            else tuple(None if s is None else tuple(float(v) for v in s) for s in stats),
            target_spacing=None if target is None else tuple(float(s) for s in target),
            crop_nonzero=bool(data.get("crop_nonzero", False)),
        )
        _channel_stats(prep.intensity_stats, len(prep.modalities))
        return prep

    def describe(self) -> dict:
        """JSON-ready: the normalisation per channel, the crop and the target spacing."""
        return {
            "normalization": normalization_scheme(
                self.modalities, self.ct_window, self.intensity_stats, self.crop_nonzero
            ),
            "crop_nonzero": self.crop_nonzero,
            "target_spacing": None if self.target_spacing is None else list(self.target_spacing),
        }

    def image(self, data: np.ndarray, spacing: Sequence[float]) -> tuple[np.ndarray, CaseGrid]:
        """`data [*S, C]` at `spacing` -> (float32 `[*S', C]` on the model's grid, CaseGrid)."""
        data = np.asarray(data)
        shape = tuple(data.shape[:-1])
        spacing = tuple(float(s) for s in spacing)
        if self.target_spacing is not None and len(self.target_spacing) != len(shape):
            raise ConfigError(
                f"data.target_spacing {self.target_spacing} has {len(self.target_spacing)} "
                f"values for a {len(shape)}D image."
            )
        if self.crop_nonzero:
            box = resample.nonzero_box(data)
            data = resample.crop(data, box)
            mask = resample.nonzero_mask(data)
        else:
            box, mask = tuple(slice(0, n) for n in shape), None
        x = normalize(data, self.modalities, self.ct_window, self.intensity_stats, mask)
        model_spacing = spacing
        if self.target_spacing is not None:
            x = resample.resample_image(x, spacing, self.target_spacing)
            model_spacing = self.target_spacing
        grid = CaseGrid(shape, spacing, box, tuple(x.shape[:-1]), model_spacing)
        return x, grid

    def label(
        self, label: np.ndarray, grid: CaseGrid, num_classes: int
    ) -> tuple[np.ndarray, list[int]]:
        """A label `[*S]` of the case `grid` came from -> (int32 `[*model_shape]`, the
        classes resampling made vanish: structures smaller than one target voxel)."""
        cropped = resample.crop(np.asarray(label), grid.box)
        if grid.model_shape == grid.cropped_shape:
            return np.ascontiguousarray(cropped, np.int32), []
        out = resample.resample_label(
            cropped, grid.spacing, grid.model_spacing, classes=range(num_classes)
        )
        return out, resample.vanished_classes(cropped, out)

    def to_file_grid(self, probs: np.ndarray, grid: CaseGrid) -> np.ndarray:
        """Class probabilities `[*model_shape, K]` -> `[*cropped_shape, K]` at the file's
        spacing (linear, nearest along a coarse axis); uncrop the argmax with the grid."""
        if tuple(probs.shape[:-1]) == grid.cropped_shape:
            return probs
        return resample.resample_probabilities(
            probs, grid.cropped_shape, spacing=grid.spacing, target_spacing=grid.model_spacing
        )
