"""What a train step costs on this machine: its memory, measured from the compiled real
step (`jit(step).lower(...).compile().memory_analysis()`), the per-platform memory
budgets, and the step's time (docs/planning.md, "Patch size" and "Training length")."""

from __future__ import annotations

import json
import math
import sys
import time
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from jaxseg.defaults import base_config
from jaxseg.errors import ConfigError
from jaxseg.training import mesh as mesh_lib
from jaxseg.training import optimizer as optimizer_lib
from jaxseg.training.setup import abstract_state
from jaxseg.training.steps import make_train_step
from jaxseg.workdir import RunInfo, model_from_config

__all__ = [
    "GIB",
    "MemoryProbe",
    "default_memory_budget",
    "device_name",
    "fmt_shape",
    "measure_train_step",
]

GIB = 2**30
_BUDGETS = {"cpu": 3 * GIB, "tpu": 16 * GIB, "gpu": 8 * GIB}  # without device statistics


def fmt_shape(shape: Sequence[float]) -> str:
    """(36, 50, 35) -> "36x50x35"."""
    return "x".join(f"{v:g}" for v in shape)


def device_name() -> str:
    """The device plans are measured on: "platform (device kind)"."""
    device = jax.devices()[0]
    return f"{device.platform} ({device.device_kind})"


def default_memory_budget(platform: str | None = None) -> tuple[int, str]:
    """Bytes one device may use for a train step: 80% of a GPU's memory, a TPU chip's usable
    HBM as the runtime reports it (16 GiB on v5e), 3 GiB on CPU (a laptop's share); the
    table's value where the device reports nothing (another platform than this one)."""
    device = jax.devices()[0]
    local = device.platform
    platform = (platform or local).lower()
    limit = None
    if platform == local and platform != "cpu":
        limit = (device.memory_stats() or {}).get("bytes_limit")
    if platform == "gpu" and limit:
        return int(0.8 * limit), f"80% of the {device.device_kind}'s {limit / GIB:.1f} GiB"
    if platform == "tpu" and limit:
        return int(limit), f"the {device.device_kind} chip's usable HBM ({limit / GIB:.1f} GiB)"
    if platform not in _BUDGETS:
        raise ConfigError(f"platform {platform!r}: use cpu, gpu or tpu (or give a memory budget).")
    return _BUDGETS[platform], f"the default for {platform} ({_BUDGETS[platform] / GIB:g} GiB)"


def measure_train_step(config: ml_collections.ConfigDict, info: RunInfo) -> dict:
    """Compiles the real train step of `config` (augment, model, loss, grads, AdamW; the
    state donated, as in training) for one device and reads its memory analysis.

    Returns {"bytes": argument + output + temp - aliased bytes, "state": the train state's
    bytes, "compiled", "abstract" (state), "batch" (specs)}.
    """
    mesh = mesh_lib.make_mesh(config.mesh, jax.devices()[:1])
    model = model_from_config(config, info)
    optimizer = optimizer_lib.make_optimizer(config.train)
    state = abstract_state(model, optimizer, config, info, mesh)
    sharding = mesh_lib.batch_sharding(mesh)
    shape = (int(config.data.batch_size), *config.data.patch_size)
    batch = {
        "image": jax.ShapeDtypeStruct((*shape, info.in_channels), jnp.float32, sharding=sharding),
        "label": jax.ShapeDtypeStruct(shape, jnp.int32, sharding=sharding),
    }
    step = jax.jit(make_train_step(model, optimizer, config), donate_argnums=0)
    compiled = step.lower(state, batch, jax.eval_shape(lambda: jax.random.key(0))).compile()
    ma = compiled.memory_analysis()
    if ma is None:
        raise ConfigError(
            f"{jax.devices()[0].platform}: the compiler reports no memory analysis, so the "
            "patch cannot be sized by measurement; set data.patch_size by hand."
        )
    total = (
        ma.argument_size_in_bytes
        + ma.output_size_in_bytes
        + ma.temp_size_in_bytes
        - ma.alias_size_in_bytes
    )
    state_bytes = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(state))
    return dict(
        bytes=int(total), state=int(state_bytes), compiled=compiled, abstract=state, batch=batch
    )


