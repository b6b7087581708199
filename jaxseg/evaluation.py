"""Whole-case evaluation: sliding-window inference, per-case metrics, a report on disk.

workdir/eval_<split>/metrics.csv    one row per case and foreground class
workdir/eval_<split>/summary.json   per-class means, foreground mean, inference speed
"""

from __future__ import annotations

import csv
import functools
import json
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import jax
import numpy as np

from jaxseg import inference, metrics
from jaxseg.training.steps import make_predict_fn

METRIC_NAMES = ("dice", "iou", "precision", "recall", "hd95", "asd")


@functools.lru_cache(maxsize=8)
def _jitted_predict(model):
    return jax.jit(make_predict_fn(model))


def window_predictor(model, params) -> Callable[[np.ndarray], np.ndarray]:
    """`f(windows [b, *patch, C]) -> probabilities [b, *patch, K]`; compiled once per model
    and window-batch shape, so new params (as in validation during training) reuse it."""
    predict = _jitted_predict(model)
    return lambda windows: np.asarray(predict(params, windows))


def predict_probabilities(
    image: np.ndarray, predictor, *, patch_size, num_classes, eval_config
) -> np.ndarray:
    """Class probabilities `[X, Y, (Z), K]` for one normalised image `[X, Y, (Z), C]`."""
    return inference.sliding_window_predict(
        image,
        predictor,
        patch_size=tuple(patch_size),
        num_classes=num_classes,
        overlap=eval_config.overlap,
        batch_size=eval_config.batch_size,
        gaussian_sigma_scale=eval_config.gaussian_sigma_scale,
    )


def evaluate_cases(
    cases: Iterable, predictor, *, patch_size, num_classes, labels, eval_config
) -> tuple[list[dict], dict]:
    """Evaluates (case_id, Image, label) triples; returns (rows, timing).

    rows: one dict per case and foreground class with `case`, `class`, `name` and the
    metrics of `jaxseg.metrics.case_metrics`. timing: seconds of inference per case
    (excluding the first case, which includes compilation) and cases per second.
    """
    rows, seconds = [], []
    for case_id, image, label in cases:
        start = time.perf_counter()
        probs = predict_probabilities(
            image.data,
            predictor,
            patch_size=patch_size,
            num_classes=num_classes,
            eval_config=eval_config,
        )
        pred = np.argmax(probs, axis=-1).astype(np.uint8)
        seconds.append(time.perf_counter() - start)
        per_class = metrics.case_metrics(pred, label, num_classes, image.spacing)
        for cls, values in enumerate(per_class, start=1):
            rows.append(
                {
                    "case": case_id,
                    "class": cls,
                    "name": labels.get(cls, str(cls)),
                    **{m: float(values[m]) for m in METRIC_NAMES},
                }
            )
    timed = seconds[1:] or seconds
    per_case = float(np.median(timed)) if timed else float("nan")
    return rows, {
        "median_seconds_per_case": per_case,
        "cases_per_second": 1.0 / per_case,
        "num_cases": len(seconds),
    }


def summarize(rows: list[dict], labels: dict[int, str]) -> dict:
    """Per-class means of every metric, and their mean over foreground classes."""
    classes = sorted({r["class"] for r in rows})
    per_class = {}
    for cls in classes:
        mine = [r for r in rows if r["class"] == cls]
        per_class[labels.get(cls, str(cls))] = {
            m: float(np.mean([r[m] for r in mine])) for m in METRIC_NAMES
        }
    mean = {m: float(np.mean([v[m] for v in per_class.values()])) for m in METRIC_NAMES}
    return {"per_class": per_class, "mean": mean, "num_cases": len({r["case"] for r in rows})}


def write_report(rows: list[dict], summary: dict, out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    with open(out_dir / "metrics.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["case", "class", "name", *METRIC_NAMES])
        writer.writeheader()
        writer.writerows(rows)
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2))


def format_table(summary: dict) -> str:
    """The summary as a fixed-width text table, one line per class and the mean."""
    header = f"{'class':<16}" + "".join(f"{m:>10}" for m in METRIC_NAMES)
    lines = [header, "-" * len(header)]
    for name, values in [*summary["per_class"].items(), ("mean", summary["mean"])]:
        lines.append(f"{name:<16}" + "".join(f"{values[m]:>10.4f}" for m in METRIC_NAMES))
    return "\n".join(lines)


def evaluate_run(
    workdir: str | Path,
    *,
    split: str | None = None,
    which: str = "auto",
    data_root: str | None = None,
) -> dict:
    """Evaluates a trained run on one of its splits; writes and returns the summary."""
    from jaxseg.data import dataset as dataset_lib
    from jaxseg.data import pipeline
    from jaxseg.errors import JaxsegError
    from jaxseg.run import load_splits, load_trained

    config, info, model, params = load_trained(workdir, which)
    split = split or config.eval.split
    spec = dataset_lib.load_dataset(data_root or config.data.root)
    wanted = load_splits(workdir)[split]
    by_id = {c.case_id: c for c in spec.training}
    missing = [c for c in wanted if c not in by_id]
    if missing:
        raise JaxsegError(
            f"{len(missing)} {split} cases of {workdir} are not in "
            f"{spec.root}/dataset.json (first: {missing[0]}); pass the "
            "dataset the run was trained on with --data-root"
        )
    cases = pipeline.eval_cases(
        spec, [by_id[c] for c in wanted], ct_window=tuple(config.data.ct_window)
    )
    rows, timing = evaluate_cases(
        cases,
        window_predictor(model, params),
        patch_size=config.data.patch_size,
        num_classes=info.num_classes,
        labels=info.labels,
        eval_config=config.eval,
    )
    out_dir = Path(workdir) / f"eval_{split}"
    summary = {
        **summarize(rows, info.labels),
        "split": split,
        "inference": timing,
        "report_dir": str(out_dir),
    }
    write_report(rows, summary, out_dir)
    return summary
