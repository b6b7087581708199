"""Whole-case evaluation: cases in, metrics and a report out.

    <out_dir>/metrics.csv    one row per case and foreground class
    <out_dir>/summary.json   per-class means, foreground mean, inference speed

Pure of workdirs: the caller supplies the cases and a window predictor
(`jaxseg.inference.window_predictor`); `jaxseg.evaluate.evaluate_run` does it for a run
and `jaxseg.evaluate.cross_validate_runs` for the folds of a plan (`cross_validate`:
pooled out-of-fold metrics and the postprocessing decision).
"""

from __future__ import annotations

import csv
import dataclasses
import json
import os
import time
from collections.abc import Iterable, Iterator, Sequence

import numpy as np
import tqdm
from etils import epath

from jaxseg import calibration, inference, metrics, postprocess
from jaxseg.data.io import Image
from jaxseg.data.preprocess import CaseGrid, Preprocessing
from jaxseg.errors import ConfigError, DataError, JaxsegError
from jaxseg.losses import ClassTarget
from jaxseg.metrics import METRIC_NAMES
from jaxseg.metrics.classification import classification_metrics


@dataclasses.dataclass
class CaseClassifier:
    """Collects a class head's case probabilities next to the segmentation (`wrap`), then
    `summary()`: `metrics.classification.classification_metrics` over the cases.

    A case's probabilities are `inference.case_class_probabilities` over its windows:
    pooled by "max" for a derived target ("the patch holds class K": the case is positive
    when any window is; K's presence in the case's label is its target), by "mean" for
    dataset.json's per-case `class` (`case_classes`: case id -> class index).
    """

    predictor: object  # inference.class_window_predictor
    target: ClassTarget
    window: dict
    preprocessing: Preprocessing
    case_classes: dict
    probs: list = dataclasses.field(default_factory=list)
    targets: list = dataclasses.field(default_factory=list)

    @property
    def pooling(self) -> str:
        return "max" if self.target.derived else "mean"

    def wrap(self, cases: Iterable) -> Iterator:
        """Yields the (case_id, Image, label) triples unchanged, classifying each first."""
        for case_id, image, label in cases:
            if self.target.derived:
                if label is None:
                    raise DataError(f"case '{case_id}': no label to derive its class from.")
                truth = int((label == self.target.foreground_class).any())
            else:
                truth = self.case_classes.get(case_id)
                if truth is None:
                    raise DataError(f"case '{case_id}' has no 'class' in dataset.json.")
            self.probs.append(
                inference.case_class_probabilities(
                    image.data,
                    image.spacing,
                    self.predictor,
                    window=self.window,
                    preprocessing=self.preprocessing,
                    pooling=self.pooling,
                    case=case_id,
                )
            )
            self.targets.append(truth)
            yield case_id, image, label

    def summary(self) -> dict:
        found = classification_metrics(np.stack(self.probs), np.asarray(self.targets))
        return {
            **found,
            "target": self.target.describe(),
            "pooling": self.pooling,
            "classes": list(self.target.names),
        }


def predict_cases(
    cases: Iterable,
    predictor,
    *,
    window: dict,
    preprocessing: Preprocessing,
    postprocessing: dict | None = None,
    chain: postprocess.Chain | None = None,
    progress: bool = False,
    total: int | None = None,
    desc: str = "evaluate",
    reliability: calibration.Reliability | None = None,
) -> Iterator[tuple[str, Image, np.ndarray | None, np.ndarray, float]]:
    """Yields `(case_id, image, label, prediction [*S] uint8, seconds)` for (case_id, Image
    as read, label) triples, one case at a time: `predict_labels` (back on the image's
    own grid, the run's largest-component decision and `eval.postprocess` chain applied).
    reliability: when given, each case's softmax (before postprocessing) is added to it
    against the label, over the whole image grid (outside the time reported)."""
    if progress:  # a bar with an ETA over `total` cases
        cases = tqdm.tqdm(cases, desc=desc, unit="case", total=total)
    for case_id, image, label in cases:
        start = time.perf_counter()
        probs = None
        if reliability is not None:
            probs = image_probabilities(
                image, predictor, window=window, preprocessing=preprocessing, case=case_id
            )
        pred = predict_labels(
            image,
            predictor,
            window=window,
            preprocessing=preprocessing,
            postprocessing=postprocessing,
            chain=chain,
            case=case_id,
            probabilities=probs,
        )
        seconds = time.perf_counter() - start
        if probs is not None and label is not None:
            reliability.add(inference.uncrop_probabilities(*probs), label)
        del probs
        yield case_id, image, label, pred, seconds


