"""Evaluate a trained run: python -m jaxseg.evaluate --workdir DIR [--split test]

Writes DIR/eval_<split>/metrics.csv and summary.json and prints a table.
"""

from __future__ import annotations

import argparse

from jaxseg import cli


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

    summary = evaluation.evaluate_run(
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
