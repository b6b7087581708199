"""Inference: a model's predict function, and sliding windows over whole images.

`make_predict_fn(model)` is what evaluate, predict, export and the benchmarks run:
`softmax(model.apply(params, x))`; `window_predictor` jits it once per model.
`predict_case` is the production path from an image as read to its class map on the same
grid: preprocessing (`jaxseg.data.preprocess.Preprocessing`: crop, normalise, resample),
sliding windows (host loop, device predictions, optional TTA (mirroring, 90° rotations)
inside the jitted function), resampling back, then the memory-bounded `argmax_labels`. Several folds'
predictors average into one with `ensemble_predictor`. A multimodal model gets the
modalities present (`presence`, absent ones masked out) through `make_predict_fn`; a model
with a classification head gives per-window class probabilities (`class_window_predictor`),
pooled per case by `case_class_probabilities`.

`sliding_window_predict` behaves like MONAI's `sliding_window_inference`:

- Window starts along each axis: with patch `p`, (padded) size `n` and
  `interval = p if p == n else max(int(p * (1 - overlap)), 1)`, the starts are
  `min(i * interval, n - p)` for `i = 0 .. ceil((n - p) / interval)`; the first window
  starts at 0 and the last one is flush with the end, so every voxel is covered.
- An image smaller than the patch along an axis is padded with `preprocess.PAD_VALUE`
  (0, what training patches are padded with) on both sides
  (`diff // 2` before, the rest after) and the result is cropped back.
- Each window's probabilities are weighted by an importance map and accumulated;
  the result is the accumulator divided by the summed weights. `mode="gaussian"`: a
  separable Gaussian centred on the patch, `sigma = gaussian_sigma_scale * patch_size` per
  axis, clipped below at 1e-3 (as MONAI's `compute_importance_map`, on the unnormalised
  product, so no voxel has zero weight) and then scaled to a peak of 1, which leaves the
  blend unchanged; `mode="constant"`: all ones (plain averaging).
- Windows go to `predict_fn` `batch_size` at a time; the last batch is padded with zero
  windows to a full batch (their outputs are discarded), so a jitted `predict_fn` sees one
  shape and compiles once.

Memory (float32, host). With V voxels in the (padded) image, C channels, K classes, P voxels
per patch and batch size b, the peak is

    bytes ~= 4 * V * (K + 1 + C)  +  4 * b * P * (C + K)  +  4 * P * (K + 1)

— one probability accumulator `[*S, K]`, one weight map `[*S]`, the input image (a float32
input is used as is; a padded copy is made only when the image is smaller than the patch),
one batch of windows in and out, and the importance map plus one weighted-window
temporary. The normalisation is done in place; no second `[*S, K]` array is made.
Example: a 512x512x300 CT (V = 78.6 M), C = 1, K = 14, 96^3 patches (P = 0.885 M), b = 4:
4 * 78.6e6 * 16 = 5.03 GB plus 4 * 4 * 0.885e6 * 15 = 0.21 GB, about 5.3 GB
(see docs/evaluation.md).
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import itertools
import math
from collections.abc import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxseg.data import preprocess
from jaxseg.data.preprocess import Preprocessing
from jaxseg.errors import ConfigError, JaxsegError

__all__ = [
    "gaussian_importance_map",
    "window_starts",
    "window_slices",
    "sliding_window_predict",
    "argmax_labels",
    "predict_case",
    "case_probabilities",
    "uncrop_probabilities",
    "mirror_combinations",
    "make_predict_fn",
    "make_patch_and_class_fn",
    "accepts_presence",
    "window_predictor",
    "class_window_predictor",
    "case_class_probabilities",
    "window_logits",
    "TTA",
    "as_tta",
    "tta_from_config",
    "ensemble_predictor",
    "window_options",
]

MIN_WEIGHT = 1e-3
_ARGMAX_SLAB_VOXELS = 1 << 22  # voxels per argmax slab in argmax_labels


def gaussian_importance_map(
    patch_size: Sequence[int], sigma_scale: float = 0.125, min_weight: float = MIN_WEIGHT
) -> np.ndarray:
    """Separable Gaussian weights `[*patch_size]` float32, peak 1.

    Centred at `(p - 1) / 2` per axis with `sigma = sigma_scale * p`. The unnormalised
    product is clipped below at `min_weight` before it is scaled to a peak of 1, as MONAI
    clips it: for an even patch the product's peak is below 1, and clipping after the
    scaling would weight window borders differently from MONAI's blend.
    """
    grids = []
    for p in patch_size:
        x = np.arange(p, dtype=np.float64) - (p - 1) / 2.0
        sigma = sigma_scale * p
        grids.append(np.exp(-(x**2) / (2.0 * sigma**2)))
    g = grids[0]
    for axis_g in grids[1:]:
        g = np.multiply.outer(g, axis_g)
    g = np.maximum(g, min_weight)
    return (g / g.max()).astype(np.float32)


def window_starts(size: int, patch: int, overlap: float) -> list[int]:
    """Start offsets of the windows along one axis (`size >= patch`), MONAI style."""
    if size < patch:
        raise ValueError(f"window_starts: size {size} < patch {patch}; pad first.")
    interval = patch if patch == size else max(int(patch * (1.0 - overlap)), 1)
    count = math.ceil((size - patch) / interval) + 1
    return sorted({min(i * interval, size - patch) for i in range(count)})


def window_slices(
    shape: Sequence[int], patch_size: Sequence[int], overlap: float
) -> list[tuple[slice, ...]]:
    """All windows (tuples of slices) over a spatial `shape` that is >= `patch_size`."""
    per_axis = [window_starts(n, p, overlap) for n, p in zip(shape, patch_size)]
    return [
        tuple(slice(s, s + p) for s, p in zip(starts, patch_size))
        for starts in itertools.product(*per_axis)
    ]


def _validate(image, patch_size, num_classes, overlap, batch_size, sigma_scale, mode):
    patch_size = tuple(int(p) for p in patch_size)
    if len(patch_size) not in (2, 3) or any(p < 1 for p in patch_size):
        raise ConfigError(
            f"sliding_window_predict: patch_size {patch_size} must be 2 or 3 positive ints."
        )
    if image.ndim != len(patch_size) + 1:
        raise JaxsegError(
            f"sliding_window_predict: image shape {image.shape} must be [*spatial, C] with "
            f"{len(patch_size)} spatial axes to match patch_size {patch_size}."
        )
    if not 0.0 <= overlap < 1.0:
        raise ConfigError(f"sliding_window_predict: overlap={overlap} must be in [0, 1).")
    if int(batch_size) < 1:
        raise ConfigError(f"sliding_window_predict: batch_size={batch_size} must be >= 1.")
    if int(num_classes) < 1:
        raise ConfigError(f"sliding_window_predict: num_classes={num_classes} must be >= 1.")
    if mode not in ("gaussian", "constant"):
        raise ConfigError(f"sliding_window_predict: mode={mode!r}; use 'gaussian' or 'constant'.")
    if mode == "gaussian" and not sigma_scale > 0:
        raise ConfigError(
            f"sliding_window_predict: gaussian_sigma_scale={sigma_scale} must be > 0."
        )
    return patch_size


def sliding_window_predict(
    image: np.ndarray,
    predict_fn: Callable[[np.ndarray], np.ndarray],
    *,
    patch_size: Sequence[int],
    num_classes: int,
    overlap: float = 0.5,
    batch_size: int = 4,
    gaussian_sigma_scale: float = 0.125,
    mode: str = "gaussian",
) -> np.ndarray:
    """Class probabilities for a whole image by blending overlapping patch predictions.

    Args:
      image: `[X, Y, (Z), C]` float32 (other dtypes are converted; a float32 array is not
        copied unless padding is needed).
      predict_fn: `batch [b, *patch_size, C] f32 -> probs [b, *patch_size, K]` (numpy or jax
        array; typically a jitted closure over the parameters). Always called with exactly
        `b = batch_size`.
      patch_size: spatial window size, 2 or 3 ints.
      num_classes: K.
      overlap: fraction of a window shared with its neighbour, in [0, 1).
      batch_size: windows per `predict_fn` call.
      gaussian_sigma_scale: Gaussian sigma as a fraction of the patch size.
      mode: "gaussian" (default) or "constant" blending.

    Returns:
      `[X, Y, (Z), K]` float32 probabilities (the weighted mean of the window outputs).

    Peak host memory is about `4*V*(K + 1 + C) + 4*b*P*(C + K)` bytes (V image voxels, P patch
    voxels); see the module docstring.
    """
    image = np.asarray(image, dtype=np.float32)
    patch_size = _validate(
        image, patch_size, num_classes, overlap, batch_size, gaussian_sigma_scale, mode
    )
    batch_size, num_classes = int(batch_size), int(num_classes)
    spatial = image.shape[:-1]
    image, pads = _pad_to_patch(image, patch_size)
    padded = image.shape[:-1]

    if mode == "gaussian":
        importance = gaussian_importance_map(patch_size, gaussian_sigma_scale)
    else:
        importance = np.ones(patch_size, np.float32)
    importance_k = importance[..., None]

    probs = np.zeros((*padded, num_classes), np.float32)
    weights = np.zeros(padded, np.float32)
    windows = window_slices(padded, patch_size, overlap)
    expected = (batch_size, *patch_size, num_classes)

    for group, batch in _window_batches(image, windows, patch_size, batch_size):
        out = np.asarray(predict_fn(batch), dtype=np.float32)
        if out.shape != expected:
            raise JaxsegError(
                f"sliding_window_predict: predict_fn returned shape {out.shape} for a batch "
                f"{batch.shape}; expected {expected} (probabilities, channels-last)."
            )
        for i, sl in enumerate(group):
            probs[sl] += out[i] * importance_k
            weights[sl] += importance
        del out  # free this batch's outputs before the next call allocates its own

    # Every voxel is covered by at least one window and weights are >= MIN_WEIGHT > 0.
    probs /= weights[..., None]
    crop = tuple(slice(before, before + n) for (before, _), n in zip(pads, spatial))
    return probs[crop]


def _pad_to_patch(image: np.ndarray, patch_size) -> tuple[np.ndarray, list[tuple[int, int]]]:
    """Pads axes shorter than the patch with the value training patches are padded with
    (`preprocess.PAD_VALUE`), split before/after as MONAI does -> (image, pads per axis)."""
    pads = []
    for n, p in zip(image.shape[:-1], patch_size):
        diff = max(p - n, 0)
        pads.append((diff // 2, diff - diff // 2))
    if any(before or after for before, after in pads):
        image = np.pad(image, pads + [(0, 0)], constant_values=preprocess.PAD_VALUE)
    return image, pads


def _window_batches(image, windows, patch_size, batch_size):
    """Yields `(windows of the batch, batch [batch_size, *patch, C])`; the batch is one
    buffer, refilled: the last one is padded with zero windows (outputs to discard)."""
    batch = np.zeros((batch_size, *patch_size, image.shape[-1]), np.float32)
    for first in range(0, len(windows), batch_size):
        group = windows[first : first + batch_size]
        for i, sl in enumerate(group):
            batch[i] = image[sl]
        batch[len(group) :] = 0.0
        yield group, batch


def argmax_labels(probs: np.ndarray) -> np.ndarray:
    """The class map `[*S]` of probabilities `[*S, K]`: uint8 (uint16 when K > 256).

    Ties go to the lower class index. The argmax runs slab by slab along the first axis:
    `np.argmax` makes int64, which over a whole CT would be a transient 8 bytes per voxel
    on top of the probabilities; slabs bound it to `_ARGMAX_SLAB_VOXELS` voxels.
    """
    num_classes = probs.shape[-1]
    labels = np.empty(probs.shape[:-1], np.uint8 if num_classes <= 256 else np.uint16)
    step = max(1, _ARGMAX_SLAB_VOXELS // max(1, int(np.prod(probs.shape[1:-1]))))
    for start in range(0, probs.shape[0], step):
        labels[start : start + step] = np.argmax(probs[start : start + step], axis=-1)
    return labels


# --------------------------------------------------------------------------- a model's predictor


def mirror_combinations(axes: Sequence[int]) -> list[tuple[int, ...]]:
    """Every subset of the spatial `axes` (0-based), the empty one (no flip) first."""
    axes = tuple(int(a) for a in axes)
    return [c for n in range(len(axes) + 1) for c in itertools.combinations(axes, n)]


@dataclasses.dataclass(frozen=True)
class TTA:
    """Test-time augmentation: the transforms each window is predicted under, then averaged.

    mirror_axes: spatial axes (0-based) to mirror; all `2**len(mirror_axes)` flip
      combinations are used (nnU-Net's default TTA).
    rot90_plane: two spatial axes `(a, b)` for 90° rotations in that plane, or None. Every
      flip combination is also run rotated by a quarter turn; when both plane axes are
      mirrored that completes the plane's 8 symmetries (flips × {0°, 90°}: the dihedral
      group), otherwise the quarter turns 90°, 180°, 270° are added. The window must be
      square in the plane, since a quarter turn swaps its sides.
    """

    mirror_axes: tuple[int, ...] = ()
    rot90_plane: tuple[int, int] | None = None

    def transforms(self) -> list[tuple[tuple[int, ...], int]]:
        """`(flip axes, quarter turns)` per pass; the identity `((), 0)` first."""
        flips = mirror_combinations(self.mirror_axes)
        if self.rot90_plane is None:
            return [(f, 0) for f in flips]
        turns = (0, 1) if set(self.rot90_plane) <= set(self.mirror_axes) else (0, 1, 2, 3)
        return [(f, k) for k in turns for f in flips]

    def check_window(self, patch_size: Sequence[int]) -> None:
        """ConfigError unless the window is square in the rotation plane."""
        if self.rot90_plane is not None:
            a, b = self.rot90_plane
            if patch_size[a] != patch_size[b]:
                raise ConfigError(
                    f"eval.tta_rot90: 90° rotations in the plane of axes {a},{b} need a window "
                    f"square in that plane; data.patch_size is {tuple(patch_size)}. Set "
                    "eval.tta_rot90=False or a square in-plane patch."
                )

    def describe(self) -> dict:
        """What a report records of it."""
        plane = None if self.rot90_plane is None else list(self.rot90_plane)
        return {"tta_mirror_axes": list(self.mirror_axes), "tta_rot90_plane": plane}


def as_tta(tta: TTA | Sequence[int]) -> TTA:
    """A `TTA`; a plain sequence of axes means mirroring only."""
    if isinstance(tta, TTA):
        return tta
    return TTA(mirror_axes=tuple(int(a) for a in tta))


def _tta_outputs(apply: Callable, tta: TTA, params, x) -> list:
    """`apply(params, x')` for x [b, *S, C] under each of the TTA's transforms, each output
    transformed back onto x's grid."""
    out = []
    for flip, turns in tta.transforms():
        flip = tuple(a + 1 for a in flip)  # past the batch axis
        plane = tuple(a + 1 for a in tta.rot90_plane) if turns else None
        z = jnp.flip(x, flip) if flip else x
        z = apply(params, jnp.rot90(z, turns, plane) if plane else z)
        z = jnp.rot90(z, -turns, plane) if plane else z
        out.append(jnp.flip(z, flip) if flip else z)
    return out