def image_probabilities(
    image: Image,
    predictor,
    *,
    window: dict,
    preprocessing: Preprocessing,
    case: str | None = None,
) -> tuple[np.ndarray, CaseGrid]:
    """`inference.case_probabilities` of an image as read: (softmax `[*S', K]` on the
    cropped grid, the grid); `case` names it in errors (default: its path)."""
    return inference.case_probabilities(
        image.data,
        image.spacing,
        predictor,
        window=window,
        preprocessing=preprocessing,
        case=case or str(getattr(image, "path", "")) or None,
    )


def predict_labels(
    image: Image,
    predictor,
    *,
    window: dict,
    preprocessing: Preprocessing,
    postprocessing: dict | None = None,
    chain: postprocess.Chain | None = None,
    case: str | None = None,
    probabilities: tuple[np.ndarray, CaseGrid] | None = None,
) -> np.ndarray:
    """An image as read -> its postprocessed class map `[*S]` on the image's grid, in
    docs/postprocessing.md's order: the chain's CRF (on the softmax and the image) or the
    argmax, then the largest-component decision, then the chain's label steps.
    probabilities: `inference.case_probabilities`'s result for this image, when the caller
    has it already (`predict --probabilities`); None predicts them here."""
    if case is None and getattr(image, "path", None):
        case = str(image.path)  # names the case in preprocessing errors
    if probabilities is None and chain is not None and chain.crf is not None:
        probabilities = image_probabilities(
            image, predictor, window=window, preprocessing=preprocessing, case=case
        )
    if probabilities is None:
        pred = inference.predict_case(
            image.data,
            image.spacing,
            predictor,
            window=window,
            preprocessing=preprocessing,
            case=case,
        )
    else:
        probs, grid = probabilities
        if chain is not None and chain.crf is not None:
            cropped = chain.labels_from_probabilities(probs, image.data[grid.box], image.spacing)
        else:
            cropped = inference.argmax_labels(probs)
        pred = grid.uncrop(cropped)
    if postprocessing is not None:
        pred = postprocess.apply_postprocessing(pred, postprocessing)
    if chain:
        pred = chain.apply(pred, image.spacing)
    return pred


def score_case(
    case_id: str,
    pred: np.ndarray,
    label: np.ndarray,
    spacing,
    labels: dict[int, str],
    *,
    nsd_tolerance_mm: float = metrics.DEFAULT_NSD_TOLERANCE_MM,
) -> list[dict]:
    """One row per foreground class: `case`, `class`, `name` and `metrics.case_metrics`
    (NSD at `nsd_tolerance_mm`, the run's `eval.nsd_tolerance_mm`)."""
    per_class = metrics.case_metrics(
        pred, label, len(labels), spacing, nsd_tolerance_mm=nsd_tolerance_mm
    )
    return [
        {
            "case": case_id,
            "class": cls,
            "name": labels.get(cls, str(cls)),
            **{m: float(values[m]) for m in METRIC_NAMES},
        }
        for cls, values in enumerate(per_class, start=1)
    ]


def _timing(seconds: list[float]) -> dict:
    if not seconds:
        raise JaxsegError("no cases to evaluate: the split or fold given is empty")
    timed = seconds[1:] or seconds  # the first case includes compilation
    per_case = float(np.median(timed))
    return {
        "median_seconds_per_case": per_case,
        "cases_per_second": 1.0 / per_case,
        "num_cases": len(seconds),
    }


def evaluate_cases(
    cases: Iterable,
    predictor,
    *,
    window: dict,
    labels: dict[int, str],
    preprocessing: Preprocessing,
    postprocessing: dict | None = None,
    chain: postprocess.Chain | None = None,
    progress: bool = False,
    total: int | None = None,
    nsd_tolerance_mm: float = metrics.DEFAULT_NSD_TOLERANCE_MM,
    reliability: calibration.Reliability | None = None,
) -> tuple[list[dict], dict]:
    """Evaluates (case_id, Image as read, label) triples; returns (rows, timing).

    window: `sliding_window_predict`'s settings (`inference.window_options`), `num_classes`
    among them. preprocessing: the run's (`Preprocessing.from_config`); predictions come
    back to each image's own grid (`inference.predict_case`) and are scored there, in mm.
    postprocessing: a largest-component decision (`jaxseg.postprocess`) or None.
    chain: the `eval.postprocess` steps (`postprocess.Chain`) or None.
    reliability: a `calibration.Reliability` that collects every case's voxels (ECE and
    the reliability diagram), or None.
    rows: `score_case`'s, for every case. timing: median seconds of inference per case
    (excluding the first case, which includes compilation) and cases per second.
    """
    rows, seconds = [], []
    for case_id, image, label, pred, sec in predict_cases(
        cases,
        predictor,
        window=window,
        preprocessing=preprocessing,
        postprocessing=postprocessing,
        chain=chain,
        progress=progress,
        total=total,
        reliability=reliability,
    ):
        seconds.append(sec)
        rows.extend(
            score_case(
                case_id, pred, label, image.spacing, labels, nsd_tolerance_mm=nsd_tolerance_mm
            )
        )
    return rows, _timing(seconds)


