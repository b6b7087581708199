"""Speed measurements: a model's forward pass or train step, and the host input pipeline.

`benchmark_model` times one jitted executable on random data:
- inference: `softmax(model.apply(params, x))` (`jaxseg.inference.make_predict_fn`, what
  predict and export run); train: the real train step (augment -> model -> Dice+CE -> grads
  -> AdamW) from `jaxseg.training.steps.make_train_step` with `jaxseg.defaults.base_config()`;
- `compile_s` is the wall time of `jax.jit(f).lower(...).compile()`, measured on its own;
- then `warmup` untimed calls and `repeats` timed calls, each ended by `block_until_ready`,
  so a latency is one complete call; the median and the 90th percentile are reported and
  `items_per_s = batch / median_latency_s`;
- `peak_memory_mb` is XLA's memory analysis of the compiled executable: the peak of the
  buffers it needs live at once (arguments + outputs + temporaries, less aliased/donated
  buffers), i.e. what one call needs in device memory. It does not include the Python
  process, the runtime or other live arrays; `rss_peak_mb` (the process's resident-set
  high-water mark from `getrusage`) does, and only ever grows within a process.

`benchmark_input_pipeline` measures, for a config and its dataset on disk, how fast the
host grain pipeline (`jaxseg.data.pipeline.train_batches`) produces batches on its own, and
what fraction of the real jitted train step's wall time is spent blocked in `next()` on
that pipeline.

Timings on a shared machine are noisy: compare medians of runs made under the same load.
"""

from __future__ import annotations

import platform
import resource
import statistics
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from jaxseg.defaults import base_config
from jaxseg.errors import ConfigError, DataError
from jaxseg.inference import make_predict_fn
from jaxseg.models import build_model
from jaxseg.models.summary import DEFAULT_NUM_CLASSES, compiled_cost, input_shape
from jaxseg.training import mesh as mesh_lib
from jaxseg.training import optimizer as optimizer_lib
from jaxseg.training.setup import build_training, training_data
from jaxseg.training.state import init_train_state
from jaxseg.training.steps import make_train_step

__all__ = [
    "DTYPES",
    "benchmark_model",
    "benchmark_input_pipeline",
    "peak_rss_mb",
    "executable_memory",
    "time_calls",
]

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
_MB = 1024.0 * 1024.0


