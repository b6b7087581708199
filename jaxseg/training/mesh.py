"""The device mesh, and how batches, parameters and optimiser state are laid out on it.

The mesh has three axes, `("data", "fsdp", "model")`. Batches are split over `data` and
`fsdp` together (every device sees a different slice of the global batch). Parameters and
optimiser state are replicated, or sharded over `fsdp` (ZeRO-3 style) by name rules:

    mesh.param_rules = ((".*", "fsdp"),)      # shard every large enough array
    mesh.param_rules = ((".*embed.*", "replicate"), (".*", "fsdp"))

The first rule whose regex matches the parameter's path (e.g. "stage0_block1/attn/qkv/
kernel") decides. "fsdp" shards the largest axis that `fsdp` divides (the big_vision
rule); arrays smaller than `mesh.fsdp_min_size` elements, or with no such axis, stay
replicated. The `model` axis is reserved for tensor parallelism and is 1 for every model
jaxseg ships (they are small enough to replicate within a data-parallel group).
"""

from __future__ import annotations

import re
from typing import Any

import jax
import ml_collections
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from jaxseg.errors import ConfigError

DATA_AXIS, FSDP_AXIS, MODEL_AXIS = "data", "fsdp", "model"
AXES = (DATA_AXIS, FSDP_AXIS, MODEL_AXIS)
BATCH_AXES = (DATA_AXIS, FSDP_AXIS)
STRATEGIES = ("replicate", "fsdp")


def make_mesh(mesh_config: ml_collections.ConfigDict, devices=None) -> Mesh:
    """A `("data", "fsdp", "model")` mesh over `devices` (default: all, every process).

    One axis size may be -1: it takes the devices the others leave.
    """
    devices = list(jax.devices() if devices is None else devices)
    sizes = [int(mesh_config.get(axis, 1)) for axis in AXES]
    free = [i for i, s in enumerate(sizes) if s == -1]
    if len(free) > 1 or any(s == 0 or s < -1 for s in sizes):
        raise ConfigError(
            f"mesh sizes {dict(zip(AXES, sizes))}: give positive sizes, at most one of them -1"
        )
    fixed = int(np.prod([s for s in sizes if s != -1]))
    if free:
        if len(devices) % fixed:
            raise ConfigError(
                f"mesh {dict(zip(AXES, sizes))}: {len(devices)} devices are "
                f"not divisible by {fixed}"
            )
        sizes[free[0]] = len(devices) // fixed
    if int(np.prod(sizes)) != len(devices):
        raise ConfigError(
            f"mesh {dict(zip(AXES, sizes))} needs {int(np.prod(sizes))} "
            f"devices; there are {len(devices)}. Use -1 for one axis."
        )
    # Order devices so each process's devices are contiguous along the batch axes: then each
    # host's local batch slice lives on its own devices.
    ordered = sorted(devices, key=lambda d: (d.process_index, d.id))
    return Mesh(np.asarray(ordered).reshape(sizes), AXES)


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (batch) axis split over data x fsdp; the other axes replicated."""
    return NamedSharding(mesh, P(BATCH_AXES))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def batch_devices(mesh: Mesh) -> int:
    return mesh.shape[DATA_AXIS] * mesh.shape[FSDP_AXIS]


def check_batch_size(global_batch: int, mesh: Mesh, micro_batches: int = 1) -> None:
    """The global batch must split evenly over micro-batches, devices and processes."""
    devices = batch_devices(mesh)
    if global_batch % (devices * micro_batches) or global_batch % jax.process_count():
        raise ConfigError(
            f"data.batch_size={global_batch} must be divisible by train.grad_accum_steps="
            f"{micro_batches} x the {devices} devices of the data and fsdp axes, and by "
            f"the {jax.process_count()} processes"
        )


def _strategy(path: str, rules) -> str:
    for pattern, strategy in rules:
        if re.fullmatch(pattern, path):
            return strategy
    return "replicate"


def _spec(shape: tuple[int, ...], strategy: str, fsdp: int, min_size: int) -> P:
    if strategy == "replicate" or fsdp == 1 or int(np.prod(shape, dtype=np.int64)) < min_size:
        return P()
    for axis in np.argsort(shape)[::-1]:  # largest axis first
        if shape[axis] % fsdp == 0:
            spec = [None] * len(shape)
            spec[axis] = FSDP_AXIS
            return P(*spec)
    return P()


def path_name(path) -> str:
    """'a/b/kernel' for a pytree key path (dict keys, attributes, sequence indices)."""
    parts = []
    for key in path:
        for attr in ("key", "name", "idx"):
            if hasattr(key, attr):
                parts.append(str(getattr(key, attr)))
                break
    return "/".join(parts)


def state_shardings(abstract_tree: Any, mesh: Mesh, mesh_config: ml_collections.ConfigDict) -> Any:
    """NamedShardings for every leaf of a (train state) pytree of ShapeDtypeStructs.

    Rules match the path from the parameter tree's root, so optimiser moments (whose paths
    end with the parameter path) follow their parameter.
    """
    rules = tuple(tuple(r) for r in mesh_config.get("param_rules", ()))
    for pattern, strategy in rules:
        if strategy not in STRATEGIES:
            raise ConfigError(
                f"mesh.param_rules: {strategy!r} for {pattern!r} is not one of {STRATEGIES}"
            )
    fsdp = mesh.shape[FSDP_AXIS]
    min_size = int(mesh_config.get("fsdp_min_size", 2**14))

    def one(path, leaf):
        name = path_name(path)
        # A rule is written for parameter paths; strip the wrapper keys in front of them.
        for marker in ("params/", "mu/", "nu/"):
            if marker in name:
                name = name.split(marker, 1)[1]
                break
        return NamedSharding(mesh, _spec(tuple(leaf.shape), _strategy(name, rules), fsdp, min_size))

    return jax.tree_util.tree_map_with_path(one, abstract_tree)


def global_batch(local_batch: dict, mesh: Mesh) -> dict:
    """Builds global arrays from this process's slice of the batch (multi-host safe)."""
    sharding = batch_sharding(mesh)
    return {
        k: jax.make_array_from_process_local_data(sharding, np.asarray(v))
        for k, v in local_batch.items()
    }
