"""Score nnU-Net's predictions with jaxseg's metrics, and write the side-by-side report.

    score_predictions.py score --data DATASET_DIR --pred PRED_DIR --out OUT_DIR
    score_predictions.py report --nnunet-summary S.json --jaxseg-summary S.json \\
        --nnunet-plans nnUNetPlans.json --nnunet-config 2d --jaxseg-plan plan.json \\
        --timings timings.json [--nnunet-trainer-log budget_trainer.json] --out report.md

score
    Reads jaxseg's held-out test cases (`jaxseg.data.splits.make_splits(..., fold=0)`
    "test", or --cases) with `jaxseg.data.dataset.load_case`, and nnU-Net's prediction
    `PRED_DIR/CASE.nii.gz` with `jaxseg.data.io.read_label` (canonical order, as
    tools/peer/to_nnunet.py wrote its input), checks that the two share one grid, and
    scores them exactly as `python -m jaxseg.evaluate` does (`evaluation.score_case`:
    `metrics.case_metrics` on the image's own grid, in mm; `evaluation.summarize`).
    Writes OUT_DIR/metrics.csv and summary.json and prints the table.
report
    Both Dice / HD95 tables, the two plans side by side (spacing, patch, batch, stages, in
    jaxseg's canonical axis order), wall-clock and step times, and the ratio of mean Dice
    jaxseg / nnU-Net, as markdown to --out and stdout.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from to_nnunet import nifti_affine  # noqa: E402

from jaxseg import evaluation  # noqa: E402
from jaxseg.data import io  # noqa: E402
from jaxseg.data.dataset import load_case, load_dataset  # noqa: E402
from jaxseg.data.splits import make_splits  # noqa: E402
from jaxseg.errors import DataError  # noqa: E402

__all__ = ["score", "nnunet_plan_summary", "jaxseg_plan_summary", "render_report"]


# ----------------------------------------------------------------------------- score


def score(
    data: str | Path,
    pred_dir: str | Path,
    *,
    cases: list[str] | None = None,
    seed: int = 0,
    num_folds: int = 5,
) -> tuple[list[dict], dict]:
    """(metric rows, summary) of the predictions in `pred_dir` against the dataset's labels.

    cases: ids to score (default: jaxseg's test split for `seed`, `num_folds`). Raises
    DataError naming the case for a missing prediction, a prediction on another grid, or a
    class index outside 0..K-1.
    """
    spec = load_dataset(data)
    by_id = {c.case_id: c for c in spec.training}
    if cases is None:
        cases = [
            c.case_id
            for c in make_splits(spec.training, seed=seed, fold=0, num_folds=num_folds)["test"]
        ]
    unknown = [c for c in cases if c not in by_id]
    if unknown:
        raise DataError(f"{spec.root}: no training case(s) {unknown} in dataset.json.")
    rows = []
    for case_id in cases:
        image, label = load_case(spec, by_id[case_id])
        path = Path(pred_dir) / f"{case_id}.nii.gz"
        try:
            pred, affine, spacing = io.read_label(path, spec.dims)
        except DataError as e:
            raise DataError(f"case '{case_id}': prediction {e}") from e
        if pred.shape != label.shape:
            raise DataError(
                f"case '{case_id}': prediction {path} has shape {pred.shape}, the label "
                f"{label.shape} (canonical order); was it written for another image?"
            )
        want = nifti_affine(image) if spec.dims == 2 else image.affine
        if not np.allclose(affine, want, rtol=1e-4, atol=1e-3) or not np.allclose(
            spacing, image.spacing, rtol=1e-4
        ):
            raise DataError(
                f"case '{case_id}': prediction {path} is not on the image's grid "
                f"(affine\n{np.array2string(affine, precision=4)}\nexpected\n"
                f"{np.array2string(want, precision=4)})."
            )
        if pred.size and (pred.min() < 0 or pred.max() >= spec.num_classes):
            raise DataError(
                f"case '{case_id}': prediction {path} holds values {int(pred.min())}.."
                f"{int(pred.max())}; expected class indices 0..{spec.num_classes - 1}."
            )
        rows.extend(evaluation.score_case(case_id, pred, label, image.spacing, spec.labels))
    summary = {**evaluation.summarize(rows, spec.labels), "split": "test", "cases": list(cases)}
    return rows, summary


# ----------------------------------------------------------------------------- plans


def _canonical(values, transpose_backward, dims: int, two_d: bool):
    """nnU-Net's per-axis values (transposed SimpleITK order z, y, x; a 2d config lacks the
    first transposed axis) -> jaxseg's canonical order x, y, (z); None where it has none."""
    full = [None, *values] if two_d else list(values)
    original = [full[i] for i in transpose_backward]  # SimpleITK's (k, j, i) voxel axes
    xyz = original[::-1]
    return xyz[:2] if dims == 2 else xyz