def accepts_presence(model: nn.Module) -> bool:
    """Whether `model.apply` takes a `presence` vector (multimodal models: lightseg_fusion)."""
    return "presence" in inspect.signature(type(model).__call__).parameters


def _presence_kwargs(model: nn.Module, presence) -> dict:
    """`{"presence": p}` for `model.apply` (or {} for None), p a bool `[1, M]` tuple row;
    ConfigError naming the model when it takes none."""
    if presence is None:
        return {}
    if not accepts_presence(model):
        name = getattr(model, "model_name", type(model).__name__)
        raise ConfigError(
            f"model {name!r} takes no presence vector (missing modalities); only multimodal "
            "models such as lightseg_fusion do. Give every channel instead of --modalities."
        )
    return {"presence": np.asarray(presence, bool).reshape(1, -1)}


def _apply_with_presence(model: nn.Module, params, x, presence: dict, **kw):
    """`model.apply` with the `[1, M]` presence broadcast over the batch of x."""
    if presence:
        p = jnp.broadcast_to(presence["presence"], (x.shape[0], presence["presence"].shape[1]))
        kw["presence"] = p
    return model.apply({"params": params}, x, train=False, **kw)


def make_predict_fn(
    model: nn.Module,
    tta: TTA | Sequence[int] = (),
    temperature: float = 1.0,
    presence: Sequence[bool] | None = None,
) -> Callable:
    """Returns `predict(params, image [b, *patch, C]) -> probabilities [b, *patch, K] f32`.

    tta: a `TTA`, or spatial axes (0-based over `patch`) to mirror: the probabilities are
    the mean over the TTA's transforms of the input, each output transformed back. `()`:
    no TTA.
    temperature: the softmax temperature (`jaxseg.calibration`); 1 is the model as trained.
    presence: M bools (or `[1, M]`), the modalities present in every window, passed as
    `presence=` to `model.apply` (absent ones are masked out); None: not passed. Only a
    model that takes it (`accepts_presence`) may get one, else ConfigError.
    """
    inverse_temperature = 1.0 / float(temperature)
    present = _presence_kwargs(model, presence)

    def probabilities(params, x):
        logits = _apply_with_presence(model, params, x, present).astype(jnp.float32)
        if inverse_temperature != 1.0:
            logits = logits * inverse_temperature
        return jax.nn.softmax(logits, axis=-1)

    tta = as_tta(tta)

    def predict(params, image):
        # A running sum, not a stack: F outputs of [b, *patch, K] would multiply the peak.
        outputs = _tta_outputs(probabilities, tta, params, image)
        return functools.reduce(jnp.add, outputs) / len(outputs)

    return predict


