"""Export a trained run: python -m jaxseg.export --workdir DIR --output DIR/saved_model

Writes a TensorFlow SavedModel whose `serving_default` takes normalised float32 patches
[b, *patch, C] (any b) and returns class probabilities [b, *patch, K].
"""

from __future__ import annotations

import argparse

from jaxseg import cli


def main(argv) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m jaxseg.export",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--workdir", required=True, help="a trained run")
    parser.add_argument("--output", required=True, help="SavedModel folder to write")
    parser.add_argument(
        "--platforms", default="cpu", help="comma-separated: cpu, tpu (one signature per platform)"
    )
    parser.add_argument("--checkpoint", default="auto", choices=("auto", "best", "latest"))
    args = parser.parse_args(argv)

    from jaxseg.export.from_workdir import export_run

    path = export_run(
        args.workdir, args.output, platforms=tuple(args.platforms.split(",")), which=args.checkpoint
    )
    print(path)
    return 0


if __name__ == "__main__":
    cli.run(main)
