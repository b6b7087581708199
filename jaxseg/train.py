"""Train a model: python -m jaxseg.train --config configs/NAME.py --workdir DIR [--config.a.b=v]

Rerunning the same command resumes from the last checkpoint in DIR.
"""

from __future__ import annotations

import argparse
import json

from jaxseg import cli
from jaxseg.config import load_config, split_overrides


def main(argv) -> int:
    overrides, rest = split_overrides(argv)
    parser = argparse.ArgumentParser(
        prog="python -m jaxseg.train",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--config", required=True, help="config file with get_config()")
    parser.add_argument("--workdir", required=True, help="checkpoints, logs and reports")
    parser.add_argument(
        "--coordinator",
        default=None,
        help="host:port of process 0 in a multi-process run (not on TPU pods)",
    )
    parser.add_argument("--num-processes", type=int, default=None)
    parser.add_argument("--process-id", type=int, default=None)
    args = parser.parse_args(rest)
    config = load_config(args.config, overrides)

    # Importing JAX after parsing keeps --help fast; joining the run precedes device use.
    from jaxseg.training import distributed

    distributed.initialize(args.coordinator, args.num_processes, args.process_id)
    from jaxseg.training.loop import train

    result = train(config, args.workdir)
    import jax

    if jax.process_index() == 0:
        print(json.dumps({"workdir": args.workdir, **result}))
    return 0


if __name__ == "__main__":
    cli.run(main)
