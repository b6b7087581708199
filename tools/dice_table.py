"""Render evaluation reports as a markdown table: one row per run, Dice per class, the mean.

Each argument is `LABEL=PATH`, where PATH is a workdir (its `eval_test/summary.json` is read)
or an evaluation folder or `summary.json` written by `python -m jaxseg.evaluate`:

    .venv/bin/python tools/dice_table.py "lightseg_small=runs/cmp/lightseg_small_2d" \
        "SwinUNETR-48=runs/cmp/swinunetr_2d" > runs/dice.md

The tables of Dice in docs/ are pasted from this tool's output, never typed.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def _summary_path(path: Path, split: str) -> Path:
    for candidate in (path, path / "summary.json", path / f"eval_{split}" / "summary.json"):
        if candidate.is_file():
            return candidate
    raise SystemExit(
        f"error: {path}: no summary.json (run python -m jaxseg.evaluate --workdir {path} first)"
    )


def render(runs: list[tuple[str, dict]], title: str) -> str:
    """Markdown rows `| title | class... | mean foreground Dice | mean HD95 (mm) |`."""
    classes = list(runs[0][1]["per_class"])
    for label, summary in runs:
        if list(summary["per_class"]) != classes:
            raise SystemExit(
                f"error: {label}: classes {list(summary['per_class'])} differ from {classes}"
            )
    cases = {s["num_cases"] for _, s in runs}
    head = f"{title}, mean over {'/'.join(str(n) for n in sorted(cases))} cases"
    lines = [
        f"| {head} | " + " | ".join(classes) + " | mean foreground Dice | mean HD95 (mm) |",
        "|---" * (len(classes) + 3) + "|",
    ]
    for label, s in runs:
        dice = [f"{s['per_class'][c]['dice']:.3f}" for c in classes]
        lines.append(
            f"| {label} | "
            + " | ".join(dice)
            + f" | **{s['mean']['dice']:.3f}** | {s['mean']['hd95']:.2f} |"
        )
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("runs", nargs="+", metavar="LABEL=PATH")
    p.add_argument("--split", default="test", help="eval_<split> folder inside a workdir")
    p.add_argument("--title", default="test split")
    args = p.parse_args(argv)
    runs = []
    for item in args.runs:
        label, sep, path = item.partition("=")
        if not sep:
            raise SystemExit(f"error: {item!r}: expected LABEL=PATH")
        runs.append((label, json.loads(_summary_path(Path(path), args.split).read_text())))
    print(render(runs, args.title))
    return 0


if __name__ == "__main__":
    sys.exit(main())
