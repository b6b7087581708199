"""Test-time augmentation: what each setting buys and costs, as a markdown table.

    .venv/bin/python tools/tta_table.py --workdir runs/isbi --workdir runs/brats \
        [--split test] [--max-cases N] [--out docs/_tta.md]

For each trained run and split (the run's `eval.split` by default), the cases are
evaluated three times, exactly as `python -m jaxseg.evaluate` does (the run's
preprocessing, sliding windows, temperature, postprocessing decision and chain), under:
no TTA, mirroring every spatial axis (`eval.tta`, the default), and mirroring plus 90°
rotations in the plane of axes 0,1 (`eval.tta_rot90`, `--tta-rot90`). The table gives the
mean foreground Dice and HD95 (mm), the forward passes per window, and the median seconds
of inference per case (the first case, which compiles, excluded) with its ratio to the
mirrored default, all from the same run of this tool on the same machine.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

SETTINGS = (("none", False, False), ("mirror", True, False), ("mirror + rot90", True, True))


def measure(workdir: str, *, split: str | None, max_cases: int | None) -> dict:
    """`{"run", "split", "num_cases", "rows": [{setting, passes, dice, hd95, seconds}]}`."""
    from jaxseg import evaluation, inference
    from jaxseg.data.preprocess import Preprocessing
    from jaxseg.evaluate import _cases, _run_split
    from jaxseg.workdir import load_postprocess_chain, load_postprocessing, load_temperature

    run, spec, split, wanted = _run_split(workdir, split, "auto", None)
    wanted = wanted[: max_cases or None]
    config, info = run.config, run.info
    rows = []
    for setting, mirror, rot90 in SETTINGS:
        tta = inference.TTA(tuple(range(info.dims)) if mirror else (), (0, 1) if rot90 else None)
        tta.check_window(config.data.patch_size)
        metric_rows, timing = evaluation.evaluate_cases(
            _cases(spec, wanted),
            inference.window_predictor(run.model, run.params, tta, load_temperature(run)),
            window=inference.window_options(config, info.num_classes),
            labels=info.labels,
            preprocessing=Preprocessing.from_config(config.data, info.modalities),
            postprocessing=load_postprocessing(run.workdir),
            chain=load_postprocess_chain(run.workdir, config, info),
            nsd_tolerance_mm=evaluation.nsd_tolerance(config),
        )
        mean = evaluation.summarize(metric_rows, info.labels)["mean"]
        rows.append(
            {
                "setting": setting,
                "passes": len(tta.transforms()),
                "dice": mean["dice"],
                "hd95": mean["hd95"],
                "seconds": timing["median_seconds_per_case"],
            }
        )
    data = Path(str(config.data.root)).name
    return {
        "data": data,
        "model": config.model.name,
        "split": split,
        "num_cases": len(wanted),
        "rows": rows,
    }


def render(results: list[dict]) -> str:
    lines = [
        "| data | model | split (cases) | TTA | passes | mean Dice | HD95 mm | s / case "
        "| time vs mirror |",
        "| --- | --- | --- | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in results:
        base = next(row["seconds"] for row in r["rows"] if row["setting"] == "mirror")
        for row in r["rows"]:
            lines.append(
                f"| {r['data']} | {r['model']} | {r['split']} ({r['num_cases']}) | {row['setting']} "
                f"| {row['passes']} | {row['dice']:.4f} | {row['hd95']:.2f} "
                f"| {row['seconds']:.3f} | {row['seconds'] / base:.2f}x |"
            )
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--workdir", action="append", required=True, help="a trained run (repeatable)")
    p.add_argument("--split", default=None, choices=("train", "val", "test"))
    p.add_argument("--max-cases", type=int, default=None)
    p.add_argument("--out", default=None, help="write the markdown here (default: stdout)")
    args = p.parse_args(argv)
    results = [measure(w, split=args.split, max_cases=args.max_cases) for w in args.workdir]
    text = render(results)
    if args.out:
        Path(args.out).write_text(text)
    print(text, end="")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