def make_patch_and_class_fn(model: nn.Module, temperature: float = 1.0) -> Callable:
    """For a model with a classification head: `f(params, image [b, *patch, C]) ->
    (probabilities [b, *patch, K], class probabilities [b, num_case_classes])` f32, one
    forward pass, no TTA (the export's patch signature); the temperature scales the
    segmentation logits only (it was fitted on them)."""
    inverse_temperature = 1.0 / float(temperature)

    def predict(params, x):
        logits, classes = model.apply({"params": params}, x, train=False, with_class_logits=True)
        logits = logits.astype(jnp.float32)
        if inverse_temperature != 1.0:
            logits = logits * inverse_temperature
        return jax.nn.softmax(logits, -1), jax.nn.softmax(classes.astype(jnp.float32), -1)

    return predict


@functools.lru_cache(maxsize=8)
def _jitted_predict(model: nn.Module, tta: TTA, temperature: float, presence) -> Callable:
    return jax.jit(make_predict_fn(model, tta, temperature, presence))


def _presence_key(presence) -> tuple[bool, ...] | None:
    return None if presence is None else tuple(bool(v) for v in np.ravel(presence))


def window_predictor(
    model: nn.Module,
    params,
    tta: TTA | Sequence[int] = (),
    temperature: float = 1.0,
    presence: Sequence[bool] | None = None,
) -> Callable[[np.ndarray], np.ndarray]:
    """`f(windows [b, *patch, C]) -> probabilities [b, *patch, K]`; compiled once per model,
    TTA, temperature, presence (`make_predict_fn`) and window-batch shape, so new params
    (validation during training) reuse it."""
    predict = _jitted_predict(model, as_tta(tta), float(temperature), _presence_key(presence))
    return lambda windows: np.asarray(predict(params, windows))


