"""Evaluate a trained run: python -m jaxseg.evaluate --workdir DIR [--split test]

Writes DIR/eval_<split>/metrics.csv and summary.json and prints a table. The run's
postprocessing decision (DIR/postprocessing.json), when there is one, is applied.

Cross-validation: python -m jaxseg.evaluate --workdir DIR_F0,DIR_F1,...  (the folds of one
plan, trained with --config.data.fold=k) scores each fold's validation cases with that
fold's model, pools them into DIR_F0/crossval/ (metrics.csv, summary.json), takes the
largest-component decision on those out-of-fold predictions (nnU-Net's rule: kept only
where it raises cross-validation Dice and lowers no class) and writes it into every fold's
postprocessing.json, where evaluate and predict then apply it.
"""

from __future__ import annotations

import argparse
import os

from jaxseg import cli
from jaxseg.errors import JaxsegError


def evaluate_run(
    workdir: str | os.PathLike,
    *,
    split: str | None = None,
    which: str = "auto",
    data_root: str | None = None,
    tta: bool = True,
    progress: bool = False,
) -> dict:
    """Evaluates a trained run on one of its splits; writes and returns the summary.

    tta: mirroring test-time augmentation as `eval.tta` configures it (on by default);
    False turns it off. The report goes to `workdir/eval_<split>/`
    (`jaxseg.evaluation.write_report`); the summary records whether TTA was used.
    """
    from jaxseg import evaluation, inference
    from jaxseg.data.preprocess import Preprocessing
    from jaxseg.workdir import load_postprocessing

    run, spec, split, wanted = _run_split(workdir, split, which, data_root)
    config, info = run.config, run.info
    cases = _cases(spec, wanted)
    axes = inference.tta_axes(config, info.dims) if tta else ()
    postprocessing = load_postprocessing(run.workdir)
    rows, timing = evaluation.evaluate_cases(
        cases,
        inference.window_predictor(run.model, run.params, axes),
        window=inference.window_options(config, info.num_classes),
        labels=info.labels,
        preprocessing=Preprocessing.from_config(config.data, info.modalities),
        postprocessing=postprocessing,
        progress=progress,
        total=len(wanted),
    )
    out_dir = run.workdir / f"eval_{split}"
    summary = {
        **evaluation.summarize(rows, info.labels),
        "split": split,
        "inference": timing,
        "tta_mirror_axes": list(axes),
        "postprocessing": postprocessing,
        "report_dir": str(out_dir),
    }
    evaluation.write_report(rows, summary, out_dir)
    return summary


def cross_validate_runs(
    workdirs: list[str | os.PathLike],
    *,
    which: str = "auto",
    data_root: str | None = None,
    tta: bool = True,
    progress: bool = False,
) -> dict:
    """Cross-validation over the fold runs of one plan (see the module docstring); writes
    `workdirs[0]/crossval/` and every fold's postprocessing decision; returns the summary."""
    from jaxseg import evaluation, inference, postprocess
    from jaxseg.data.preprocess import Preprocessing
    from jaxseg.workdir import POSTPROCESSING_FILE

    if len(workdirs) < 2:
        raise JaxsegError("cross-validation needs the workdirs of at least two folds")
    folds, runs, seen = [], [], {}
    for workdir in workdirs:
        run, spec, _, wanted = _run_split(workdir, "val", which, data_root)
        fold = run.config.data.get("fold")
        if fold is None:
            raise JaxsegError(
                f"{run.workdir} was trained on the 7:1:2 split, not a fold; train the "
                "folds with --config.data.fold=0..num_folds-1"
            )
        if fold in seen:
            raise JaxsegError(f"{run.workdir} and {seen[fold]} are both fold {fold}")
        seen[fold] = run.workdir
        if runs and run.info.labels != runs[0].info.labels:
            raise JaxsegError(f"{run.workdir}: its classes differ from {runs[0].workdir}'s")
        config, info = run.config, run.info
        axes = inference.tta_axes(config, info.dims) if tta else ()
        folds.append(
            dict(
                cases=_cases(spec, wanted),
                predictor=inference.window_predictor(run.model, run.params, axes),
                window=inference.window_options(config, info.num_classes),
                preprocessing=Preprocessing.from_config(config.data, info.modalities),
                total=len(wanted),
            )
        )
        runs.append(run)
    labels = runs[0].info.labels
    rows, timing, decision = evaluation.cross_validate(folds, labels=labels, progress=progress)
    out_dir = runs[0].workdir / "crossval"
    summary = {
        **evaluation.summarize(rows, labels),
        "folds": {str(k): str(w) for k, w in sorted(seen.items())},
        "inference": timing,
        "postprocessing": decision,
        "report_dir": str(out_dir),
    }
    evaluation.write_report(rows, summary, out_dir)
    for run in runs:
        postprocess.save_decision(decision, run.workdir / POSTPROCESSING_FILE)
    return summary


