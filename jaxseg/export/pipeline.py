"""The whole inference pipeline as one JAX function, for the SavedModel's `segment`
signature: a raw image in the scanner's units in, labels on the same grid out.

    segment(params, image [*S, C] f32) -> {"labels": [*S] (label-file values),
                                          "probabilities": [*S, K] f32}

It is the production path of `jaxseg.inference.predict_case` written with shape-polymorphic
JAX, so `jax2tf` exports it once with symbolic spatial sizes:

1. the run's normalisation per channel, from the same scheme descriptions
   `Preprocessing.describe()` writes into the export metadata (`normalize_schemes`);
2. padding to at least the patch with `preprocess.PAD_VALUE`, split as MONAI does;
3. sliding windows with `inference.sliding_window_predict`'s grid (starts
   `min(i * interval, n - p)`) and Gaussian weights (`inference.gaussian_importance_map`),
   one window per iteration of a loop whose trip count is computed from the symbolic
   shape; each window through `inference.make_predict_fn` (mirroring TTA and the
   temperature inside);
4. the weighted mean, the crop back, the argmax and the class -> label-value table.

What cannot be in a graph with symbolic shapes is refused at export (`check_exportable`):
resampling to a target spacing (the output grid would depend on the spacing's value; the
TensorFlow wrapper instead checks that the given spacing is the run's), the nonzero crop,
and the host-side denoising and CLAHE steps.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxseg import inference
from jaxseg.data.preprocess import PAD_VALUE
from jaxseg.errors import ConfigError

_EPS = 1e-8


def _dim_value(d) -> jax.Array:
    """A (possibly symbolic) dimension as an int32 scalar usable in computations."""
    return jnp.asarray(d, jnp.int32)


def _zscore(x: jax.Array, mask: jax.Array) -> jax.Array:
    """(x - mean) / max(std, eps) over the voxels in `mask` (float64 would not export to
    every platform, so the statistics are float32 sums over centred values)."""
    n = jnp.maximum(jnp.sum(mask), 1).astype(jnp.float32)
    mean = jnp.sum(jnp.where(mask, x, 0.0)) / n
    var = jnp.sum(jnp.where(mask, (x - mean) ** 2, 0.0)) / n
    return jnp.where(mask, (x - mean) / jnp.maximum(jnp.sqrt(var), _EPS), 0.0)


def _stats_mask(x: jax.Array) -> jax.Array:
    """The voxels per-image statistics use: the nonzero ones when more than half of the
    channel is 0 (skull-stripped, zero-padded), else all (`data.normalize`'s rule)."""
    mostly_zero = jnp.sum(x == 0) > 0.5 * x.size
    return jnp.where(mostly_zero, x != 0, jnp.ones(x.shape, bool))


def normalize_channel(x: jax.Array, scheme: dict) -> jax.Array:
    """One channel `[*S]` by one of `Preprocessing.describe()`'s scheme dicts."""
    name = scheme["scheme"]
    first, _, then = name.partition("+")
    if first == "percentile_clip":
        mask = _stats_mask(x)
        lo, hi = jnp.nanpercentile(jnp.where(mask, x, jnp.nan), jnp.asarray(scheme["percentiles"]))
        x = jnp.where(mask, jnp.clip(x, lo, hi), x)
        name = then
    if name == "zscore":
        return _zscore(x, _stats_mask(x))
    if name in ("minmax01", "minmax11"):
        y = (x - x.min()) / jnp.maximum(x.max() - x.min(), _EPS)
        return 2.0 * y - 1.0 if name == "minmax11" else y
    if name == "ct_window":
        lo, hi = (float(v) for v in scheme["window"])
        return (jnp.clip(x, lo, hi) - (lo + hi) / 2) / ((hi - lo) / 2)
    if name == "ct_dataset_zscore":
        lo, hi = (float(v) for v in scheme["clip"])
        return (jnp.clip(x, lo, hi) - float(scheme["mean"])) / max(float(scheme["std"]), _EPS)
    if name == "none":
        return x
    if name == "rgb_to_0_1":
        return x / 255.0
    raise ConfigError(
        f"export --pipeline: the normalisation scheme {scheme['scheme']!r} of channel "
        f"{scheme.get('channel')} has no in-graph form; export the patch signature only"
    )


def normalize_schemes(image: jax.Array, schemes: Sequence[dict]) -> jax.Array:
    """`image [*S, C]` normalised channel by channel (`schemes[c]` for channel c)."""
    return jnp.stack(
        [normalize_channel(image[..., c], s) for c, s in enumerate(schemes)], axis=-1
    ).astype(jnp.float32)


def sliding_windows(
    image: jax.Array,
    predict: Callable[[jax.Array], jax.Array],
    *,
    patch_size: Sequence[int],
    num_classes: int,
    overlap: float = 0.5,
    gaussian_sigma_scale: float = 0.125,
) -> jax.Array:
    """`inference.sliding_window_predict` for a traced `image [*S, C]` with symbolic `S`:
    `predict(windows [1, *patch, C]) -> probabilities [1, *patch, K]`; returns `[*S, K]`."""
    patch = tuple(int(p) for p in patch_size)
    spatial = image.shape[:-1]
    padded = [jax.core.max_dim(n, p) for n, p in zip(spatial, patch)]
    before = [(m - n) // 2 for n, m in zip(spatial, padded)]
    pads = [(b, m - n - b, 0) for n, m, b in zip(spatial, padded, before)]
    x = jax.lax.pad(image, jnp.asarray(PAD_VALUE, image.dtype), [*pads, (0, 0, 0)])
    # The grid of sliding_window_predict: interval = max(int(p * (1 - overlap)), 1); when
    # n == p the one window starts at 0, whatever the interval.
    intervals = [max(int(p * (1.0 - overlap)), 1) for p in patch]
    last = [_dim_value(m - p) for m, p in zip(padded, patch)]
    counts = [(e + i - 1) // i + 1 for e, i in zip(last, intervals)]
    importance = jnp.asarray(inference.gaussian_importance_map(patch, gaussian_sigma_scale))
    channels = image.shape[-1]

    def body(index, carry):
        probs, weights = carry
        starts, rest = [], index
        for axis in reversed(range(len(patch))):
            i = rest % counts[axis]
            rest = rest // counts[axis]
            starts.insert(0, jnp.minimum(i * intervals[axis], last[axis]))
        window = jax.lax.dynamic_slice(x, (*starts, 0), (*patch, channels))
        out = predict(window[None])[0].astype(jnp.float32) * importance[..., None]
        old = jax.lax.dynamic_slice(probs, (*starts, 0), (*patch, num_classes))
        probs = jax.lax.dynamic_update_slice(probs, old + out, (*starts, 0))
        w = jax.lax.dynamic_slice(weights, tuple(starts), patch)
        weights = jax.lax.dynamic_update_slice(weights, w + importance, tuple(starts))
        return probs, weights

    total = math.prod(counts)
    probs = jnp.zeros((*padded, num_classes), jnp.float32)
    weights = jnp.zeros(tuple(padded), jnp.float32)
    probs, weights = jax.lax.fori_loop(0, total, body, (probs, weights))
    probs = probs / weights[..., None]
    crop = tuple(slice(b, b + n) for b, n in zip(before, spatial))
    return probs[crop]


def check_exportable(description: dict) -> None:
    """ConfigError naming what a run's preprocessing (`Preprocessing.describe()`) does
    that the in-graph pipeline cannot."""
    if description.get("crop_nonzero"):
        raise ConfigError(
            "export --pipeline: the run crops to the nonzero region (data.crop_nonzero); a "
            "data-dependent crop has no static-shape form. Export the patch signature only."
        )
    for key in ("denoise", "clahe"):
        if description.get(key):
            raise ConfigError(
                f"export --pipeline: the run's preprocessing uses {key} (data.{key}), a "
                "host-side scikit-image step with no in-graph form. Export the patch "
                "signature only."
            )
    for scheme in description["normalization"]:
        normalize_channel(jnp.zeros((2, 2), jnp.float32), scheme)  # raises if unknown


def segment_function(
    model,
    *,
    description: dict,
    patch_size: Sequence[int],
    num_classes: int,
    label_values: Sequence[int],
    overlap: float,
    gaussian_sigma_scale: float,
    tta: inference.TTA | Sequence[int] = (),
    temperature: float = 1.0,
) -> Callable:
    """`segment(params, image [*S, C]) -> {"labels": [*S], "probabilities": [*S, K]}`
    (see the module docstring); `description` is `Preprocessing.describe()`."""
    check_exportable(description)
    predict = inference.make_predict_fn(model, tta, temperature)
    schemes = description["normalization"]
    values = np.asarray(list(label_values) or range(num_classes))
    dtype = np.uint8 if values.max(initial=0) <= 255 else np.uint16
    table = jnp.asarray(values.astype(dtype))

    def segment(params, image):
        x = normalize_schemes(image.astype(jnp.float32), schemes)
        probs = sliding_windows(
            x,
            lambda w: predict(params, w),
            patch_size=patch_size,
            num_classes=num_classes,
            overlap=overlap,
            gaussian_sigma_scale=gaussian_sigma_scale,
        )
        labels = table[jnp.argmax(probs, axis=-1)]
        return {"labels": labels, "probabilities": probs}

    return segment