def class_window_predictor(
    model: nn.Module, params, presence: Sequence[bool] | None = None
) -> Callable[[np.ndarray], np.ndarray]:
    """`f(windows [b, *patch, C]) -> class probabilities [b, num_case_classes]`: the softmax
    of a classification head (`model.apply(..., with_class_logits=True)`), no TTA."""
    present = _presence_kwargs(model, presence)

    def classify(p, x):
        _, logits = _apply_with_presence(model, p, x, present, with_class_logits=True)
        return jax.nn.softmax(logits.astype(jnp.float32), axis=-1)

    jitted = jax.jit(classify)
    return lambda windows: np.asarray(jitted(params, windows))


# How a case's class probability is pooled from its windows' (`case_class_probabilities`).
CLASS_POOLING = ("mean", "max")


def case_class_probabilities(
    image: np.ndarray,
    spacing: Sequence[float],
    class_predictor: Callable[[np.ndarray], np.ndarray],
    *,
    window: dict,
    preprocessing: Preprocessing,
    pooling: str,
    case: str | None = None,
) -> np.ndarray:
    """A case as read -> its class probabilities `[C]` float64, pooled over the sliding
    windows of the preprocessed case (the windows `sliding_window_predict` uses).

    pooling: "mean", the mean of the windows' softmax (a per-case target: every window
    shows the same case); "max", for 2 classes, P(class 1) = the largest window's (a target
    "the patch holds class K" is 1 for the case when any window holds it), P(class 0) =
    1 - that.
    """
    if pooling not in CLASS_POOLING:
        raise ConfigError(f"case_class_probabilities: pooling {pooling!r} not in {CLASS_POOLING}")
    x, _ = preprocessing.image(image, spacing, case=case)
    patch = tuple(int(p) for p in window["patch_size"])
    x, _ = _pad_to_patch(np.asarray(x, np.float32), patch)
    windows = window_slices(x.shape[:-1], patch, window["overlap"])
    out = [
        np.asarray(class_predictor(batch), np.float64)[: len(group)]
        for group, batch in _window_batches(x, windows, patch, int(window["batch_size"]))
    ]
    probs = np.concatenate(out)
    if pooling == "mean":
        return probs.mean(axis=0)
    if probs.shape[1] != 2:
        raise ConfigError(
            f"case_class_probabilities: max pooling needs 2 classes, got {probs.shape[1]}"
        )
    top = probs[:, 1].max()
    return np.array([1.0 - top, top])