def nnunet_plan_summary(plans: dict, config: str, dims: int) -> dict:
    """The fields of nnUNetPlans.json's `config` that jaxseg's plan also has, in canonical
    axis order."""
    cfg = plans["configurations"][config]
    back = plans["transpose_backward"]
    two_d = config == "2d"
    arch = cfg.get("architecture", {}).get("arch_kwargs", {})
    strides = np.asarray(arch.get("strides", [[1]]), np.int64)
    total = np.prod(strides, axis=0).tolist() if strides.ndim == 2 else []
    return {
        "configuration": config,
        "spacing": _canonical(cfg["spacing"], back, dims, two_d),
        "median_shape": _canonical(cfg["median_image_size_in_voxels"], back, dims, two_d),
        "patch": _canonical(cfg["patch_size"], back, dims, two_d),
        "batch": cfg["batch_size"],
        "stages": arch.get("n_stages"),
        "total_stride": _canonical(total, back, dims, two_d) if total else None,
        "features": arch.get("features_per_stage"),
        "network": cfg.get("architecture", {}).get("network_class_name", "?").split(".")[-1],
        "normalization": cfg["normalization_schemes"],
        "nonzero_mask": cfg["use_mask_for_norm"],
    }


def jaxseg_plan_summary(plan: dict) -> dict:
    """The same fields from jaxseg's plan.json."""
    args = plan.get("model_args", {})
    # The per-stage widths: the first list-of-integers argument (embed_dims, features, ...).
    features = next(
        (
            f"{k} {_fmt(v)}"
            for k, v in args.items()
            if isinstance(v, list) and v and all(isinstance(x, int) for x in v)
        ),
        None,
    )
    return {
        "configuration": f"{plan['dims']}D {plan['model']}",
        "spacing": plan["target_spacing"],
        "median_shape": plan["median_shape"],
        "patch": plan["patch_size"],
        "batch": plan["batch_size"],
        "stages": plan["stages"],
        "total_stride": plan["total_stride"],
        "features": features,
        "network": plan["model"],
        "normalization": [c["scheme"] for c in plan["normalization"]],
        "nonzero_mask": [c["use_nonzero_mask"] for c in plan["normalization"]],
    }


# ----------------------------------------------------------------------------- report


def _fmt(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, (list, tuple)):
        return (
            "×".join(_fmt(x) for x in v)
            if all(not isinstance(x, (list, str, bool)) for x in v)
            else ", ".join(_fmt(x) for x in v)
        )
    return str(v)


def _share(seconds, budget) -> str:
    return f"{seconds / budget:.0%}" if seconds and budget else "-"


