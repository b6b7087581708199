"""Inspect the model zoo.

    python -m jaxseg.models --list
    python -m jaxseg.models --summary NAME --dims 2|3 [--size S] [--in-channels C]
                            [--num-classes K] [--model-arg key=value ...] [--json]

--summary prints the parameter count and the forward GFLOPs at input [1, S..., C]
(S: 128 in 2D, 96 in 3D), as counted by XLA's cost analysis of the compiled forward pass
(a multiply-add is 2 flops; see docs/benchmarks.md). --model-arg overrides a constructor
argument, read as a Python literal when it is one: feature_size=48, embed_dims=(32,64),
norm=group.
"""

from __future__ import annotations

import argparse
import json

from jaxseg import cli


def _size(text: str):
    parts = [p for p in text.split(",") if p]
    try:
        values = [int(p) for p in parts]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--size {text!r}: give an int or comma-separated ints"
        ) from None
    return values[0] if len(values) == 1 else tuple(values)


def main(argv) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m jaxseg.models",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("--list", action="store_true", help="print the registered model names")
    what.add_argument("--summary", metavar="NAME", help="summarise the model registered as NAME")
    parser.add_argument("--dims", type=int, choices=(2, 3), help="2 or 3 spatial dimensions")
    parser.add_argument(
        "--size",
        type=_size,
        default=None,
        help="voxels per spatial axis (one int, or one per axis: 160,128); "
        "default 128 in 2D, 96 in 3D",
    )
    parser.add_argument("--in-channels", type=int, default=1)
    parser.add_argument("--num-classes", type=int, default=None, help="default 2")
    parser.add_argument(
        "--model-arg",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="constructor override, repeatable",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON line instead")
    args = parser.parse_args(argv)

    from jaxseg import models  # Importing JAX after parsing keeps --help fast.
    from jaxseg.models import summary

    if args.list:
        print("\n".join(models.available_models()))
        return 0
    if args.dims is None:
        parser.error("--summary needs --dims 2 or --dims 3")
    result = summary.summarize_model(
        args.summary,
        args.dims,
        args.size,
        in_channels=args.in_channels,
        num_classes=args.num_classes or summary.DEFAULT_NUM_CLASSES,
        model_args=summary.parse_model_args(args.model_arg),
    )
    if args.json:
        print(json.dumps(result))
        return 0
    shape = "x".join(str(s) for s in result["input_shape"])
    print(f"model       {result['model']} ({result['dims']}D)")
    print(f"input       [{shape}] float32")
    print(f"parameters  {result['params']:,} ({result['params'] / 1e6:.3f} M)")
    print(
        f"forward     {result['gflops']:.3f} GFLOPs (XLA cost analysis on "
        f"{result['backend']}; a multiply-add counts 2)"
    )
    if result["has_loops"]:
        print(
            "note        the compiled model contains while loops; XLA counts a loop body "
            "once, so GFLOPs is an undercount"
        )
    return 0


if __name__ == "__main__":
    cli.run(main)