def window_logits(
    model: nn.Module, params, tta: TTA | Sequence[int] = ()
) -> Callable[[np.ndarray], np.ndarray]:
    """`f(windows [b, *patch, C]) -> logits [F, b, *patch, K]` f32: the raw model output of
    each of the TTA's F passes, transformed back (F = 1 without TTA), which
    `jaxseg.calibration` fits a temperature on."""
    apply = lambda p, x: model.apply({"params": p}, x, train=False).astype(jnp.float32)
    tta = as_tta(tta)
    jitted = jax.jit(lambda p, x: jnp.stack(_tta_outputs(apply, tta, p, x)))
    return lambda windows: np.asarray(jitted(params, windows))


def tta_from_config(config, dims: int, enabled: bool = True, rot90: bool | None = None) -> TTA:
    """The TTA the config asks for: `eval.tta` mirrors every spatial axis (the default, as
    nnU-Net); `eval.tta_rot90` (or `rot90`, when not None) adds 90° rotations in the plane
    of the first two spatial axes (axial for canonical RAS volumes). `enabled=False`
    (--no-tta): none."""
    if not enabled:
        return TTA()
    mirror = tuple(range(dims)) if config.eval.get("tta", False) else ()
    rot90 = config.eval.get("tta_rot90", False) if rot90 is None else rot90
    tta = TTA(mirror, (0, 1) if rot90 else None)
    tta.check_window(config.data.patch_size)
    return tta


