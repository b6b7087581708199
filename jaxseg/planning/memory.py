"""What a train step costs on this machine: its memory, measured from the compiled real
step (`jit(step).lower(...).compile().memory_analysis()`), the per-platform memory
budgets, and the step's time (docs/planning.md, "Patch size" and "Training length")."""

from __future__ import annotations

import json
import math
import sys
import time
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from jaxseg.defaults import base_config
from jaxseg.errors import ConfigError
from jaxseg.workdir import RunInfo

__all__ = [
    "GIB",
    "MemoryProbe",
    "default_memory_budget",
    "device_name",
    "fmt_shape",
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


class MemoryProbe:
    """`measure(config, info)` (the training layer's `jaxseg.training.memory.
    measure_train_step`, handed in by the caller: planning sits below training) for (model
    args, patch, batch), each compiled once; a log of the measurements, a linear predictor
    fitted to them, and the time of a measured step."""

    def __init__(
        self,
        model: str,
        info: RunInfo,
        base_args: dict,
        measure: Callable[[ml_collections.ConfigDict, RunInfo], dict],
        progress: bool = False,
    ):
        self.model, self.info, self.base_args = model, info, dict(base_args)
        self.measure_step = measure
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
            e = self.measure_step(self.config(args, patch, batch), self.info)
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