def peak_rss_mb() -> float:
    """This process's resident-set high-water mark, MiB (Linux reports KiB, macOS bytes)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (_MB if sys.platform == "darwin" else 1024.0)


def executable_memory(compiled) -> dict[str, float | None]:
    """XLA's memory analysis of a compiled executable, MiB.

    `peak_memory_mb` = arguments + outputs + temporaries - aliased bytes (outputs written
    into donated arguments): the buffers one call needs. XLA packs all temporaries of a
    call into one buffer assigned by liveness, so `temp` is already their peak. (XLA:CPU's
    own `peak_memory_in_bytes` leaves the temporaries out, so it is not used.)
    All values are None when the backend gives no memory analysis.
    """
    stats = compiled.memory_analysis()
    if stats is None:
        return {
            "peak_memory_mb": None,
            "xla_argument_mb": None,
            "xla_output_mb": None,
            "xla_temp_mb": None,
            "xla_alias_mb": None,
        }
    arg, out = stats.argument_size_in_bytes, stats.output_size_in_bytes
    temp, alias = stats.temp_size_in_bytes, stats.alias_size_in_bytes
    return {
        "peak_memory_mb": (arg + out + temp - alias) / _MB,
        "xla_argument_mb": arg / _MB,
        "xla_output_mb": out / _MB,
        "xla_temp_mb": temp / _MB,
        "xla_alias_mb": alias / _MB,
    }


def time_calls(call: Callable[[], Any], *, repeats: int, warmup: int) -> list[float]:
    """Runs `call()` `warmup` times untimed, then `repeats` times; returns the wall time of
    each timed call, s. `call` must block until its result is ready."""
    for _ in range(warmup):
        call()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        call()
        times.append(time.perf_counter() - t0)
    return times


def _check_counts(**counts: int) -> None:
    for key, (value, low) in counts.items():
        if value < low:
            raise ConfigError(f"--{key.replace('_', '-')} must be >= {low}; got {value}")


def _environment() -> dict:
    return {
        "backend": jax.default_backend(),
        "devices": jax.device_count(),
        "jax_version": jax.__version__,
        "host": platform.node(),
    }


def benchmark_model(
    name: str,
    dims: int,
    size: int | Sequence[int] | None,
    batch: int,
    *,
    model_args: Mapping[str, Any] | None = None,
    in_channels: int = 1,
    num_classes: int = DEFAULT_NUM_CLASSES,
    repeats: int = 10,
    warmup: int = 2,
    dtype: str = "float32",
    train: bool = False,
    seed: int = 0,
) -> dict:
    """Times the registered model `name` on random input `[batch, *S, in_channels]`.

    dtype: the compute dtype passed to the model as `dtype=` ("bfloat16" needs a model with
    a `dtype` argument); parameters, input and loss stay float32.
    Returns one flat dict (a JSON line): model, dims, size, batch, mode, dtype,
    median_latency_s, p90_latency_s, min_latency_s, items_per_s, compile_s, peak_memory_mb
    (+ xla_argument_mb, xla_output_mb, xla_temp_mb), rss_peak_mb, params, gflops (XLA's
    count for one call; for train this includes the backward pass and the optimiser),
    achieved_gflop_per_s, repeats, warmup and the environment.
    """
    _check_counts(repeats=(repeats, 1), warmup=(warmup, 0), batch=(batch, 1))
    if dtype not in DTYPES:
        raise ConfigError(f"--dtype {dtype!r}: use one of {', '.join(DTYPES)}")
    kwargs = dict(model_args or {})
    if dtype != "float32":
        if "dtype" in kwargs:
            raise ConfigError(
                "give the compute dtype once: --dtype or --model-arg dtype=..., not both"
            )
        kwargs["dtype"] = DTYPES[dtype]
    shape = input_shape(dims, size, in_channels, batch)
    model = build_model(name, dims=dims, in_channels=in_channels, num_classes=num_classes, **kwargs)
    rng = np.random.default_rng(seed)
    image = jnp.asarray(rng.normal(size=shape).astype(np.float32))
    key = jax.random.key(seed)  # the step's key, as in the training loop
    # Initial values do not matter for timing; the rbg generator compiles `init` several
    # times faster than threefry.
    init_key = jax.random.key(seed, impl="unsafe_rbg")
    if train:
        compile_s, compiled, call, params = _train_call(
            model, image, num_classes, rng, key, init_key
        )
    else:
        compile_s, compiled, call, params = _inference_call(model, image, init_key)
    # Counted before timing: the train step donates (deletes) the initial state's buffers.
    num_params = sum(int(np.prod(p.shape)) for p in jax.tree_util.tree_leaves(params))
    latencies = time_calls(call, repeats=repeats, warmup=warmup)
    median = statistics.median(latencies)
    flops = compiled_cost(compiled)["flops"]
    spatial = shape[1:-1]
    result = {
        "model": name,
        "dims": dims,
        "size": spatial[0] if len(set(spatial)) == 1 else list(spatial),  # int for a cube
        "batch": batch,
        "mode": "train" if train else "inference",
        "dtype": dtype,
        "median_latency_s": median,
        "p90_latency_s": float(np.percentile(latencies, 90)),
        "min_latency_s": min(latencies),
        "items_per_s": batch / median,
        "compile_s": compile_s,
        **executable_memory(compiled),
        "peak_memory_source": "xla_memory_analysis",
        "rss_peak_mb": peak_rss_mb(),
        "params": num_params,
        "gflops": flops / 1e9,
        "achieved_gflop_per_s": flops / 1e9 / median,
        "repeats": repeats,
        "warmup": warmup,
        "in_channels": in_channels,
        "num_classes": num_classes,
        "model_args": {k: _jsonable(v) for k, v in (model_args or {}).items()},
        **_environment(),
    }
    return result


def _jsonable(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (bool, int, float, str)) or value is None:
        return value
    return str(value)


def _inference_call(model, image, init_key):
    params = jax.jit(lambda k, x: model.init(k, x, train=False)["params"])(init_key, image)
    t0 = time.perf_counter()
    compiled = jax.jit(make_predict_fn(model)).lower(params, image).compile()
    compile_s = time.perf_counter() - t0

    def call():
        jax.block_until_ready(compiled(params, image))

    return compile_s, compiled, call, params


def _train_call(model, image, num_classes, rng, key, init_key):
    config = base_config()
    config.data.patch_size = tuple(image.shape[1:-1])
    config.data.batch_size = image.shape[0]
    optimizer = optimizer_lib.make_optimizer(config.train)
    label = jnp.asarray(rng.integers(0, num_classes, size=image.shape[:-1]).astype(np.int32))
    batch = {"image": image, "label": label}
    state = jax.jit(lambda k: init_train_state(model, optimizer, k, image))(init_key)
    params = state.params
    # Donated like the training loop's step, so the memory analysis reflects in-place updates.
    step = jax.jit(make_train_step(model, optimizer, config), donate_argnums=0)
    t0 = time.perf_counter()
    compiled = step.lower(state, batch, key).compile()
    compile_s = time.perf_counter() - t0
    holder = {"state": state}

    def call():
        holder["state"], metrics = compiled(holder["state"], batch, key)
        jax.block_until_ready((holder["state"], metrics))

    return compile_s, compiled, call, params


# --------------------------------------------------------------------------- input pipeline


def _check_dataset_root(config: ml_collections.ConfigDict) -> Path:
    root = str(config.data.root)
    hint = (
        "write a demo dataset with `python -m jaxseg.data.synthetic --dims 2 --num-cases 60 "
        "--shape 128,128 --out data/demo2d`, or point --config.data.root=DIR at a folder "
        "holding dataset.json"
    )
    if not root:
        raise DataError(f"data.root is empty in the config; {hint}")
    path = Path(root).expanduser()
    if not (path / "dataset.json").is_file():
        what = "has no dataset.json" if path.is_dir() else "does not exist"
        raise DataError(
            f"data.root={root} {what}: the input-pipeline benchmark reads the "
            f"config's dataset from disk; {hint}"
        )
    return path


def benchmark_input_pipeline(
    config: ml_collections.ConfigDict,
    *,
    steps: int = 20,
    warmup: int = 3,
    pipeline_batches: int = 100,
) -> dict:
    """Input-pipeline throughput and the share of train-step time spent waiting for it.

    1. The host pipeline alone: `pipeline_batches` calls of `next()` on
       `train_batches(...)` over the config's training split, after `warmup` batches
       (`pipeline_setup_s` is the time to build the iterator, which loads and normalises
       every training case once).
    2. The real jitted train step (sharded as in `jaxseg.training.loop`) fed by the same
       iterator: over `steps` steps after `warmup`, the time blocked in `next()` against
       the wall time of the whole step (next + host->device transfer + step until ready).
       Each step is awaited, so the device is idle exactly while the host waits:
       `input_wait_fraction` is the share of time a step would sit idle for input
       (an upper bound for the training loop, which also overlaps dispatch).
    Grain prefetches up to `data.prefetch` batches in background threads (per worker
    process with `data.num_workers > 0`; the workers start during the warm-up), so when the
    pipeline is the slower side the first few timed steps can still be served from the
    buffer: use `steps` well above `data.prefetch`.
    """
    _check_counts(steps=(steps, 1), warmup=(warmup, 0), pipeline_batches=(pipeline_batches, 1))
    _check_dataset_root(config)
    spec, splits = training_data(config)
    cases = splits["train"]
    patch = tuple(int(p) for p in config.data.patch_size)
    batch_size = int(config.data.batch_size)
    # The model, mesh, state layout, jitted step and batches exactly as the training loop's.
    setup = build_training(config, spec, splits)
    mesh = setup.mesh

    t0 = time.perf_counter()
    batches = setup.train_batches()
    setup_s = time.perf_counter() - t0
    for _ in range(warmup):
        next(batches)
    t0 = time.perf_counter()
    for _ in range(pipeline_batches):
        next(batches)
    pipeline_s = time.perf_counter() - t0
    pipeline_bps = pipeline_batches / pipeline_s

    step_key = jax.random.key(config.seed)  # threefry, as in the training loop
    # Initial values do not matter for timing; rbg compiles `init` faster than threefry.
    state = setup.init_state(jax.random.key(config.seed, impl="unsafe_rbg"))
    step_fn = setup.train_step
    first = mesh_lib.global_batch(next(batches), mesh)
    t0 = time.perf_counter()
    compiled = step_fn.lower(state, first, step_key).compile()
    compile_s = time.perf_counter() - t0
    for _ in range(warmup):
        state, metrics = compiled(state, mesh_lib.global_batch(next(batches), mesh), step_key)
        jax.block_until_ready(metrics)

    waits, transfers, totals = [], [], []
    for _ in range(steps):
        t0 = time.perf_counter()
        local = next(batches)
        t1 = time.perf_counter()
        batch = mesh_lib.global_batch(local, mesh)
        t2 = time.perf_counter()
        state, metrics = compiled(state, batch, step_key)
        jax.block_until_ready((state, metrics))
        t3 = time.perf_counter()
        waits.append(t1 - t0)
        transfers.append(t2 - t1)
        totals.append(t3 - t0)
    batches.close()  # joins grain's worker processes (data.num_workers > 0)
    total = sum(totals)
    step_s = total / steps
    return {
        "mode": "input_pipeline",
        "model": config.model.name,
        "dataset": str(spec.root),
        "dims": spec.dims,
        "patch_size": list(patch),
        "batch": batch_size,
        "num_train_cases": len(cases),
        "num_threads": config.data.num_threads,
        "prefetch": config.data.prefetch,
        "num_workers": config.data.num_workers,
        "pipeline_setup_s": setup_s,
        "pipeline_batches": pipeline_batches,
        "pipeline_batches_per_s": pipeline_bps,
        "pipeline_items_per_s": pipeline_bps * batch_size,
        "steps": steps,
        "warmup": warmup,
        "compile_s": compile_s,
        "train_step_s": step_s,
        "median_train_step_s": statistics.median(totals),
        "train_steps_per_s": 1.0 / step_s,
        "input_wait_s": sum(waits) / steps,
        "transfer_s": sum(transfers) / steps,
        "input_wait_fraction": sum(waits) / total,
        # > 1: the pipeline alone outruns the step, so it can keep up (given spare cores).
        "pipeline_headroom": pipeline_bps * step_s,
        "rss_peak_mb": peak_rss_mb(),
        **_environment(),
    }
