"""The memory of the real train step, as the planner measures it (`jaxseg.planning` takes
this function as its `measure`: the plan sizes patch and batch by what actually trains)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections

from jaxseg.errors import ConfigError
from jaxseg.training import mesh as mesh_lib
from jaxseg.training import optimizer as optimizer_lib
from jaxseg.training.setup import abstract_state, trainable_params
from jaxseg.training.steps import make_train_step
from jaxseg.workdir import RunInfo, model_from_config

__all__ = ["measure_train_step"]


def measure_train_step(config: ml_collections.ConfigDict, info: RunInfo) -> dict:
    """Compiles the real train step of `config` (augment, model, loss, grads, AdamW; the
    state donated, as in training) for one device and reads its memory analysis.

    Returns {"bytes": argument + output + temp - aliased bytes, "state": the train state's
    bytes, "compiled", "abstract" (state), "batch" (specs)}.
    """
    mesh = mesh_lib.make_mesh(config.mesh, jax.devices()[:1])
    model = model_from_config(config, info)
    trainable = trainable_params(model, config, info)  # finetune.method: frozen leaves
    optimizer = optimizer_lib.make_optimizer(config.train, trainable)
    state = abstract_state(model, optimizer, config, info, mesh)
    sharding = mesh_lib.batch_sharding(mesh)
    shape = (int(config.data.batch_size), *config.data.patch_size)
    batch = {
        "image": jax.ShapeDtypeStruct((*shape, info.in_channels), jnp.float32, sharding=sharding),
        "label": jax.ShapeDtypeStruct(shape, jnp.int32, sharding=sharding),
    }
    step = jax.jit(make_train_step(model, optimizer, config, trainable), donate_argnums=0)
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
