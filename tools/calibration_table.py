"""Render `python -m jaxseg.calibrate` results as a markdown table: one row per run.

Each argument is `LABEL=WORKDIR` (its `calibration.json` is read):

    .venv/bin/python tools/calibration_table.py "phantoms 2D=runs/demo" "ISBI EM=runs/isbi"

Columns: the fitted temperature, NLL on the sampled validation voxels and ECE over all
voxels and over the foreground (truth or prediction foreground), before -> after, and the
ratio ECE after / before. The calibration table in docs/postprocessing.md is this output.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def render(runs: list[tuple[str, dict]]) -> str:
    lines = [
        "| run | val cases | T | NLL (sampled) | ECE (all voxels) | ECE (foreground) "
        "| ECE after / before (all, foreground) |",
        "|---|---|---|---|---|---|---|",
    ]
    for label, c in runs:

        def ratio(k, c=c):
            return c[f"{k}_after"] / c[f"{k}_before"] if c[f"{k}_before"] else float("nan")

        def pair(k, c=c):
            return f"{c[f'{k}_before']:.4f} -> {c[f'{k}_after']:.4f}"

        lines.append(
            f"| {label} | {c['num_cases']} | {c['temperature']:.3f} | {pair('nll_sampled')} "
            f"| {pair('ece')} | {pair('ece_foreground')} "
            f"| {ratio('ece'):.2f}, {ratio('ece_foreground'):.2f} |"
        )
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("runs", nargs="+", metavar="LABEL=WORKDIR")
    args = p.parse_args(argv)
    runs = []
    for item in args.runs:
        label, sep, path = item.partition("=")
        if not sep:
            raise SystemExit(f"error: {item!r}: give LABEL=WORKDIR")
        file = Path(path) / "calibration.json"
        if not file.is_file():
            raise SystemExit(f"error: {file}: missing; run python -m jaxseg.calibrate first")
        runs.append((label, json.loads(file.read_text())))
    print(render(runs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
