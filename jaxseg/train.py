"""Train a model: python -m jaxseg.train --config configs/NAME.py --workdir DIR [--config.a.b=v]

Rerunning the same command resumes from the last checkpoint in DIR. On SIGTERM (a TPU VM's
or GKE node's preemption notice) every process saves a checkpoint at the same step, prints
where, and exits 0; rerunning resumes from that step with the same data order.

With --data DATASET instead of --config, the dataset is planned first (python -m
jaxseg.plan: fingerprint, spacing, normalisation, patch, batch, stages) into DIR/plan/,
and the run trains from DIR/plan/config.py; a rerun reuses that plan and resumes.
"""

from __future__ import annotations

import argparse
import json

from jaxseg import cli
from jaxseg.config import load_config, split_overrides
from jaxseg.errors import ConfigError


def main(argv) -> int:
    overrides, rest = split_overrides(argv)
    parser = argparse.ArgumentParser(
        prog="python -m jaxseg.train",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--config", help="config file with get_config()")
    source.add_argument(
        "--data", help="a dataset folder (dataset.json) to plan on the fly instead of --config"
    )
    parser.add_argument("--workdir", required=True, help="checkpoints, logs and reports")
    parser.add_argument(
        "--coordinator",
        default=None,
        help="host:port of process 0 in a multi-process run (not on TPU pods)",
    )
    parser.add_argument("--num-processes", type=int, default=None)
    parser.add_argument("--process-id", type=int, default=None)
    args = parser.parse_args(rest)
    if args.data is not None and (args.num_processes or 1) > 1:
        raise ConfigError(
            "--data plans on this process's devices; for a multi-process run plan first "
            "(python -m jaxseg.plan --data DIR --out PLAN) and pass --config PLAN/config.py"
        )
    from jaxseg.data import outputs

    # Before planning or training: the workdir is writable and is not the dataset.
    outputs.check_output_dir(args.workdir, what="--workdir")
    if args.data is not None:
        outputs.check_not_dataset(args.workdir, args.data, what="--workdir")
    config_path = args.config or _planned_config(args.data, args.workdir)
    config = load_config(config_path, overrides)
    outputs.check_not_dataset(args.workdir, config.data.root, what="--workdir")

    # Importing JAX after parsing keeps --help fast; joining the run precedes device use.
    from jaxseg.training import distributed

    distributed.initialize(args.coordinator, args.num_processes, args.process_id)
    from jaxseg.data import io
    from jaxseg.training.loop import train

    with io.limit_image_bytes(config.data.get("max_image_bytes", io.DEFAULT_MAX_IMAGE_BYTES)):
        result = train(config, args.workdir)
    import jax

    if jax.process_index() == 0:
        print(json.dumps({"workdir": args.workdir, **result}))
    return 0


def _planned_config(data: str, workdir: str) -> str:
    """WORKDIR/plan/config.py, planned now unless an earlier run of this command wrote it
    (a resumed run keeps its first plan)."""
    from pathlib import Path

    from jaxseg.planning import plan_dataset
    from jaxseg.training.memory import measure_train_step

    plan_dir = Path(workdir) / "plan"
    config_path = plan_dir / "config.py"
    if not config_path.is_file():
        # force: an interrupted plan may have left fingerprint.json; config.py comes last.
        _, _, config_path = plan_dataset(data, plan_dir, force=True, measure=measure_train_step)
    return str(config_path)


if __name__ == "__main__":
    cli.run(main)
