"""The few-labels learning curve: random init against SimMIM pretraining with full, LoRA
and decoder-only fine-tuning, at several fractions of the labelled training cases.

    .venv/bin/python tools/learning_curve.py --config configs/lightseg_3d.py --data DIR \
        --workroot /tmp/lc [--fractions 0.1,0.25,1] [--steps 300] [--pretrain-steps 300] \
        [--set model.args.drop_path=0.0 ...] [--json OUT.json] [--render A.json B.json]

For one (config, dataset): one SimMIM pretraining run (`jaxseg.training.pretrain`, on every
image of the dataset less the 7:1:2 test split, no labels), then for each fraction of the
training split's patients (`data.train_fraction`; val and test unchanged) four runs with
the same budget (`--steps`, same schedule and batch):
- random: full training from a random initialisation;
- simmim + full: `train.init_from` the pretraining run, every parameter trains;
- simmim + lora r8: `finetune.method=lora`, rank 8 (the decoder, absent from the source,
  trains fully: `finetune.train_fresh`);
- simmim + decoder: `finetune.method=decoder_only`.
Each is evaluated on the test split as `python -m jaxseg.evaluate` does (mirroring TTA off,
so rows differ only in training). The row gives the test Dice (mean over foreground
classes), the trainable parameters (count and share), the optimiser-state memory
(`finetune.summary`, from the shapes) and the median seconds per train step (10 timed
steps after 3 untimed, on a fresh state, `block_until_ready`; measured once per method, as
the fraction does not change the step), all from this run of the tool on one machine. `--render` turns saved JSON files into one markdown table.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

METHODS = (
    ("random", {}),
    ("simmim + full", {"finetune.method": "full"}),
    ("simmim + lora r8", {"finetune.method": "lora", "finetune.rank": 8}),
    ("simmim + decoder", {"finetune.method": "decoder_only"}),
)


def _config(path: str, overrides: list[str]):
    from jaxseg.config import load_config

    return load_config(path, overrides)


def step_seconds(config, *, repeats: int = 10, warmup: int = 3) -> tuple[float, dict]:
    """(median seconds per train step, `finetune.summary` facts) of the run `config`
    describes, on a fresh state and one real batch."""
    import jax

    from jaxseg.training import finetune
    from jaxseg.training import mesh as mesh_lib
    from jaxseg.training.setup import build_training, training_data

    spec, splits = training_data(config)
    setup = build_training(config, spec, splits)
    facts = finetune.summary(setup.abstract_state.params, setup.trainable, config.train)
    batches = setup.train_batches()
    try:
        batch = mesh_lib.global_batch(next(batches), setup.mesh)
    finally:
        batches.close()
    state = setup.init_state(jax.random.key(0))
    key = jax.random.key(1)
    times = []
    for i in range(warmup + repeats):
        start = time.perf_counter()
        state, metrics = setup.train_step(state, batch, key)
        jax.block_until_ready(metrics)
        if i >= warmup:
            times.append(time.perf_counter() - start)
    return statistics.median(times), facts


def run_curve(args) -> dict:
    from jaxseg.evaluate import evaluate_run
    from jaxseg.training.loop import train
    from jaxseg.training.pretrain import pretrain

    root = Path(args.workroot)
    base = [f"data.root={args.data}", *args.set]
    pre = root / "pretrain"
    pretrain(_config(args.config, [*base, f"train.steps={args.pretrain_steps}"]), pre)
    rows, timed = [], {}
    for fraction in args.fractions:
        for name, settings in METHODS:
            overrides = [*base, f"train.steps={args.steps}", f"data.train_fraction={fraction}"]
            if name != "random":
                overrides.append(f"train.init_from={pre}")
            overrides += [f"{k}={v}" for k, v in settings.items()]
            config = _config(args.config, overrides)
            workdir = root / f"f{fraction}_{name.replace(' ', '').replace('+', '_')}"
            train(config, workdir)
            summary = evaluate_run(workdir, split="test", tta=False)
            if name not in timed:  # the step's cost does not depend on the fraction
                timed[name] = step_seconds(config)
            seconds, facts = timed[name]
            cases = len(json.loads((workdir / "splits.json").read_text())["train"])
            rows.append(
                {
                    "fraction": fraction,
                    "train_cases": cases,
                    "method": name,
                    "dice": summary["mean"]["dice"],
                    "test_cases": summary["num_cases"],
                    "seconds_per_step": seconds,
                    "trainable": facts["trainable"],
                    "total": facts["total"],
                    "trainable_share": facts["fraction"],
                    "opt_state_bytes": facts["opt_state_bytes"],
                }
            )
            print(json.dumps(rows[-1]), flush=True)
    return {
        "data": Path(args.data).name,
        "config": args.config,
        "steps": args.steps,
        "pretrain_steps": args.pretrain_steps,
        "overrides": args.set,
        "rows": rows,
    }


def render(results: list[dict]) -> str:
    lines = [
        "| data | labelled (cases) | init + fine-tuning | test Dice | Δ vs random | trainable "
        "| optimiser state | s / step |",
        "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in results:
        for row in r["rows"]:
            base = next(
                x["dice"]
                for x in r["rows"]
                if x["fraction"] == row["fraction"] and x["method"] == "random"
            )
            lines.append(
                f"| {r['data']} | {100 * row['fraction']:.0f}% ({row['train_cases']}) "
                f"| {row['method']} | {row['dice']:.4f} | {row['dice'] - base:+.4f} "
                f"| {row['trainable']:,} ({100 * row['trainable_share']:.2f}%) "
                f"| {row['opt_state_bytes'] / 2**20:.2f} MiB | {row['seconds_per_step']:.3f} |"
            )
    budgets = "; ".join(
        f"{r['data']}: {r['config']}, {r['steps']} steps per run, {r['pretrain_steps']} "
        f"pretraining steps{', ' + ' '.join(r['overrides']) if r['overrides'] else ''}"
        for r in results
    )
    return "\n".join(lines) + f"\n\nBudgets: {budgets}.\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--config")
    p.add_argument("--data", help="the dataset folder (dataset.json)")
    p.add_argument("--workroot", help="where the runs go (one folder per row)")
    p.add_argument("--fractions", default="0.1,0.25,1")
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--pretrain-steps", type=int, default=300)
    p.add_argument("--set", action="append", default=[], help="a config override a.b=v")
    p.add_argument("--json", default=None, help="write the results here")
    p.add_argument("--render", nargs="*", default=None, help="JSON files -> one markdown table")
    args = p.parse_args(argv)
    if args.render is not None:
        print(render([json.loads(Path(f).read_text()) for f in args.render]), end="")
        return 0
    args.fractions = [float(f) for f in args.fractions.split(",")]
    result = run_curve(args)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
    print(render([result]), end="")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
