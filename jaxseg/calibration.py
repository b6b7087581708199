"""Calibrated probabilities: reliability statistics, expected calibration error (ECE) and
a softmax temperature fitted on the validation split (Guo et al. 2017, "On Calibration of
Modern Neural Networks").

- `Reliability` accumulates, per confidence bin, the voxel count, the summed confidence
  (the top-class probability) and the number of correct voxels, case by case, so a split's
  ECE never holds more than one case's probabilities. `ece = sum_b n_b / N * |acc_b - conf_b|`
  over `num_bins` equal-width bins of [0, 1] (the top-label ECE of Guo et al.).
- `fit_temperature(logits, labels)` minimises the mean negative log-likelihood of
  `softmax(logits / T)` over `T`. The NLL is convex in `beta = 1 / T` (log-sum-exp of a
  linear function minus a linear term), so a safeguarded Newton iteration on `beta` finds
  the global minimum; it runs in float64 numpy on the host.
- `sample_window_logits` draws the voxels it is fitted on: the model's raw logits on the
  sliding-window grid inference uses, sampled within each window in proportion to the
  Gaussian importance map (the weight a window's voxel gets in the blended prediction).
  The temperature divides the logits of every window before the softmax (and of every
  mirrored pass with TTA), so the blended probabilities inference writes are the
  calibrated ones.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Sequence

import numpy as np
from scipy import optimize, special

from jaxseg import inference
from jaxseg.data.preprocess import PAD_VALUE, Preprocessing
from jaxseg.errors import ConfigError, JaxsegError

NUM_BINS = 15  # Guo et al.'s choice; the reliability diagram's bars
TEMPERATURE_RANGE = (1e-2, 1e2)
_CHUNK = 1 << 18  # voxels per float64 chunk in the NLL and its derivatives


@dataclasses.dataclass
class Reliability:
    """Per-bin voxel counts, confidence sums and correct counts over `num_bins` bins."""

    counts: np.ndarray
    confidence_sum: np.ndarray
    correct: np.ndarray

    @classmethod
    def empty(cls, num_bins: int = NUM_BINS) -> Reliability:
        if int(num_bins) < 1:
            raise ConfigError(f"calibration: num_bins={num_bins} must be >= 1")
        zeros = lambda dtype: np.zeros(int(num_bins), dtype)
        return cls(zeros(np.int64), zeros(np.float64), zeros(np.int64))

    @property
    def num_bins(self) -> int:
        return len(self.counts)

    def add(
        self, probs: np.ndarray, labels: np.ndarray, mask: np.ndarray | None = None
    ) -> Reliability:
        """Adds the voxels of `probs [*S, K]` against the true classes `labels [*S]`
        (only where the bool `mask [*S]` is true, when given)."""
        probs = np.asarray(probs)
        labels = np.asarray(labels)
        if probs.shape[:-1] != labels.shape or (mask is not None and mask.shape != labels.shape):
            raise JaxsegError(
                f"calibration: probabilities {probs.shape}, labels {labels.shape} and mask "
                f"{None if mask is None else mask.shape} differ in their spatial shape"
            )
        flat = probs.reshape(-1, probs.shape[-1])
        truth = labels.reshape(-1)
        if mask is not None:
            keep = np.asarray(mask, bool).reshape(-1)
            flat, truth = flat[keep], truth[keep]
        for start in range(0, len(flat), _CHUNK):
            p = flat[start : start + _CHUNK]
            top = np.argmax(p, axis=-1)
            conf = p[np.arange(len(p)), top].astype(np.float64)
            # Bin b holds confidences in (b/B, (b+1)/B]; a confidence of 0 joins bin 0.
            b = np.clip(np.ceil(conf * self.num_bins).astype(np.int64) - 1, 0, self.num_bins - 1)
            self.counts += np.bincount(b, minlength=self.num_bins)
            self.confidence_sum += np.bincount(b, weights=conf, minlength=self.num_bins)
            hit = top == truth[start : start + _CHUNK]
            self.correct += np.bincount(b, weights=hit, minlength=self.num_bins).astype(np.int64)
        return self

    def ece(self) -> float:
        """Expected calibration error; NaN when no voxel was added."""
        total = self.counts.sum()
        if total == 0:
            return float("nan")
        used = self.counts > 0
        gap = np.abs(self.correct[used] - self.confidence_sum[used])  # n_b * |acc_b - conf_b|
        return float(gap.sum() / total)

    def diagram(self) -> dict:
        """JSON-ready reliability-diagram data: bin edges, counts, accuracy and confidence
        per bin (None for empty bins), and the ECE."""
        n = np.maximum(self.counts, 1)
        used = self.counts > 0
        accuracy = np.where(used, self.correct / n, np.nan)
        confidence = np.where(used, self.confidence_sum / n, np.nan)
        as_list = lambda a: [None if np.isnan(v) else float(v) for v in a]
        return {
            "bin_edges": np.linspace(0.0, 1.0, self.num_bins + 1).tolist(),
            "counts": self.counts.tolist(),
            "accuracy": as_list(accuracy),
            "confidence": as_list(confidence),
            "ece": self.ece(),
        }


def expected_calibration_error(
    probs: np.ndarray, labels: np.ndarray, num_bins: int = NUM_BINS
) -> float:
    """Top-label ECE of `probs [*S, K]` against `labels [*S]` (see the module docstring)."""
    return Reliability.empty(num_bins).add(probs, labels).ece()


# --------------------------------------------------------------------------- temperature


def _check_logits(logits: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    logits = np.asarray(logits)
    labels = np.asarray(labels).reshape(-1)
    if logits.ndim not in (2, 3) or len(logits) != len(labels) or len(labels) == 0:
        raise JaxsegError(
            f"calibration: logits {logits.shape} must be [N, K] or [N, F, K] with N = "
            f"{len(labels)} labels and N > 0"
        )
    if labels.min() < 0 or labels.max() >= logits.shape[-1]:
        raise JaxsegError(
            f"calibration: label values {labels.min()}..{labels.max()} outside the "
            f"{logits.shape[-1]} classes"
        )
    return logits, labels


def _mixture_nll(temperature: float, logits: np.ndarray, labels: np.ndarray) -> float:
    """Mean NLL of `mean_f softmax(logits [N, F, K] / T)` (F mirrored passes averaged, as
    TTA does) at the true classes."""
    total = 0.0
    for start in range(0, len(logits), _CHUNK):
        z = logits[start : start + _CHUNK].astype(np.float64) / temperature
        y = labels[start : start + _CHUNK]
        log_p = z - special.logsumexp(z, axis=-1, keepdims=True)  # [n, F, K]
        log_py = log_p[np.arange(len(z)), :, y]  # [n, F]
        total -= float((special.logsumexp(log_py, axis=1) - np.log(z.shape[1])).sum())
    return total / len(logits)


def _nll_derivatives(beta: float, logits: np.ndarray, labels: np.ndarray):
    """(NLL, dNLL/dbeta, d2NLL/dbeta2) of softmax(beta * logits), means over voxels."""
    nll = grad = hess = 0.0
    for start in range(0, len(logits), _CHUNK):
        z = logits[start : start + _CHUNK].astype(np.float64)
        y = labels[start : start + _CHUNK]
        s = beta * z
        m = s.max(axis=1, keepdims=True)
        e = np.exp(s - m)
        total = e.sum(axis=1, keepdims=True)
        p = e / total
        zy = z[np.arange(len(z)), y]
        mean_z = (p * z).sum(axis=1)
        nll += float((np.log(total[:, 0]) + m[:, 0] - beta * zy).sum())
        grad += float((mean_z - zy).sum())
        hess += float(((p * z * z).sum(axis=1) - mean_z**2).sum())
    n = len(logits)
    return nll / n, grad / n, hess / n


def negative_log_likelihood(logits: np.ndarray, labels: np.ndarray, temperature: float) -> float:
    """Mean NLL at the true classes `labels [N]` of `softmax(logits [N, K] / temperature)`,
    or for `[N, F, K]` of the mean over the F mirrored passes of their softmaxes."""
    logits, labels = _check_logits(logits, labels)
    if logits.ndim == 3:
        return _mixture_nll(float(temperature), logits, labels)
    return _nll_derivatives(1.0 / float(temperature), logits, labels)[0]


def fit_temperature(logits: np.ndarray, labels: np.ndarray, *, iterations: int = 100) -> float:
    """The temperature `T` in `TEMPERATURE_RANGE` minimising `negative_log_likelihood`.

    `[N, K]` logits: Newton steps on `beta = 1/T`, kept inside a bracket that shrinks with
    the sign of the derivative (the NLL is convex in beta, so its derivative is
    increasing). `[N, F, K]` (TTA: the mean of F softmaxes, which is not convex in beta):
    a bounded Brent search over log T.
    """
    logits, labels = _check_logits(logits, labels)
    if logits.ndim == 3 and logits.shape[1] > 1:
        best = optimize.minimize_scalar(
            lambda log_t: _mixture_nll(float(np.exp(log_t)), logits, labels),
            bounds=tuple(np.log(TEMPERATURE_RANGE)),
            method="bounded",
            options={"xatol": 1e-6, "maxiter": iterations * 5},
        )
        return float(np.exp(best.x))
    logits = logits.reshape(len(logits), -1)
    lo, hi = 1.0 / TEMPERATURE_RANGE[1], 1.0 / TEMPERATURE_RANGE[0]
    beta = 1.0
    for _ in range(iterations):
        _, grad, hess = _nll_derivatives(beta, logits, labels)
        if grad > 0:
            hi = beta
        else:
            lo = beta
        step = beta - grad / hess if hess > 0 else np.inf
        new = step if lo < step < hi else 0.5 * (lo + hi)
        if abs(new - beta) <= 1e-9 * max(1.0, beta) or hi - lo <= 1e-12:
            beta = new
            break
        beta = new
    return float(1.0 / np.clip(beta, 1.0 / TEMPERATURE_RANGE[1], 1.0 / TEMPERATURE_RANGE[0]))


def sample_window_logits(
    cases: Iterable,
    logits_fn: Callable[[np.ndarray], np.ndarray],
    *,
    window: dict,
    preprocessing: Preprocessing,
    voxels_per_window: int = 2048,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Logits `[N, F, K]` float32 and true classes `[N]` int32 sampled from the windows
    that sliding-window inference would run over `cases` ((case_id, Image, label) triples).

    logits_fn: `windows [b, *patch, C] -> logits [F, b, *patch, K]`, the raw model output
    of the F mirrored passes (`inference.window_logits`; F = 1 without TTA).
    Within each window, `voxels_per_window` voxels are drawn with probability proportional
    to the Gaussian importance map; padding outside the image is never drawn.
    """
    rng = np.random.default_rng(seed)
    patch = tuple(window["patch_size"])
    importance = inference.gaussian_importance_map(patch, window["gaussian_sigma_scale"])
    all_logits, all_labels = [], []
    for case_id, image, label in cases:
        if label is None:
            raise JaxsegError(f"calibration: case {case_id} has no label")
        x, grid = preprocessing.image(image.data, image.spacing)
        y, _ = preprocessing.label(label, grid, window["num_classes"])
        # Pad as sliding_window_predict does; the padding itself is never sampled.
        diffs = [max(p - n, 0) for n, p in zip(y.shape, patch)]
        pads = [(d // 2, d - d // 2) for d in diffs]
        x = np.pad(x, pads + [(0, 0)], constant_values=PAD_VALUE)
        valid = np.pad(np.ones(y.shape, bool), pads)
        y = np.pad(y, pads)
        slices = inference.window_slices(y.shape, patch, window["overlap"])
        for first in range(0, len(slices), window["batch_size"]):
            group = slices[first : first + window["batch_size"]]
            batch = np.zeros((window["batch_size"], *patch, x.shape[-1]), np.float32)
            for i, sl in enumerate(group):
                batch[i] = x[sl]
            out = np.asarray(logits_fn(batch), np.float32)
            for i, sl in enumerate(group):
                weight = (importance * valid[sl]).reshape(-1).astype(np.float64)
                k = min(voxels_per_window, int(np.count_nonzero(weight)))
                pick = rng.choice(weight.size, size=k, replace=False, p=weight / weight.sum())
                flat = out[:, i].reshape(out.shape[0], -1, out.shape[-1])  # [F, P, K]
                all_logits.append(np.swapaxes(flat[:, pick], 0, 1))  # [k, F, K]
                all_labels.append(y[sl].reshape(-1)[pick])
    if not all_logits:
        raise JaxsegError("calibration: no cases to fit the temperature on")
    return np.concatenate(all_logits), np.concatenate(all_labels).astype(np.int32)


def check_temperature(value: float, what: str) -> float:
    """`value` as a float temperature, or ConfigError naming `what`."""
    t = float(value)
    if not (np.isfinite(t) and t > 0):
        raise ConfigError(f"{what}: temperature {value!r} must be a positive finite number")
    return t


def write_reliability_png(diagrams: Sequence[tuple[str, dict]], path, size: int = 480) -> None:
    """A reliability diagram (accuracy per confidence bin, one colour per curve, the
    diagonal as reference) written as PNG with Pillow."""
    from PIL import Image as PILImage
    from PIL import ImageDraw

    margin = 48
    img = PILImage.new("RGB", (size, size), "white")
    draw = ImageDraw.Draw(img)
    inner = size - 2 * margin
    to_xy = lambda c, a: (margin + c * inner, size - margin - a * inner)
    draw.rectangle([margin, margin, size - margin, size - margin], outline="black")
    draw.line([to_xy(0, 0), to_xy(1, 1)], fill=(160, 160, 160), width=1)
    colours = [(31, 119, 180), (214, 39, 40), (44, 160, 44)]
    for i, (name, d) in enumerate(diagrams):
        colour = colours[i % len(colours)]
        edges = d["bin_edges"]
        width = inner / (len(edges) - 1)
        for b, acc in enumerate(d["accuracy"]):
            if acc is None:
                continue
            x0, y0 = to_xy(edges[b], acc)
            offset = i * width / (2 * len(diagrams))
            draw.rectangle(
                [x0 + offset, y0, x0 + offset + width / 2, size - margin], outline=colour
            )
        draw.text((margin + 6, margin + 6 + 14 * i), f"{name}: ECE {d['ece']:.4f}", fill=colour)
    draw.text((size // 2 - 40, size - margin + 14), "confidence", fill="black")
    draw.text((4, margin - 20), "accuracy", fill="black")
    img.save(str(path))
