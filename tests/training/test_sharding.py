"""Sharded training on 8 fake CPU devices matches one device; mesh and sharding rules."""

import os
import subprocess
import sys
from pathlib import Path

import jax
import ml_collections
import numpy as np
import pytest

from jaxseg.errors import ConfigError
from jaxseg.training import mesh as mesh_lib

WORKER = Path(__file__).with_name("multidevice_worker.py")


@pytest.mark.multiprocess
def test_data_parallel_and_fsdp_match_one_device():
    env = {
        **os.environ,
        "XLA_FLAGS": "--xla_force_host_platform_device_count=8",
        "JAX_PLATFORMS": "cpu",
    }
    r = subprocess.run(
        [sys.executable, str(WORKER)], env=env, capture_output=True, text=True, timeout=600
    )
    assert r.returncode == 0, r.stdout + r.stderr
    assert "data2_fsdp4" in r.stdout


def test_mesh_sizes_and_errors():
    devices = jax.devices()[:1]
    mesh = mesh_lib.make_mesh(ml_collections.ConfigDict({"data": -1}), devices)
    assert dict(mesh.shape) == {"data": 1, "fsdp": 1, "model": 1}
    with pytest.raises(ConfigError, match="needs 4 devices"):
        mesh_lib.make_mesh(ml_collections.ConfigDict({"data": 2, "fsdp": 2}), devices)
    with pytest.raises(ConfigError, match="at most one"):
        mesh_lib.make_mesh(ml_collections.ConfigDict({"data": -1, "fsdp": -1}), devices)


def test_fsdp_rule_shards_the_largest_divisible_axis():
    assert mesh_lib._spec((3, 3, 16, 64), "fsdp", 4, 0) == jax.sharding.PartitionSpec(
        None, None, None, "fsdp"
    )
    assert mesh_lib._spec((3, 3, 16, 6), "fsdp", 4, 0) == jax.sharding.PartitionSpec(
        None, None, "fsdp", None
    )
    assert mesh_lib._spec((5, 7), "fsdp", 4, 0) == jax.sharding.PartitionSpec()
    assert mesh_lib._spec((1024, 64), "fsdp", 4, 10**6) == jax.sharding.PartitionSpec()
    assert mesh_lib._spec((1024, 64), "replicate", 4, 0) == jax.sharding.PartitionSpec()


def test_rules_match_parameter_paths_in_optimizer_state():
    import optax

    params = {"embed": {"kernel": np.zeros((64, 64))}, "head": {"kernel": np.zeros((64, 8))}}
    opt_state = optax.adam(1e-3).init(params)
    tree = {"params": params, "opt_state": opt_state}
    abstract = jax.tree_util.tree_map(lambda x: jax.ShapeDtypeStruct(np.shape(x), np.float32), tree)
    names = []
    jax.tree_util.tree_map_with_path(lambda p, _: names.append(mesh_lib.path_name(p)), abstract)
    assert "params/embed/kernel" in names
    assert any(n.endswith("mu/embed/kernel") for n in names)


def test_batch_size_must_split_over_devices_and_micro_batches():
    mesh = mesh_lib.make_mesh(ml_collections.ConfigDict({"data": 1}), jax.devices()[:1])
    mesh_lib.check_batch_size(8, mesh, 4)
    with pytest.raises(ConfigError, match="grad_accum_steps=3"):
        mesh_lib.check_batch_size(8, mesh, 3)