def ensemble_predictor(predictors: Sequence[Callable]) -> Callable[[np.ndarray], np.ndarray]:
    """The mean of several window predictors' probabilities (a fold ensemble: the folds
    share the plan, so their windows and classes agree)."""
    predictors = list(predictors)
    if not predictors:
        raise ConfigError("ensemble_predictor: no predictors given")
    if len(predictors) == 1:
        return predictors[0]

    def predict(windows):
        total = np.asarray(predictors[0](windows), np.float32).copy()
        for p in predictors[1:]:
            total += np.asarray(p(windows), np.float32)
        return total / len(predictors)

    return predict


def predict_case(
    image: np.ndarray,
    spacing: Sequence[float],
    predictor: Callable[[np.ndarray], np.ndarray],
    *,
    window: dict,
    preprocessing: Preprocessing,
    case: str | None = None,
) -> np.ndarray:
    """A case as read (`image [*S, C]` at `spacing`) -> its class map `[*S]` (uint8).

    The production path of evaluate, predict and validation: `preprocessing` takes the
    image to the model's grid (crop, normalise, resample), sliding windows predict there,
    the probabilities go back to the file's spacing and the argmax back into the full
    file grid (background outside a nonzero crop).
    """
    probs, grid = case_probabilities(
        image, spacing, predictor, window=window, preprocessing=preprocessing, case=case
    )
    return grid.uncrop(argmax_labels(probs))


def case_probabilities(
    image: np.ndarray,
    spacing: Sequence[float],
    predictor: Callable[[np.ndarray], np.ndarray],
    *,
    window: dict,
    preprocessing: Preprocessing,
    case: str | None = None,
) -> tuple[np.ndarray, preprocess.CaseGrid]:
    """`predict_case` before the argmax: (class probabilities `[*cropped, K]` float32 at
    the file's spacing, the case's `CaseGrid`). `uncrop_probabilities` places them in the
    full file grid."""
    x, grid = preprocessing.image(image, spacing, case=case)  # case: for errors
    probs = sliding_window_predict(x, predictor, **window)
    del x
    return preprocessing.to_file_grid(probs, grid), grid


def uncrop_probabilities(probs: np.ndarray, grid: preprocess.CaseGrid) -> np.ndarray:
    """`[*cropped, K]` -> `[*grid.shape, K]`: background (class 0) has probability 1
    outside the crop box, as `predict_case`'s labels are background there."""
    if tuple(probs.shape[:-1]) == tuple(grid.shape):
        return probs
    out = np.zeros((*grid.shape, probs.shape[-1]), probs.dtype)
    out[..., 0] = 1.0
    out[grid.box] = probs
    return out


def window_options(config, num_classes: int) -> dict:
    """`sliding_window_predict`'s settings for a run: its patch, and `config.eval`'s
    overlap, window batch and Gaussian sigma."""
    return dict(
        patch_size=tuple(config.data.patch_size),
        num_classes=int(num_classes),
        overlap=config.eval.overlap,
        batch_size=config.eval.batch_size,
        gaussian_sigma_scale=config.eval.gaussian_sigma_scale,
    )
