"""What every command-line face shares: error reporting and JAX start-up."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence

from jaxseg.errors import JaxsegError

# TensorFlow (export) and absl (orbax) log at INFO/WARNING by default; a user reading a
# command's output wants its results and real errors only.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def run(main: Callable[[Sequence[str]], int | None], argv: Sequence[str] | None = None) -> None:
    """Runs `main(argv)`; a `JaxsegError` (bad user input) prints one line and exits 2."""
    argv = sys.argv[1:] if argv is None else list(argv)
    from absl import logging as absl_logging

    absl_logging.set_verbosity(absl_logging.ERROR)
    try:
        code = main(argv)
    except JaxsegError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted; rerun the same command to resume", file=sys.stderr)
        sys.exit(130)
    sys.exit(code or 0)


def add_tta_rot90(parser: argparse.ArgumentParser) -> None:
    """`--tta-rot90`: add in-plane 90° rotations to the test-time augmentation."""
    parser.add_argument(
        "--tta-rot90",
        action="store_const",
        const=True,
        default=None,
        help="add 90° rotations in the plane of axes 0,1 to the TTA (eval.tta_rot90; twice "
        "the passes with mirroring, four times without; needs a square in-plane patch)",
    )


def add_max_image_bytes(parser: argparse.ArgumentParser) -> None:
    """`--max-image-bytes N`: the largest image a command reads (`io.read_image`)."""
    parser.add_argument(
        "--max-image-bytes",
        type=int,
        default=None,
        help="refuse an image whose header claims more bytes (shape x dtype); default: the "
        "run's data.max_image_bytes (4 GiB)",
    )
