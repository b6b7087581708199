"""Host-side preprocessing: a case from its file grid to the model's grid, and back (numpy).

`Preprocessing.from_config(config.data, modalities)` is the one description of it that
training, validation, evaluation, predict and export share. For an image `[*S, C]` with
its spacing, `Preprocessing.image` does, in nnU-Net's order:

1. crop to the nonzero region (`data.crop_nonzero`; the box is undone on the way back);
2. denoise and CLAHE, on the channels that ask for them (`jaxseg.data.enhance`; off by
   default; slow, so cached on disk per case under `data.cache_dir`, `jaxseg.data.cache`);
3. normalise each channel by `data.normalize` ("auto", the default: by its modality, as
   nnU-Net does; `jaxseg.data.normalize`);
4. resample to `data.target_spacing` (cubic; `jaxseg.data.resample`).

and returns the model-grid image with a `CaseGrid` recording the way back:
`Preprocessing.to_file_grid` resamples class probabilities back to the cropped file
grid (linear) and `CaseGrid.uncrop` puts a label map back into the full file grid, so
predictions have the input's own shape and metrics are computed on it, in mm.
Labels take the same crop and a per-class linear resampling (`Preprocessing.label`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from jaxseg.data import resample
from jaxseg.data.enhance import Enhancement
from jaxseg.data.normalize import (
    NORMALIZE_MASKS,
    _channel_stats,
    _check_percentiles,
    channel_methods,
    normalization_scheme,
    normalize,
    window_from_level_width,
)
from jaxseg.errors import ConfigError

__all__ = [
    "PAD_VALUE",
    "CaseGrid",
    "Enhancement",
    "Preprocessing",
    "normalize",
    "normalization_scheme",
]

# The value of every voxel outside an image once it is normalised: training patches that
# overhang the image, sliding-window inference on an image smaller than the patch, and
# the augmentation's out-of-volume fill all read it. They must agree (nnU-Net pads with 0
# on both sides): a model trained on one border value and run on another sees a patch
# that is mostly out of distribution, and on cases smaller than the patch that cost
# 0.94 Dice (issue 10). 0 is the z-scored mean and the nonzero-mask background.
PAD_VALUE = 0.0


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
    """How cases go to the model's grid and back (see the module docstring).

    normalize: one canonical `jaxseg.data.normalize` method per channel, or None ("auto"
    for every channel). enhancement: denoising and CLAHE (off by default).
    normalize_mask: the voxels z-score statistics come from (`normalize.NORMALIZE_MASKS`).
    """

    modalities: tuple[str, ...]
    ct_window: tuple[float, float] = (-1000.0, 1000.0)
    intensity_stats: tuple | None = None
    target_spacing: tuple[float, ...] | None = None
    crop_nonzero: bool = False
    normalize: tuple[str, ...] | None = None
    clip_percentiles: tuple[float, float] = (0.5, 99.5)
    enhancement: Enhancement = Enhancement()
    normalize_mask: str = "none"

    def __post_init__(self):
        if self.normalize_mask not in NORMALIZE_MASKS:
            raise ConfigError(
                f"data.normalize_mask = {self.normalize_mask!r}: expected one of {NORMALIZE_MASKS}."
            )
        # One spelling per meaning, so that equal plans compare equal (fold ensembles).
        if self.normalize is not None:
            methods = channel_methods(self.normalize, len(self.modalities))
            object.__setattr__(self, "normalize", None if set(methods) == {"auto"} else methods)

    @classmethod
    def from_config(cls, data, modalities: Sequence[str]) -> Preprocessing:
        """From a config's `data` section (`ct_window` or `window_level`/`window_width`,
        `intensity_stats`, `target_spacing`, `crop_nonzero`, `normalize`,
        `clip_percentiles`, `clahe*`, `denoise*`, `cache_dir`; absent keys, as in old
        workdirs, are off)."""
        stats = data.get("intensity_stats")
        target = data.get("target_spacing")
        level, width = data.get("window_level"), data.get("window_width")
        if (level is None) != (width is None):
            raise ConfigError(
                f"data.window_level = {level}, data.window_width = {width}: give both "
                "(they replace data.ct_window) or neither."
            )
        window = (
            tuple(float(v) for v in data.ct_window)
            if level is None
            else window_from_level_width(level, width)
        )
        prep = cls(
            modalities=tuple(str(m) for m in modalities),
            ct_window=window,
            intensity_stats=None
            if stats is None
            else tuple(None if s is None else tuple(float(v) for v in s) for s in stats),
            target_spacing=None if target is None else tuple(float(s) for s in target),
            crop_nonzero=bool(data.get("crop_nonzero", False)),
            normalize=channel_methods(data.get("normalize"), len(modalities)),
            clip_percentiles=_check_percentiles(data.get("clip_percentiles", (0.5, 99.5))),
            enhancement=Enhancement.from_config(data),
            normalize_mask=data.get("normalize_mask", "none"),
        )
        _channel_stats(prep.intensity_stats, len(prep.modalities))
        prep.enhancement.check_channels(len(prep.modalities))
        return prep

    def describe(self) -> dict:
        """JSON-ready: the enhancement, normalisation per channel, crop and target spacing."""
        return {
            "normalization": normalization_scheme(
                self.modalities,
                self.ct_window,
                self.intensity_stats,
                self.crop_nonzero,
                self.normalize,
                self.clip_percentiles,
                self.normalize_mask,
            ),
            "crop_nonzero": self.crop_nonzero,
            "target_spacing": None if self.target_spacing is None else list(self.target_spacing),
            # only when set, so that the metadata of earlier runs is unchanged
            **({"normalize_mask": self.normalize_mask} if self.normalize_mask != "none" else {}),
            **self.enhancement.describe(),
        }

    def image(
        self,
        data: np.ndarray,
        spacing: Sequence[float],
        *,
        case: str | None = None,
        label: np.ndarray | None = None,
    ) -> tuple[np.ndarray, CaseGrid]:
        """`data [*S, C]` at `spacing` -> (float32 `[*S', C]` on the model's grid, CaseGrid).

        case: the case's name, for errors (CLAHE on a constant channel).
        label: class indices `[*S]` of a training case; read only with
          `normalize_mask="label"` (statistics over its foreground). Never pass it for
          validation or inference: the input would then depend on the answer."""
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
            if self.normalize_mask != "none":
                mask = resample.nonzero_mask(data)
        stats_mask = None
        if self.normalize_mask == "label" and label is not None:
            fg = resample.crop(np.asarray(label), box) > 0
            # a case without foreground has no label statistics: its nonzero mask's instead
            stats_mask = fg if fg.any() else None
        if self.enhancement.active:
            data = self.enhancement.apply(
                data, spacing, case="<unnamed image>" if case is None else case
            )
        x = normalize(
            data,
            self.modalities,
            self.ct_window,
            self.intensity_stats,
            mask,
            self.normalize,
            self.clip_percentiles,
            stats_mask,
        )
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