def _metric_table(nn: dict, jx: dict) -> list[str]:
    classes = list(jx["per_class"])
    lines = [
        "| class | nnU-Net Dice | jaxseg Dice | nnU-Net HD95 (mm) | jaxseg HD95 (mm) |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for name in [*classes, "mean"]:
        a = nn["mean"] if name == "mean" else nn["per_class"].get(name, {})
        b = jx["mean"] if name == "mean" else jx["per_class"][name]
        cells = [a.get("dice"), b.get("dice"), a.get("hd95"), b.get("hd95")]
        lines.append(
            f"| {'**mean**' if name == 'mean' else name} | "
            + " | ".join("-" if v is None else f"{v:.4f}" for v in cells)
            + " |"
        )
    return lines


def render_report(
    nn_summary: dict,
    jx_summary: dict,
    nn_plan: dict,
    jx_plan: dict,
    timings: dict,
    trainer_log: dict | None = None,
) -> str:
    """The markdown report (see the module docstring)."""
    ratio = (
        jx_summary["mean"]["dice"] / nn_summary["mean"]["dice"]
        if nn_summary["mean"]["dice"]
        else float("inf")
    )
    budget = timings.get("budget_s")
    lines = [
        f"# nnU-Net v2 vs jaxseg: {timings.get('dataset', '?')}",
        "",
        f"Same held-out test cases ({nn_summary['num_cases']}: jaxseg's test split), fold 0 "
        f"train/val identical, {budget / 60:.0f}-minute wall-clock training budget each on "
        f"this machine ({timings.get('machine', '?')}); both scored by jaxseg's metrics on "
        "the images' own grids, with mirroring TTA.",
        "",
        f"**mean foreground Dice: jaxseg / nnU-Net = {jx_summary['mean']['dice']:.4f} / "
        f"{nn_summary['mean']['dice']:.4f} = {ratio:.3f}**",
        "",
        "## Test metrics",
        "",
        *_metric_table(nn_summary, jx_summary),
        "",
        "## Plans (canonical axis order x, y, (z))",
        "",
        "| | nnU-Net v2 | jaxseg |",
        "| --- | --- | --- |",
    ]
    for key in (
        "configuration",
        "network",
        "spacing",
        "median_shape",
        "patch",
        "batch",
        "stages",
        "total_stride",
        "features",
        "normalization",
        "nonzero_mask",
    ):
        lines.append(f"| {key} | {_fmt(nn_plan.get(key))} | {_fmt(jx_plan.get(key))} |")
    lines += [
        "",
        "## Time (wall clock, seconds)",
        "",
        "| stage | nnU-Net v2 | jaxseg |",
        "| --- | ---: | ---: |",
    ]
    nn_t, jx_t = timings.get("nnunet", {}), timings.get("jaxseg", {})
    for label, a, b in (
        ("plan (+ preprocess)", "plan_and_preprocess_s", "plan_s"),
        ("train (budgeted)", "train_s", "train_s"),
        ("predict / evaluate test (TTA)", "predict_s", "evaluate_s"),
    ):
        lines.append(f"| {label} | {_fmt(nn_t.get(a))} | {_fmt(jx_t.get(b))} |")
    nn_step = (trainer_log or {}).get("seconds_per_iteration")
    nn_iters = (trainer_log or {}).get("iterations_total")

    def per_step(seconds, steps):
        return seconds / steps if seconds and steps else None

    lines += [
        f"| train step (batch {nn_plan.get('batch')} / {jx_plan.get('batch')}) | "
        f"{_fmt(nn_step)} | {_fmt(jx_t.get('step_s'))} |",
        f"| train steps run | {_fmt(nn_iters)} | {_fmt(jx_t.get('steps'))} |",
        f"| train wall clock / steps run | {_fmt(per_step(nn_t.get('train_s'), nn_iters))} | "
        f"{_fmt(per_step(jx_t.get('train_s'), jx_t.get('steps')))} |",
        f"| train wall clock / budget | {_share(nn_t.get('train_s'), budget)} | "
        f"{_share(jx_t.get('train_s'), budget)} |",
        "",
        "Step times: nnU-Net's is the budget trainer's median of its 2nd and 3rd iteration "
        "(data loading included); jaxseg's is the planner's timing of the compiled step "
        "(plan.json `training.step_seconds`). The training wall clock includes each tool's "
        "start-up, compilation, data loading and in-training validation.",
    ]
    if trainer_log:
        lines += [
            "",
            f"nnU-Net budget trainer: {trainer_log.get('epochs')} epochs, iterations per epoch "
            f"{trainer_log.get('iterations_per_epoch')}, validation iterations per epoch "
            f"{trainer_log.get('val_iterations_per_epoch')}.",
        ]
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------- CLI


def _load(path: str) -> dict:
    p = Path(path)
    if not p.is_file():
        raise DataError(f"{p}: file not found.")
    return json.loads(p.read_text())


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)
    s = sub.add_parser("score", help="score nnU-Net predictions with jaxseg's metrics")
    s.add_argument("--data", required=True, help="the jaxseg dataset folder")
    s.add_argument("--pred", required=True, help="folder of CASE.nii.gz predictions")
    s.add_argument("--out", required=True, help="folder for metrics.csv and summary.json")
    s.add_argument("--cases", nargs="*", default=None, help="case ids (default: the test split)")
    s.add_argument("--seed", type=int, default=0, help="jaxseg's data.split_seed")
    s.add_argument("--num-folds", type=int, default=5, help="jaxseg's data.num_folds")
    r = sub.add_parser("report", help="the side-by-side markdown report")
    r.add_argument("--nnunet-summary", required=True)
    r.add_argument("--jaxseg-summary", required=True)
    r.add_argument("--nnunet-plans", required=True, help="nnUNet_preprocessed/.../nnUNetPlans.json")
    r.add_argument("--nnunet-config", required=True, help="2d or 3d_fullres")
    r.add_argument("--jaxseg-plan", required=True, help="jaxseg's plan.json")
    r.add_argument("--timings", required=True, help="timings.json written by the script")
    r.add_argument("--nnunet-trainer-log", default=None, help="the budget trainer's JSON")
    r.add_argument("--out", required=True, help="report.md")
    args = parser.parse_args(argv)
    try:
        if args.command == "score":
            rows, summary = score(
                args.data, args.pred, cases=args.cases, seed=args.seed, num_folds=args.num_folds
            )
            evaluation.write_report(rows, summary, args.out)
            print(evaluation.format_table(summary))
            print(
                f"mean foreground Dice: {summary['mean']['dice']:.4f} over {summary['num_cases']} cases"
            )
            return 0
        jx_plan = _load(args.jaxseg_plan)
        text = render_report(
            _load(args.nnunet_summary),
            _load(args.jaxseg_summary),
            nnunet_plan_summary(_load(args.nnunet_plans), args.nnunet_config, jx_plan["dims"]),
            jaxseg_plan_summary(jx_plan),
            _load(args.timings),
            _load(args.nnunet_trainer_log) if args.nnunet_trainer_log else None,
        )
        Path(args.out).write_text(text)
        print(text)
        return 0
    except DataError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
