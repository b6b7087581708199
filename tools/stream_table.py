"""Streaming speed of the model zoo as a markdown table (the real-time 2D path of
`python -m jaxseg.stream`, timed by `jaxseg.streaming.benchmark_stream`).

    .venv/bin/python tools/stream_table.py [--size 256] [--frames 100] [--models a,b,...]
        [--workdir LABEL=DIR ...]

Each model runs with random weights and one window per frame (`--model` in
`python -m jaxseg.benchmark --stream`); each `--workdir` runs a trained run with its own
patch and normalisation. Frames are greyscale, one channel in, two classes out; the
latency includes a timed PNG decode, the normalisation, the model, the argmax and the
overlay. Threads: whatever XLA and the host give this process (run it on a quiet machine).
"""

from __future__ import annotations

import argparse
import sys

DEFAULT_MODELS = (
    "lightseg_tiny,lightseg_small,unet,mobilenetv3_unet,shufflenetv2_unet,attention_unet,"
    "resunet,unetpp,deeplabv3plus,transunet,swinunetr"
)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--frames", type=int, default=100)
    p.add_argument("--models", default=DEFAULT_MODELS)
    p.add_argument("--workdir", action="append", default=[], metavar="LABEL=DIR")
    args = p.parse_args(argv)

    from jaxseg import streaming
    from jaxseg.workdir import load_trained

    rows = []
    for name in [m for m in args.models.split(",") if m]:
        predictor = streaming.random_predictor(name, args.size)
        rows.append((name, streaming.benchmark_stream(predictor, (args.size,) * 2, args.frames)))
        print(f"# {name}: {rows[-1][1]['fps']:.1f} fps", file=sys.stderr, flush=True)
    for item in args.workdir:
        label, _, path = item.partition("=")
        predictor = streaming.run_predictor(load_trained(path))
        rows.append((label, streaming.benchmark_stream(predictor, (args.size,) * 2, args.frames)))
    print(
        f"| model ({args.size}x{args.size} frames, {args.frames} timed) | frames/s | p50 ms "
        "| p95 ms | p99 ms | FPS at p95 | 30 FPS at p95 |"
    )
    print("|---|---|---|---|---|---|---|")
    for name, r in rows:
        print(
            f"| {name} | {r['fps']:.1f} | {r['latency_p50_ms']:.1f} | {r['latency_p95_ms']:.1f} "
            f"| {r['latency_p99_ms']:.1f} | {r['fps_at_p95']:.1f} "
            f"| {'yes' if r['fps_at_p95'] >= 30 else 'no'} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