def _run_split(workdir, split, which, data_root):
    """(trained run, dataset, split name, case ids) for one split of a run."""
    from jaxseg.data import dataset as dataset_lib
    from jaxseg.workdir import load_splits, load_trained

    run = load_trained(workdir, which)
    split = split or run.config.eval.split
    spec = dataset_lib.load_dataset(data_root or run.config.data.root)
    wanted = load_splits(run.workdir)[split]
    by_id = {c.case_id for c in spec.training}
    missing = [c for c in wanted if c not in by_id]
    if missing:
        raise JaxsegError(
            f"{len(missing)} {split} cases of {run.workdir} are not in "
            f"{spec.root}/dataset.json (first: {missing[0]}); pass the "
            "dataset the run was trained on with --data-root"
        )
    if not wanted:
        raise JaxsegError(
            f"the {split} split of {run.workdir} is empty ({len(spec.training)} training "
            f"cases in {spec.root}); evaluate another split with --split"
        )
    return run, spec, split, wanted


def _cases(spec, wanted: list[str]):
    from jaxseg.data import pipeline

    by_id = {c.case_id: c for c in spec.training}
    return pipeline.eval_cases(spec, [by_id[c] for c in wanted])


def main(argv) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m jaxseg.evaluate",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--workdir",
        required=True,
        help="a run, or the comma-separated fold runs of one plan (cross-validation)",
    )
    parser.add_argument(
        "--split",
        default=None,
        choices=("train", "val", "test"),
        help="default: the config's eval.split",
    )
    parser.add_argument("--checkpoint", default="auto", choices=("auto", "best", "latest"))
    parser.add_argument(
        "--no-tta",
        action="store_true",
        help="no mirroring test-time augmentation (eval.tta; it costs 2^dims forward passes)",
    )
    parser.add_argument(
        "--data-root", default=None, help="dataset folder, if it moved since training"
    )
    args = parser.parse_args(argv)

    from jaxseg import evaluation

    workdirs = [w for w in args.workdir.split(",") if w]
    options = dict(which=args.checkpoint, data_root=args.data_root, tta=not args.no_tta)
    if len(workdirs) > 1:
        summary = cross_validate_runs(workdirs, progress=True, **options)
        what = f"cross-validation cases ({len(summary['folds'])} folds)"
        decision = summary["postprocessing"]
        kept = (["all foreground"] if decision["foreground"] else []) + [
            f"class {k}" for k in decision["classes"]
        ]
        print(
            f"postprocessing (largest component): {', '.join(kept) or 'none'}; mean Dice "
            f"{decision['mean_dice_before']:.4f} -> {decision['mean_dice_after']:.4f} "
            "(the table is before it)"
        )
    else:
        summary = evaluate_run(workdirs[0], split=args.split, progress=True, **options)
        what = f"{summary['split']} cases"
    print(evaluation.format_table(summary))
    speed = summary["inference"]
    print(f"mean foreground Dice: {summary['mean']['dice']:.4f} over {summary['num_cases']} {what}")
    print(
        f"inference: {speed['cases_per_second']:.2f} cases/s "
        f"({speed['median_seconds_per_case'] * 1000:.1f} ms median per case)"
    )
    print(f"report: {summary['report_dir']}")
    return 0


if __name__ == "__main__":
    cli.run(main)