class MemoryProbe:
    """`measure_train_step` for (model args, patch, batch), each compiled once; a log of the
    measurements, a linear predictor fitted to them, and the time of a measured step."""

    def __init__(self, model: str, info: RunInfo, base_args: dict, progress: bool = False):
        self.model, self.info, self.base_args = model, info, dict(base_args)
        self.progress = progress
        self.cache: dict[str, dict] = {}
        self.log: list[dict] = []

    def config(self, args: dict, patch: Sequence[int], batch: int) -> ml_collections.ConfigDict:
        c = base_config()
        c.model.name = self.model
        c.model.args = ml_collections.ConfigDict({**self.base_args, **args})
        c.data.patch_size, c.data.batch_size = tuple(int(p) for p in patch), int(batch)
        return c

    def _key(self, args, patch, batch) -> str:
        return json.dumps([sorted(args.items()), list(patch), batch], default=str)

    def measure(self, args: dict, patch: Sequence[int], batch: int, stages: int = 0) -> int:
        """Bytes of the train step at `patch` (spatial shape) and `batch`."""
        key = self._key(args, patch, batch)
        if key not in self.cache:
            t = time.perf_counter()
            if self.progress:  # a compile takes a minute on CPU: say what is happening
                print(
                    f"plan: measuring the train step at patch {fmt_shape(patch)}, batch {batch} "
                    "(compiling) ...",
                    end="",
                    file=sys.stderr,
                    flush=True,
                )
            e = measure_train_step(self.config(args, patch, batch), self.info)
            if self.progress:
                print(
                    f" {e['bytes'] / GIB:.2f} GiB ({time.perf_counter() - t:.0f} s)",
                    file=sys.stderr,
                    flush=True,
                )
            e.update(args=dict(args), voxels=int(batch) * math.prod(patch))
            self.cache[key] = e
            self.log.append(
                {
                    "patch": list(patch),
                    "batch": int(batch),
                    "stages": stages,
                    "bytes": e["bytes"],
                    "compile_s": round(time.perf_counter() - t, 1),
                }
            )
        return self.cache[key]["bytes"]

    def entry(self, args, patch, batch) -> dict:
        return self.cache[self._key(args, patch, batch)]

    def predict(self, args: dict, patch: Sequence[int], batch: int) -> float:
        """Bytes by a linear fit (state + bytes per voxel) to the measurements of the same
        depth (or all of them, when this depth is not measured yet)."""
        vox = batch * math.prod(patch)
        same = [e for e in self.cache.values() if e["args"] == args] or list(self.cache.values())
        xs = np.array([e["voxels"] for e in same], np.float64)
        ys = np.array([e["bytes"] for e in same], np.float64)
        if len(set(xs.tolist())) >= 2:
            slope, icpt = np.polyfit(xs, ys, 1)
            if slope > 0:
                return icpt + slope * vox
        e = same[-1]
        return e["state"] + (e["bytes"] - e["state"]) * vox / e["voxels"]

    def step_seconds(self, args: dict, patch: Sequence[int], batch: int) -> float:
        """Seconds of one execution of the measured step (parameters filled with 0.01)."""
        e = self.entry(args, patch, batch)
        fill = lambda s: jnp.full(
            s.shape, 0.01 if jnp.issubdtype(s.dtype, jnp.floating) else 0, s.dtype
        )
        rng = np.random.default_rng(0)
        img = rng.normal(size=e["batch"]["image"].shape).astype(np.float32)
        lab = rng.integers(0, self.info.num_classes, size=e["batch"]["label"].shape, dtype=np.int32)
        seconds = []
        for _ in range(2):
            state = jax.tree.map(fill, e["abstract"])
            t = time.perf_counter()
            out = e["compiled"](state, {"image": img, "label": lab}, jax.random.key(0))
            jax.block_until_ready(out)
            seconds.append(time.perf_counter() - t)
            # The first execution runs ~20% slow (allocation, first transfers); only a very
            # slow step is taken as its own warm-up, to keep planning short.
            if seconds[0] > 30:
                break
        return seconds[-1]
