"""Evaluate a trained run: python -m jaxseg.evaluate --workdir DIR [--split test]

Writes DIR/eval_<split>/metrics.csv, summary.json (with the expected calibration error and
reliability-diagram data at the run's calibrated temperature) and reliability.png, and
prints a table. The run's
postprocessing decision (DIR/postprocessing.json), when there is one, is applied, then the
run's postprocessing chain (DIR/postprocess_chain.json, else the config's eval.postprocess;
docs/postprocessing.md); summary.json records both. A model with a classification head
also gets its case classification scored (AUC, accuracy, sensitivity, specificity:
summary.json's `classification`, docs/evaluation.md).

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

RELIABILITY_PNG = "reliability.png"  # the split's reliability diagram, in the report folder


def evaluate_run(
    workdir: str | os.PathLike,
    *,
    split: str | None = None,
    which: str = "auto",
    data_root: str | None = None,
    tta: bool = True,
    tta_rot90: bool | None = None,
    progress: bool = False,
    max_image_bytes: int | None = None,
) -> dict:
    """Evaluates a trained run on one of its splits; writes and returns the summary.

    tta: mirroring test-time augmentation as `eval.tta` configures it (on by default);
    False turns it off; tta_rot90 adds 90° rotations (None: the run's `eval.tta_rot90`). The report goes to `workdir/eval_<split>/`
    (`jaxseg.evaluation.write_report`), checked before any inference; the summary records
    whether TTA was used. max_image_bytes: the largest image read (None: the run's
    `data.max_image_bytes`).
    """
    from jaxseg import calibration, evaluation, inference
    from jaxseg.data import io, outputs
    from jaxseg.data.preprocess import Preprocessing
    from jaxseg.workdir import load_postprocess_chain, load_postprocessing, load_temperature

    run, spec, split, wanted = _run_split(workdir, split, which, data_root)
    out_dir = run.workdir / f"eval_{split}"
    outputs.check_output_dir(out_dir, what="report folder")  # before the inference's minutes
    config, info = run.config, run.info
    cases = _cases(spec, wanted)
    augmentation = inference.tta_from_config(config, info.dims, enabled=tta, rot90=tta_rot90)
    postprocessing = load_postprocessing(run.workdir)
    chain = load_postprocess_chain(run.workdir, config, info)
    temperature = load_temperature(run)  # 1 unless jaxseg.calibrate fitted one
    reliability = calibration.Reliability.empty()
    preprocessing = Preprocessing.from_config(config.data, info.modalities)
    window = inference.window_options(config, info.num_classes)
    classifier = _case_classifier(run, spec, window, preprocessing)
    if classifier is not None:
        cases = classifier.wrap(cases)
    with io.limit_image_bytes(_max_image_bytes(max_image_bytes, config)):
        rows, timing = evaluation.evaluate_cases(
            cases,
            inference.window_predictor(
                run.model, run.params, augmentation, temperature=temperature
            ),
            window=window,
            labels=info.labels,
            preprocessing=preprocessing,
            postprocessing=postprocessing,
            chain=chain,
            progress=progress,
            total=len(wanted),
            nsd_tolerance_mm=evaluation.nsd_tolerance(config),
            reliability=reliability,
        )
    diagram = reliability.diagram()
    summary = {
        **evaluation.summarize(rows, info.labels),
        "nsd_tolerance_mm": evaluation.nsd_tolerance(config),
        "split": split,
        "inference": timing,
        **augmentation.describe(),
        "postprocessing": postprocessing,
        "postprocess_chain": chain.to_json(),
        # Top-label ECE over every voxel of the split, at the run's temperature.
        "calibration": {"temperature": temperature, "ece": diagram["ece"], "reliability": diagram},
        "report_dir": str(out_dir),
    }
    if classifier is not None:  # the class head's case classification
        summary["classification"] = classifier.summary()
    evaluation.write_report(rows, summary, out_dir)
    calibration.write_reliability_png(
        [(f"{split}, T={temperature:.3g}", diagram)], out_dir / RELIABILITY_PNG
    )
    return summary


def cross_validate_runs(
    workdirs: list[str | os.PathLike],
    *,
    which: str = "auto",
    data_root: str | None = None,
    tta: bool = True,
    tta_rot90: bool | None = None,
    progress: bool = False,
    max_image_bytes: int | None = None,
) -> dict:
    """Cross-validation over the fold runs of one plan (see the module docstring); writes
    `workdirs[0]/crossval/` and every fold's postprocessing decision; returns the summary."""
    from jaxseg import evaluation, inference, postprocess
    from jaxseg.data import io, outputs
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
        augmentation = inference.tta_from_config(config, info.dims, enabled=tta, rot90=tta_rot90)
        folds.append(
            dict(
                cases=_cases(spec, wanted),
                predictor=inference.window_predictor(run.model, run.params, augmentation),
                window=inference.window_options(config, info.num_classes),
                preprocessing=Preprocessing.from_config(config.data, info.modalities),
                total=len(wanted),
            )
        )
        runs.append(run)
    out_dir = runs[0].workdir / "crossval"
    outputs.check_output_dir(out_dir, what="report folder")  # before the inference's minutes
    for run in runs:
        outputs.check_output_file(run.workdir / POSTPROCESSING_FILE, what="decision file")
    labels = runs[0].info.labels
    with io.limit_image_bytes(_max_image_bytes(max_image_bytes, runs[0].config)):
        rows, timing, decision = evaluation.cross_validate(
            folds,
            labels=labels,
            progress=progress,
            nsd_tolerance_mm=evaluation.nsd_tolerance(runs[0].config),
        )
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


def _case_classifier(run, spec, window, preprocessing):
    """An `evaluation.CaseClassifier` when the run's model has a classification head
    (`num_case_classes` > 0), with the run's `loss.class_target`; else None."""
    from jaxseg import evaluation, inference, losses

    heads = getattr(run.model, "num_case_classes", 0)
    if not heads:
        return None
    target = losses.resolve_class_target(run.config.loss, spec.case_classes, run.info.labels)
    losses.check_class_head(target, heads, run.config.model.name)
    return evaluation.CaseClassifier(
        inference.class_window_predictor(run.model, run.params),
        target,
        window,
        preprocessing,
        {c.case_id: c.case_class for c in spec.training},
    )


def _max_image_bytes(flag: int | None, config) -> int:
    from jaxseg.data import io

    return flag or config.data.get("max_image_bytes", io.DEFAULT_MAX_IMAGE_BYTES)


def _run_split(workdir, split, which, data_root):
    """(trained run, dataset, split name, case ids) for one split of a run."""
    from jaxseg.data import dataset as dataset_lib
    from jaxseg.data.splits import split_requirement
    from jaxseg.workdir import SPLITS_FILE, load_splits, load_trained

    run = load_trained(workdir, which)
    split = split or run.config.eval.split
    spec = dataset_lib.load_dataset(data_root or run.config.data.root)
    recorded = load_splits(run.workdir)
    wanted = recorded.get(split) or []
    if not wanted:
        # An empty split would be scored as "nan over 0 cases": say why and what it needs.
        data = run.config.data
        state = "is empty" if split in recorded else f"is missing from {SPLITS_FILE}"
        raise JaxsegError(
            f"the {split} split of {run.workdir} {state} ({len(spec.training)} training cases "
            f"in {spec.root}); "
            + split_requirement(data.get("fold"), data.get("num_folds", 5))
            + "; retrain with more cases, or evaluate another split with --split"
        )
    by_id = {c.case_id for c in spec.training}
    missing = [c for c in wanted if c not in by_id]
    if missing:
        raise JaxsegError(
            f"{len(missing)} {split} cases of {run.workdir} are not in "
            f"{spec.root}/dataset.json (first: {missing[0]}); pass the "
            "dataset the run was trained on with --data-root"
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
    cli.add_tta_rot90(parser)
    parser.add_argument(
        "--data-root", default=None, help="dataset folder, if it moved since training"
    )
    cli.add_max_image_bytes(parser)
    args = parser.parse_args(argv)

    from jaxseg import evaluation

    workdirs = [w for w in args.workdir.split(",") if w]
    options = dict(
        which=args.checkpoint,
        data_root=args.data_root,
        tta=not args.no_tta,
        tta_rot90=args.tta_rot90,
        max_image_bytes=args.max_image_bytes,
    )
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
    if "calibration" in summary:
        cal = summary["calibration"]
        print(
            f"expected calibration error: {cal['ece']:.4f} (temperature {cal['temperature']:.3g})"
        )
    if "classification" in summary:
        c = summary["classification"]
        print(
            f"case classification ({c['target']}, {c['num_cases']} cases): AUC {c['auc']:.4f}, "
            f"accuracy {c['accuracy']:.4f}, sensitivity {c['sensitivity']:.4f}, "
            f"specificity {c['specificity']:.4f}"
        )
    print(f"report: {summary['report_dir']}")
    return 0


if __name__ == "__main__":
    cli.run(main)
