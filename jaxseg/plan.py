"""Plan a dataset: python -m jaxseg.plan --data DIR --out plans/NAME [--dims 2|3] [--model NAME]

Writes plans/NAME/fingerprint.json (what the data is), plan.json (each choice and why)
and config.py (an ordinary config file), then:

    python -m jaxseg.train --config plans/NAME/config.py --workdir runs/NAME

The rules are in docs/planning.md. An existing non-empty --out is kept unless --force.
"""

from __future__ import annotations

import argparse
import json

from jaxseg import cli


def _summary(plan: dict, config_path) -> str:
    mem, tr = plan["memory"], plan["training"]
    norm = ", ".join(f"{c['name']}: {c['scheme']}" for c in plan["normalization"])
    lines = [
        f"{plan['dataset']}: {plan['dims']}D {plan['model']}",
        f"  spacing   {plan['target_spacing']} mm",
        f"  patch     {plan['patch_size']}  batch {plan['batch_size']}  "
        f"stages {plan['stages']} (stride {plan['total_stride']})",
        f"  norm      {norm}; crop_nonzero={plan['crop_nonzero']}",
        f"  memory    {mem['train_step_gib']:.2f} of {mem['budget_gib']:.2f} GiB "
        f"({len(mem['measurements'])} compiled measurements)",
        f"  steps     {tr['steps']}"
        + (f" (~{tr['eta_hours']} h here)" if "eta_hours" in tr else ""),
        f"  config    {config_path}",
    ]
    if plan.get("preferred_slice_axis") is not None:
        lines.insert(1, f"  dims      {plan['dims_reason']}")
    return "\n".join(lines)


def main(argv) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m jaxseg.plan",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--data", required=True, help="dataset folder holding dataset.json")
    parser.add_argument("--out", required=True, help="folder for fingerprint, plan and config")
    parser.add_argument(
        "--dims",
        type=int,
        choices=(2, 3),
        default=None,
        help="the data's own dims (2D training on slices of 3D volumes is not supported yet)",
    )
    parser.add_argument("--model", default=None, help="registered model (default lightseg_small)")
    parser.add_argument(
        "--memory-budget-gib",
        type=float,
        default=None,
        help="bytes one device may use for a train step (default per platform)",
    )
    parser.add_argument(
        "--platform",
        default=None,
        choices=("cpu", "gpu", "tpu"),
        help="platform whose default budget to use (default: this machine's)",
    )
    parser.add_argument("--steps", type=int, default=None, help="optimiser steps to train")
    parser.add_argument(
        "--max-cases",
        type=int,
        default=None,
        help="cases read for the fingerprint (default 100, sampled by --seed)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--no-timing", action="store_true", help="skip running the planned step once to time it"
    )
    parser.add_argument("--force", action="store_true", help="overwrite a non-empty --out")
    parser.add_argument("--json", action="store_true", help="print the plan as JSON")
    args = parser.parse_args(argv)

    from jaxseg.data import outputs

    # Before the fingerprint's minutes; never into the dataset, even with --force.
    outputs.check_not_dataset(args.out, args.data, what="--out")
    outputs.check_output_dir(args.out, what="--out")

    # Imported after parsing so that --help answers without loading JAX.
    from jaxseg import planning
    from jaxseg.training.memory import measure_train_step

    _, plan, config_path = planning.plan_dataset(
        args.data,
        args.out,
        model=args.model or planning.DEFAULT_MODEL,
        dims=args.dims,
        memory_budget_gib=args.memory_budget_gib,
        platform=args.platform,
        steps=args.steps,
        max_cases=planning.DEFAULT_MAX_CASES if args.max_cases is None else args.max_cases,
        seed=args.seed,
        time_step=not args.no_timing,
        force=args.force,
        measure=measure_train_step,
    )
    print(json.dumps(plan, indent=1) if args.json else _summary(plan, config_path))
    return 0


if __name__ == "__main__":
    cli.run(main)
