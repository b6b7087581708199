"""Per-case image enhancement before normalisation: non-local-means denoising and CLAHE.

Both are scikit-image's (`skimage.restoration.denoise_nl_means` with the noise level from
`estimate_sigma`; `skimage.exposure.equalize_adapthist`), per channel, on 2D or 3D
images, and both are slow (seconds per 3D case), so `Enhancement.apply` runs them once per
case and input and keeps the result in an `ArrayCache` (`jaxseg.data.cache`).

Order: denoise first, then CLAHE (CLAHE amplifies noise in flat regions).

- Denoising ("nl_means"): `sigma = estimate_sigma(x)` of the raw channel, then
  `denoise_nl_means(x, patch_size, patch_distance, h=h_factor * sigma, sigma=sigma,
  fast_mode=True, preserve_range=True)`; intensities keep their units (HU stay HU). A
  channel whose estimated noise is 0 is unchanged (there is nothing to remove, and h = 0
  would divide by zero).
- CLAHE: the channel is rescaled to [0, 1] by its min and max, equalised with the kernel
  (contextual region) `kernel_mm` converted to voxels by the spacing (`round(mm /
  spacing)`, at least 1, at most the axis length; None: skimage's 1/8 of each axis) and
  `clip_limit`, and returned in [0, 1]. A constant channel has no range to rescale: a
  DataError naming the case.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import numpy as np

from jaxseg.data import cache as cache_lib
from jaxseg.errors import ConfigError, DataError

__all__ = [
    "Clahe",
    "Enhancement",
    "NlMeans",
    "clahe_channel",
    "clahe_kernel_voxels",
    "nl_means_channel",
]


def _channels(value, key: str) -> tuple[int, ...] | None:
    if value is None:
        return None
    if isinstance(value, int | np.integer):
        value = (value,)
    out = tuple(int(c) for c in value)
    if not out or min(out) < 0 or len(set(out)) != len(out):
        raise ConfigError(
            f"{key} = {value!r}: expected None (every channel) or distinct channel indices >= 0."
        )
    return out


@dataclasses.dataclass(frozen=True)
class Clahe:
    """CLAHE settings: kernel (contextual region) in mm, scalar or per axis (None: 1/8
    of each axis), clip limit in (0, 1], histogram bins, channels (None: all)."""

    kernel_mm: tuple[float, ...] | None = None
    clip_limit: float = 0.01
    nbins: int = 256
    channels: tuple[int, ...] | None = None

    def __post_init__(self):
        if self.kernel_mm is not None and not all(
            math.isfinite(k) and k > 0 for k in self.kernel_mm
        ):
            raise ConfigError(f"data.clahe_kernel_mm = {self.kernel_mm}: sizes must be > 0 mm.")
        if not 0.0 < self.clip_limit <= 1.0:
            raise ConfigError(f"data.clahe_clip_limit = {self.clip_limit}: expected (0, 1].")
        if self.nbins < 2:
            raise ConfigError(f"data.clahe_nbins = {self.nbins}: expected >= 2.")


@dataclasses.dataclass(frozen=True)
class NlMeans:
    """Non-local-means settings: patch size and search distance in voxels, filter
    strength `h_factor` times the estimated noise sigma, channels (None: all)."""

    patch_size: int = 5
    patch_distance: int = 6
    h_factor: float = 0.8
    channels: tuple[int, ...] | None = None

    def __post_init__(self):
        if self.patch_size < 1 or self.patch_distance < 1:
            raise ConfigError(
                f"data.denoise_patch_size = {self.patch_size}, data.denoise_patch_distance = "
                f"{self.patch_distance}: both must be >= 1 voxel."
            )
        if not (math.isfinite(self.h_factor) and self.h_factor > 0):
            raise ConfigError(f"data.denoise_h = {self.h_factor}: expected > 0.")


def _skimage(module: str):
    try:
        import importlib

        return importlib.import_module(f"skimage.{module}")
    except ImportError as e:  # a test dependency of jaxseg; CLAHE/denoising need it at run time
        raise ConfigError(
            "data.clahe / data.denoise need scikit-image and PyWavelets: pip install 'jaxseg[enhance]'."
        ) from e


def clahe_kernel_voxels(
    kernel_mm: Sequence[float] | None, spacing: Sequence[float], shape: Sequence[int]
) -> tuple[int, ...] | None:
    """Kernel size in mm (scalar as a 1-tuple, or per axis) -> voxels per axis."""
    if kernel_mm is None:
        return None
    mm = tuple(kernel_mm) * len(shape) if len(kernel_mm) == 1 else tuple(kernel_mm)
    if len(mm) != len(shape):
        raise ConfigError(
            f"data.clahe_kernel_mm = {tuple(kernel_mm)} has {len(mm)} values for a "
            f"{len(shape)}D image; give one, or one per axis."
        )
    return tuple(int(min(max(round(k / float(s)), 1), n)) for k, s, n in zip(mm, spacing, shape))


def clahe_channel(
    x: np.ndarray, spacing: Sequence[float], settings: Clahe, *, case: str, channel: int
) -> np.ndarray:
    """CLAHE of one channel `[X, Y, (Z)]` -> float32 in [0, 1] (module docstring)."""
    x = np.asarray(x, np.float64)
    lo, hi = (float(x.min()), float(x.max())) if x.size else (0.0, 0.0)
    if not hi > lo:
        raise DataError(
            f"case '{case}': channel {channel} is constant ({lo:g}); CLAHE needs an intensity "
            "range. Remove the case, or leave the channel out of data.clahe_channels."
        )
    exposure = _skimage("exposure")
    # Called undecorated: the public function treats any array whose last axis is 3 or 4
    # long as RGB(A), so a 3D volume with 3 or 4 slices would be equalised as colour.
    equalize = getattr(exposure.equalize_adapthist, "__wrapped__", exposure.equalize_adapthist)
    kernel = clahe_kernel_voxels(settings.kernel_mm, spacing, x.shape)
    y = equalize(
        (x - lo) / (hi - lo),
        kernel_size=kernel,
        clip_limit=settings.clip_limit,
        nbins=settings.nbins,
    )
    return np.asarray(y, np.float32)


def nl_means_channel(x: np.ndarray, settings: NlMeans) -> np.ndarray:
    """Non-local-means denoising of one channel `[X, Y, (Z)]` -> float32, same units."""
    restoration = _skimage("restoration")
    x = np.asarray(x, np.float64)
    sigma = float(restoration.estimate_sigma(x))
    if not sigma > 0:
        return x.astype(np.float32)
    y = restoration.denoise_nl_means(
        x,
        patch_size=settings.patch_size,
        patch_distance=settings.patch_distance,
        h=settings.h_factor * sigma,
        sigma=sigma,
        fast_mode=True,
        preserve_range=True,
    )
    return np.asarray(y, np.float32)


@dataclasses.dataclass(frozen=True)
class Enhancement:
    """Denoising and CLAHE for a case, cached on disk (`cache_dir`; None: the default
    `cache.default_cache_dir()`). Off when both are None."""

    clahe: Clahe | None = None
    denoise: NlMeans | None = None
    cache_dir: str | None = dataclasses.field(default=None, compare=False)

    @property
    def active(self) -> bool:
        return self.clahe is not None or self.denoise is not None

    @classmethod
    def from_config(cls, data) -> Enhancement:
        """From a config's `data` section (`clahe*`, `denoise*`, `cache_dir`; absent keys,
        as in old workdirs, are off)."""
        clahe = denoise = None
        if data.get("clahe", False):
            kernel = data.get("clahe_kernel_mm")
            if kernel is not None:
                kernel = (
                    (float(kernel),)
                    if isinstance(kernel, int | float)
                    else tuple(float(k) for k in kernel)
                )
            clahe = Clahe(
                kernel_mm=kernel,
                clip_limit=float(data.get("clahe_clip_limit", 0.01)),
                nbins=int(data.get("clahe_nbins", 256)),
                channels=_channels(data.get("clahe_channels"), "data.clahe_channels"),
            )
        method = data.get("denoise")
        if method is not None:
            if method != "nl_means":
                raise ConfigError(
                    f"data.denoise = {method!r} is not a denoising method; valid: None, nl_means."
                )
            denoise = NlMeans(
                patch_size=int(data.get("denoise_patch_size", 5)),
                patch_distance=int(data.get("denoise_patch_distance", 6)),
                h_factor=float(data.get("denoise_h", 0.8)),
                channels=_channels(data.get("denoise_channels"), "data.denoise_channels"),
            )
        cache_dir = data.get("cache_dir")
        return cls(clahe, denoise, None if cache_dir is None else str(cache_dir))

    def describe(self) -> dict:
        """JSON-ready: the settings of each step (None when off)."""
        return {
            "denoise": None
            if self.denoise is None
            else {"method": "nl_means", **dataclasses.asdict(self.denoise)},
            "clahe": None if self.clahe is None else dataclasses.asdict(self.clahe),
        }

    def check_channels(self, channels: int) -> None:
        for name, step in (("clahe", self.clahe), ("denoise", self.denoise)):
            if step is not None and step.channels and max(step.channels) >= channels:
                raise ConfigError(
                    f"data.{name}_channels = {step.channels} names a channel the "
                    f"{channels}-channel dataset does not have."
                )

    def _compute(self, data: np.ndarray, spacing, case: str) -> np.ndarray:
        out = np.array(data, np.float32)
        for c in range(out.shape[-1]):
            if self.denoise is not None and (
                self.denoise.channels is None or c in self.denoise.channels
            ):
                out[..., c] = nl_means_channel(out[..., c], self.denoise)
            if self.clahe is not None and (self.clahe.channels is None or c in self.clahe.channels):
                out[..., c] = clahe_channel(out[..., c], spacing, self.clahe, case=case, channel=c)
        return out

    def apply(
        self, data: np.ndarray, spacing: Sequence[float], *, case: str = "<unnamed image>"
    ) -> np.ndarray:
        """`data [*S, C]` -> float32 `[*S, C]`, denoised and equalised, from the cache when
        this input was seen before (unchanged data when neither step is on)."""
        if not self.active:
            return data
        self.check_channels(data.shape[-1])
        store = cache_lib.ArrayCache(
            self.cache_dir if self.cache_dir is not None else cache_lib.default_cache_dir()
        )
        key = cache_lib.array_key(data, spacing, self.describe())
        return store.get_or_compute(key, lambda: self._compute(data, spacing, case))
