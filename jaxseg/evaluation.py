"""Whole-case evaluation: cases in, metrics and a report out.

    <out_dir>/metrics.csv    one row per case and foreground class
    <out_dir>/summary.json   per-class means, foreground mean, inference speed

Pure of workdirs: the caller supplies the cases and a window predictor
(`jaxseg.inference.window_predictor`); `jaxseg.evaluate.evaluate_run` does it for a run.
"""

from __future__ import annotations

import csv
import json
import os
import time
from collections.abc import Iterable

import numpy as np
from etils import epath

from jaxseg import inference, metrics
from jaxseg.errors import JaxsegError
from jaxseg.metrics import METRIC_NAMES


def evaluate_cases(
    cases: Iterable, predictor, *, window: dict, labels: dict[int, str]
) -> tuple[list[dict], dict]:
    """Evaluates (case_id, Image, label) triples; returns (rows, timing).

    window: `sliding_window_predict`'s settings (`inference.window_options`), `num_classes`
    among them. rows: one dict per case and foreground class with `case`, `class`, `name`
    and the metrics of `jaxseg.metrics.case_metrics`. timing: seconds of inference per case
    (excluding the first case, which includes compilation) and cases per second.
    """
    rows, seconds = [], []
    for case_id, image, label in cases:
        start = time.perf_counter()
        pred = inference.predict_labels(image.data, predictor, **window)
        seconds.append(time.perf_counter() - start)
        per_class = metrics.case_metrics(pred, label, window["num_classes"], image.spacing)
        for cls, values in enumerate(per_class, start=1):
            rows.append(
                {
                    "case": case_id,
                    "class": cls,
                    "name": labels.get(cls, str(cls)),
                    **{m: float(values[m]) for m in METRIC_NAMES},
                }
            )
    if not seconds:
        raise JaxsegError("no cases to evaluate: the split or fold given is empty")
    timed = seconds[1:] or seconds
    per_case = float(np.median(timed))
    return rows, {
        "median_seconds_per_case": per_case,
        "cases_per_second": 1.0 / per_case,
        "num_cases": len(seconds),
    }


def summarize(rows: list[dict], labels: dict[int, str]) -> dict:
    """Per-class means of every metric over cases, and their mean over foreground classes.

    Returns `{"per_class": {name: {metric: mean}}, "mean": {metric: mean over classes},
    "num_cases": N}`. `case_metrics` is never NaN, so a missed structure counts (Dice 0,
    the penalty distance) instead of vanishing from a mean.
    """
    if not rows:
        raise JaxsegError("summarize: no metric rows (no cases were evaluated)")
    per_class = {}
    for cls in sorted({r["class"] for r in rows}):
        mine = [r for r in rows if r["class"] == cls]
        per_class[labels.get(cls, str(cls))] = {
            m: float(np.mean([r[m] for r in mine])) for m in METRIC_NAMES
        }
    mean = {m: float(np.mean([v[m] for v in per_class.values()])) for m in METRIC_NAMES}
    return {"per_class": per_class, "mean": mean, "num_cases": len({r["case"] for r in rows})}


def write_report(rows: list[dict], summary: dict, out_dir: str | os.PathLike) -> None:
    out_dir = epath.Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    with (out_dir / "metrics.csv").open("w") as f:
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
