"""Evaluate a trained run: python -m jaxseg.evaluate --workdir DIR [--split test]

Writes DIR/eval_<split>/metrics.csv and summary.json and prints a table.
"""

from __future__ import annotations

import argparse
import os

from jaxseg import cli


def evaluate_run(
    workdir: str | os.PathLike,
    *,
    split: str | None = None,
    which: str = "auto",
    data_root: str | None = None,
) -> dict:
    """Evaluates a trained run on one of its splits; writes and returns the summary.

    The report goes to `workdir/eval_<split>/` (`jaxseg.evaluation.write_report`).
    """
    # Imported here, not at the top, so that `--help` answers without loading JAX.
    from jaxseg import evaluation, inference
    from jaxseg.data import dataset as dataset_lib
    from jaxseg.data import pipeline
    from jaxseg.errors import JaxsegError
    from jaxseg.workdir import load_splits, load_trained

    run = load_trained(workdir, which)
    config, info = run.config, run.info
    split = split or config.eval.split
    spec = dataset_lib.load_dataset(data_root or config.data.root)
    wanted = load_splits(run.workdir)[split]
    by_id = {c.case_id: c for c in spec.training}
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
    cases = pipeline.eval_cases(
        spec, [by_id[c] for c in wanted], ct_window=tuple(config.data.ct_window)
    )
    rows, timing = evaluation.evaluate_cases(
        cases,
        inference.window_predictor(run.model, run.params),
        window=inference.window_options(config, info.num_classes),
        labels=info.labels,
    )
    out_dir = run.workdir / f"eval_{split}"
    summary = {
        **evaluation.summarize(rows, info.labels),
        "split": split,
        "inference": timing,
        "report_dir": str(out_dir),
    }
    evaluation.write_report(rows, summary, out_dir)
    return summary


def main(argv) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m jaxseg.evaluate",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--workdir", required=True)
    parser.add_argument(
        "--split",
        default=None,
        choices=("train", "val", "test"),
        help="default: the config's eval.split",
    )
    parser.add_argument("--checkpoint", default="auto", choices=("auto", "best", "latest"))
    parser.add_argument(
        "--data-root", default=None, help="dataset folder, if it moved since training"
    )
    args = parser.parse_args(argv)

    from jaxseg import evaluation

    summary = evaluate_run(
        args.workdir, split=args.split, which=args.checkpoint, data_root=args.data_root
    )
    print(evaluation.format_table(summary))
    speed = summary["inference"]
    print(
        f"mean foreground Dice: {summary['mean']['dice']:.4f} over "
        f"{summary['num_cases']} {summary['split']} cases"
    )
    print(
        f"inference: {speed['cases_per_second']:.2f} cases/s "
        f"({speed['median_seconds_per_case'] * 1000:.1f} ms median per case)"
    )
    print(f"report: {summary['report_dir']}")
    return 0


if __name__ == "__main__":
    cli.run(main)