def cross_validate(
    folds: Sequence[dict],
    *,
    labels: dict[int, str],
    progress: bool = False,
    nsd_tolerance_mm: float = metrics.DEFAULT_NSD_TOLERANCE_MM,
):
    """Cross-validation: each fold's validation cases scored by the fold that did not train
    on them, pooled; and the largest-component decision taken on those predictions.

    folds: per fold `dict(cases=..., predictor=..., window=..., preprocessing=..., total=n)`
    (`cases` yields (case_id, Image, label) of that fold's "val" split). Returns (rows,
    timing, decision) with `decision` from `postprocess.decide_postprocessing` (nnU-Net's
    rule: kept only where it raises cross-validation Dice and lowers no class).
    """
    rows, seconds = [], []

    def predictions():
        for k, fold in enumerate(folds):
            stream = predict_cases(
                fold["cases"],
                fold["predictor"],
                window=fold["window"],
                preprocessing=fold["preprocessing"],
                progress=progress,
                total=fold.get("total"),
                desc=f"fold {k}",
            )
            for case_id, image, label, pred, sec in stream:
                seconds.append(sec)
                rows.extend(
                    score_case(
                        case_id,
                        pred,
                        label,
                        image.spacing,
                        labels,
                        nsd_tolerance_mm=nsd_tolerance_mm,
                    )
                )
                yield pred, label, image.spacing

    decision = postprocess.decide_postprocessing(predictions(), len(labels))
    return rows, _timing(seconds), decision


def nsd_tolerance(config) -> float:
    """`eval.nsd_tolerance_mm` of a run's config (runs saved before the key: its default);
    ConfigError unless it is a finite number > 0."""
    value = config.eval.get("nsd_tolerance_mm", metrics.DEFAULT_NSD_TOLERANCE_MM)
    try:
        tau = float(value)
    except (TypeError, ValueError):
        tau = float("nan")
    if not (np.isfinite(tau) and tau > 0):
        raise ConfigError(
            f"eval.nsd_tolerance_mm = {value!r}: the surface Dice tolerance must be a "
            "number of millimetres > 0 (e.g. 1.0)."
        )
    return tau


def metric_columns(rows: list[dict]) -> list[str]:
    """The `METRIC_NAMES` the rows carry, in that order: every one for `score_case`'s rows;
    rows scored before a metric existed (an older metrics.csv) lack it. A metric that only
    some rows carry is an error, since its mean would silently cover fewer cases."""
    names = [m for m in METRIC_NAMES if any(m in r for r in rows)]
    for r in rows:
        missing = [m for m in names if m not in r]
        if missing:
            raise JaxsegError(
                f"metric row of case {r.get('case')!r}, class {r.get('class')!r} lacks "
                f"{', '.join(missing)}, which other rows carry; score every case the same way."
            )
    return names


def summarize(rows: list[dict], labels: dict[int, str]) -> dict:
    """Per-class means of every metric over cases, and their mean over foreground classes.

    Returns `{"per_class": {name: {metric: mean}}, "mean": {metric: mean over classes},
    "num_cases": N}`. `case_metrics` is never NaN, so a missed structure counts (Dice 0,
    the penalty distance) instead of vanishing from a mean.
    """
    if not rows:
        raise JaxsegError("summarize: no metric rows (no cases were evaluated)")
    names = metric_columns(rows)
    per_class = {}
    for cls in sorted({r["class"] for r in rows}):
        mine = [r for r in rows if r["class"] == cls]
        per_class[labels.get(cls, str(cls))] = {
            m: float(np.mean([r[m] for r in mine])) for m in names
        }
    mean = {m: float(np.mean([v[m] for v in per_class.values()])) for m in names}
    return {"per_class": per_class, "mean": mean, "num_cases": len({r["case"] for r in rows})}


def write_report(rows: list[dict], summary: dict, out_dir: str | os.PathLike) -> None:
    out_dir = epath.Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    with (out_dir / "metrics.csv").open("w") as f:
        writer = csv.DictWriter(f, fieldnames=["case", "class", "name", *metric_columns(rows)])
        writer.writeheader()
        writer.writerows(rows)
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2))


def format_table(summary: dict) -> str:
    """The summary as a fixed-width text table, one line per class and the mean."""
    names = [m for m in METRIC_NAMES if m in summary["mean"]]  # older summaries lack some
    widths = [max(10, len(m) + 1) for m in names]
    header = f"{'class':<16}" + "".join(f"{m:>{w}}" for m, w in zip(names, widths))
    lines = [header, "-" * len(header)]
    for name, values in [*summary["per_class"].items(), ("mean", summary["mean"])]:
        lines.append(f"{name:<16}" + "".join(f"{values[m]:>{w}.4f}" for m, w in zip(names, widths)))
    return "\n".join(lines)
