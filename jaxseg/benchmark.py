"""Benchmark a model, or the input pipeline of a config. Prints one JSON line per run.

Model (random input, jitted, timed after warmup; median of --repeats calls):
    python -m jaxseg.benchmark --model NAME --dims 2|3 --size S [S ...] --batch B [B ...]
        [--model-arg key=value ...] [--repeats N] [--warmup W] [--dtype float32|bfloat16]
        [--train] [--in-channels C] [--num-classes K]
  One run (one line) per (size, batch) pair. Keys: model, dims, size, batch, mode,
  median_latency_s, p90_latency_s, items_per_s, peak_memory_mb (XLA memory analysis of the
  executable), rss_peak_mb (process high-water mark), compile_s, params, gflops, ...
  --train times the full train step (augment, forward, loss, backward, AdamW).

Input pipeline (needs the config's dataset on disk):
    python -m jaxseg.benchmark --input-pipeline --config configs/demo.py [--steps N]
        [--warmup W] [--pipeline-batches M] [--config.a.b=value ...]
  Keys: pipeline_batches_per_s (host grain pipeline alone), train_step_s, and
  input_wait_fraction (share of the real train step's time blocked waiting for input).

Streaming (the real-time 2D path of python -m jaxseg.stream, on synthetic frames):
    python -m jaxseg.benchmark --stream --workdir DIR [--size S ...] [--frames N]
    python -m jaxseg.benchmark --stream --model NAME [--model-arg k=v] [--size S ...]
  One line per frame size (default 256 and, with --workdir, the run's patch). A --model
  has random weights and one window per frame. Keys: fps, latency_p50_ms, latency_p95_ms,
  latency_p99_ms, fps_at_p95, first_frame_ms (compiling), model_median_ms, ...

See docs/benchmarks.md for how to read the numbers.
"""

from __future__ import annotations

import argparse
import json

from jaxseg import cli
from jaxseg.config import split_overrides


def main(argv) -> int:
    overrides, rest = split_overrides(argv)
    parser = argparse.ArgumentParser(
        prog="python -m jaxseg.benchmark",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--input-pipeline",
        action="store_true",
        help="benchmark the config's input pipeline instead of a model",
    )
    model = parser.add_argument_group("model benchmark")
    model.add_argument("--model", help="a registered model name (python -m jaxseg.models --list)")
    model.add_argument("--dims", type=int, choices=(2, 3))
    model.add_argument(
        "--size",
        type=int,
        nargs="+",
        default=None,
        help="voxels per spatial axis; several values give several runs "
        "(default 128 in 2D, 96 in 3D)",
    )
    model.add_argument(
        "--batch",
        type=int,
        nargs="+",
        default=[1],
        help="batch size(s); several values give several runs",
    )
    model.add_argument(
        "--model-arg",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="constructor override, repeatable: feature_size=48",
    )
    model.add_argument("--in-channels", type=int, default=1)
    model.add_argument("--num-classes", type=int, default=None, help="default 2")
    model.add_argument("--repeats", type=int, default=10, help="timed calls (median reported)")
    model.add_argument(
        "--dtype",
        default="float32",
        choices=("float32", "bfloat16"),
        help="compute dtype passed to the model",
    )
    model.add_argument("--train", action="store_true", help="time the train step")
    parser.add_argument(
        "--warmup",
        type=int,
        default=None,
        help="untimed calls first (default 2 for a model, 3 for a pipeline)",
    )
    parser.add_argument("--seed", type=int, default=0)
    pipe = parser.add_argument_group("input-pipeline benchmark")
    pipe.add_argument("--config", help="config file with get_config()")
    pipe.add_argument("--steps", type=int, default=20, help="timed train steps")
    pipe.add_argument(
        "--pipeline-batches", type=int, default=100, help="batches timed from the pipeline alone"
    )
    stream = parser.add_argument_group("streaming benchmark")
    stream.add_argument("--stream", action="store_true", help="time the 2D streaming path")
    stream.add_argument("--workdir", help="a trained 2D run (else --model, random weights)")
    stream.add_argument("--frames", type=int, default=100, help="timed frames per size")
    args = parser.parse_args(rest)

    if args.stream:
        return _stream(parser, args)
    if args.workdir is not None:
        parser.error("--workdir is for --stream")
    if args.input_pipeline:
        if args.config is None:
            parser.error("--input-pipeline needs --config FILE")
        if args.model is not None:
            parser.error(
                "--input-pipeline benchmarks the config's model; drop --model "
                "(set --config.model.name=... instead)"
            )
        from jaxseg.benchmarking import benchmark_input_pipeline
        from jaxseg.config import load_config

        config = load_config(args.config, overrides)
        result = benchmark_input_pipeline(
            config,
            steps=args.steps,
            warmup=3 if args.warmup is None else args.warmup,
            pipeline_batches=args.pipeline_batches,
        )
        print(json.dumps({"config": args.config, **result}), flush=True)
        return 0

    if overrides or args.config is not None:
        parser.error("--config and --config.a.b=... are for --input-pipeline only")
    if args.model is None or args.dims is None:
        parser.error("give --model NAME and --dims 2|3 (or --input-pipeline --config FILE)")
    # Importing JAX after parsing keeps --help fast.
    from jaxseg.benchmarking import benchmark_model
    from jaxseg.models.summary import DEFAULT_NUM_CLASSES, parse_model_args

    model_args = parse_model_args(args.model_arg)
    for size in args.size or [None]:
        for batch in args.batch:
            result = benchmark_model(
                args.model,
                args.dims,
                size,
                batch,
                model_args=model_args,
                in_channels=args.in_channels,
                num_classes=args.num_classes or DEFAULT_NUM_CLASSES,
                repeats=args.repeats,
                warmup=2 if args.warmup is None else args.warmup,
                dtype=args.dtype,
                train=args.train,
                seed=args.seed,
            )
            print(json.dumps(result), flush=True)
    return 0


def _stream(parser, args) -> int:
    if (args.workdir is None) == (args.model is None):
        parser.error("--stream needs --workdir DIR or --model NAME (one of them)")
    if args.frames < 2:
        parser.error("--frames must be >= 2")
    from jaxseg import streaming
    from jaxseg.models.summary import DEFAULT_NUM_CLASSES, parse_model_args

    if args.workdir is not None:
        from jaxseg.workdir import load_trained

        run = load_trained(args.workdir)
        sizes = args.size or sorted({256, *run.config.data.patch_size})
        predictor = lambda size: streaming.run_predictor(run)
        what = {"workdir": args.workdir, "model": run.config.model.name}
    else:
        sizes = args.size or [256]
        predictor = lambda size: streaming.random_predictor(
            args.model,
            size,
            model_args=parse_model_args(args.model_arg),
            in_channels=args.in_channels,
            num_classes=args.num_classes or DEFAULT_NUM_CLASSES,
            seed=args.seed,
        )
        what = {"model": args.model}
    for size in sizes:
        result = streaming.benchmark_stream(predictor(size), (size, size), args.frames)
        print(json.dumps({**what, "size": size, **result}), flush=True)
    return 0


if __name__ == "__main__":
    cli.run(main)
