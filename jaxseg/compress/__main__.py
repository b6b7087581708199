"""Compress a trained run into a new workdir. Prints one JSON line.

    python -m jaxseg.compress prune    --workdir runs/A --out runs/A_pruned --heads 0.5 --channels 0.3
        [--channel-score taylor|l1] [--batches N] [--batch-size B] [--seed S]
        [--finetune-steps N]
    python -m jaxseg.compress quantize --workdir runs/A --out runs/A_int8 [--calibration-cases 16]
        [--weights-only] [--seed S]

prune removes attention heads and MLP hidden channels of a lightseg run (Taylor
importance on training patches), writing a smaller architecture; quantize writes int8
weights with per-channel scales and int8 activation scales calibrated on training patches.
The output is an ordinary workdir: evaluate, predict, export and benchmark read it.

--finetune-steps N trains the pruned model N more steps through the ordinary train loop
(`train.init_from`: the pruned parameters, a fresh optimiser, the run's own data, loss and
learning rate with a warm-up of N/10). The pruned model before fine-tuning stays in
OUT/untuned/, itself a workdir; OUT is the fine-tuned run, resumable like any other.
"""

from __future__ import annotations

import argparse
import json

from jaxseg import cli


def main(argv) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m jaxseg.compress",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True)
    prune = sub.add_parser("prune", help="structured pruning of heads and MLP channels")
    quant = sub.add_parser("quantize", help="int8 post-training quantisation")
    for p in (prune, quant):
        p.add_argument("--workdir", required=True, help="the trained run")
        p.add_argument("--out", required=True, help="the new workdir (must not exist)")
        p.add_argument("--checkpoint", default="auto", choices=("auto", "best", "latest"))
        p.add_argument("--seed", type=int, default=0, help="patch sampling")
    prune.add_argument("--heads", type=float, default=0.0, help="share of heads removed, [0, 1)")
    prune.add_argument(
        "--channels", type=float, default=0.0, help="share of MLP hidden channels removed, [0, 1)"
    )
    prune.add_argument("--channel-score", default="taylor", choices=("taylor", "l1"))
    prune.add_argument("--batches", type=int, default=8, help="training batches for the scores")
    prune.add_argument("--batch-size", type=int, default=4)
    prune.add_argument(
        "--finetune-steps", type=int, default=0, help="train the pruned model N more steps"
    )
    quant.add_argument(
        "--calibration-cases", type=int, default=16, help="training patches for activation ranges"
    )
    quant.add_argument(
        "--weights-only", action="store_true", help="int8 weights, float activations"
    )
    args = parser.parse_args(argv)

    from jaxseg.errors import ConfigError

    if args.command == "prune":
        if args.finetune_steps < 0:
            raise ConfigError(f"--finetune-steps must be >= 0; got {args.finetune_steps}")
        from jaxseg.compress.common import check_new_workdir
        from jaxseg.compress.prune import prune_workdir

        check_new_workdir(args.out, args.workdir)
        pruned = f"{args.out}/untuned" if args.finetune_steps else args.out
        result = prune_workdir(
            args.workdir,
            pruned,
            heads=args.heads,
            channels=args.channels,
            batches=args.batches,
            batch_size=args.batch_size,
            channel_score=args.channel_score,
            seed=args.seed,
            which=args.checkpoint,
        )
        result.pop("kept")
        if args.finetune_steps:
            result["finetuned"] = _finetune(pruned, args.out, args.finetune_steps)
    else:
        from jaxseg.compress.quantize import quantize_workdir

        result = quantize_workdir(
            args.workdir,
            args.out,
            calibration_cases=args.calibration_cases,
            activations=not args.weights_only,
            seed=args.seed,
            which=args.checkpoint,
        )
    print(json.dumps({"command": args.command, "out": args.out, **result}), flush=True)
    return 0


def _finetune(pruned: str, out: str, steps: int) -> dict:
    """Trains the pruned workdir's model `steps` steps into `out`; the last logged metrics."""
    from jaxseg.training.loop import train
    from jaxseg.workdir import load_run

    config, _ = load_run(pruned)
    with config.unlocked():
        config.train.init_from = pruned
        config.train.steps = steps
        config.train.warmup_steps = max(1, steps // 10)
        for key in ("log_every", "eval_every", "checkpoint_every"):
            config.train[key] = min(config.train[key], steps)
    return {k: v for k, v in train(config, out).items() if isinstance(v, (int, float))}


if __name__ == "__main__":
    cli.run(main)
