"""The device mesh and the shardings of batches and state."""

from __future__ import annotations

import jax
import ml_collections
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from jaxseg.errors import ConfigError

DATA_AXIS = "data"


def make_mesh(mesh_config: ml_collections.ConfigDict, devices=None) -> Mesh:
    """A 1-axis ("data",) mesh over `devices` (default: all); `mesh.data = -1` takes them all."""
    devices = list(jax.devices() if devices is None else devices)
    size = mesh_config.data if mesh_config.data != -1 else len(devices)
    if size < 1 or len(devices) % size:
        raise ConfigError(f"mesh.data={mesh_config.data} does not divide the "
                          f"{len(devices)} available devices")
    return Mesh(np.asarray(devices[:size]), (DATA_AXIS,))


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (batch) axis split over the data axis; the rest replicated."""
    return NamedSharding(mesh, P(DATA_AXIS))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def check_batch_size(global_batch: int, mesh: Mesh) -> None:
    data = mesh.shape[DATA_AXIS]
    if global_batch % data or global_batch % jax.process_count():
        raise ConfigError(f"data.batch_size={global_batch} must be divisible by the "
                          f"{data} devices of the data axis and the {jax.process_count()} "
                          "processes")


def global_batch(local_batch: dict, mesh: Mesh) -> dict:
    """Builds global arrays from this process's slice of the batch (multi-host safe)."""
    sharding = batch_sharding(mesh)
    return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v))
            for k, v in local_batch.items()}
