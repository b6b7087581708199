"""Run in a subprocess with 8 fake CPU devices (see test_sharding.py).

Trains 2 steps of a small model on one global batch three ways, 1 device, 8-way data
parallel, and data 2 x fsdp 4 (parameters and optimiser state sharded), and checks the
results agree. Exits non-zero with the differences otherwise.
"""

import os
import sys

assert "--xla_force_host_platform_device_count=8" in os.environ.get("XLA_FLAGS", "")

import jax  # noqa: E402
import numpy as np  # noqa: E402

from jaxseg.defaults import base_config  # noqa: E402
from jaxseg.models import build_model  # noqa: E402
from jaxseg.training import mesh as mesh_lib  # noqa: E402
from jaxseg.training import optimizer as optimizer_lib  # noqa: E402
from jaxseg.training.setup import abstract_state  # noqa: E402
from jaxseg.training.state import init_train_state  # noqa: E402
from jaxseg.training.steps import make_train_step  # noqa: E402
from jaxseg.workdir import RunInfo  # noqa: E402


def run(mesh_cfg: dict, devices) -> tuple:
    config = base_config()
    config.data.patch_size = (32, 32)
    config.data.batch_size = 8
    config.train.learning_rate = 1e-2
    config.train.warmup_steps = 0
    config.mesh.update(mesh_cfg)
    config.mesh.fsdp_min_size = 0  # shard every array fsdp divides, even small ones
    info = RunInfo(
        dims=2,
        in_channels=1,
        num_classes=3,
        labels={0: "bg", 1: "a", 2: "b"},
        modalities=("MRI",),
        dataset_root="",
    )
    model = build_model("unet", dims=2, in_channels=1, num_classes=3, features=(8, 16))
    optimizer = optimizer_lib.make_optimizer(config.train)
    mesh = mesh_lib.make_mesh(config.mesh, devices)
    abstract = abstract_state(model, optimizer, config, info, mesh)
    shardings = jax.tree_util.tree_map(lambda s: s.sharding, abstract)
    sample = np.zeros((1, 32, 32, 1), np.float32)
    state = jax.jit(
        lambda: init_train_state(model, optimizer, jax.random.key(0), sample),
        out_shardings=shardings,
    )()
    step = jax.jit(
        make_train_step(model, optimizer, config),
        in_shardings=(shardings, mesh_lib.batch_sharding(mesh), mesh_lib.replicated(mesh)),
        out_shardings=(shardings, mesh_lib.replicated(mesh)),
    )
    rng = np.random.default_rng(0)
    sharded_axes = 0
    for _ in range(2):
        batch = {
            "image": rng.normal(size=(8, 32, 32, 1)).astype(np.float32),
            "label": rng.integers(0, 3, (8, 32, 32)).astype(np.int32),
        }
        state, metrics = step(state, mesh_lib.global_batch(batch, mesh), jax.random.key(1))
    for leaf in jax.tree_util.tree_leaves(state.params):
        sharded_axes += any(a is not None for a in leaf.sharding.spec)
    return jax.device_get(state.params), jax.device_get(metrics), sharded_axes


def main() -> int:
    devices = jax.devices()
    assert len(devices) == 8, devices
    single, m1, _ = run({"data": 1}, devices[:1])
    failures = []
    for name, cfg in (("data8", {"data": 8}), ("data2_fsdp4", {"data": 2, "fsdp": 4})):
        params, metrics, sharded = run(cfg, devices)
        if name == "data2_fsdp4" and sharded == 0:
            failures.append("fsdp: no parameter was sharded")
        for k in m1:
            if not np.allclose(m1[k], metrics[k], rtol=1e-4, atol=1e-5):
                failures.append(f"{name}: metric {k} {m1[k]} != {metrics[k]}")
        diffs = jax.tree_util.tree_map(lambda a, b: float(np.max(np.abs(a - b))), single, params)
        worst = max(jax.tree_util.tree_leaves(diffs))
        if worst > 1e-4:
            failures.append(f"{name}: params differ from 1 device by up to {worst}")
        print(f"{name}: max |param diff| {worst:.2e}, sharded leaves {sharded}")
    if failures:
        print("\n".join(failures), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
