"""A tiny "trained" lightseg run (random init parameters, written in the training layout)
for the compression commands."""

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest

from jaxseg.data.dataset import load_dataset
from jaxseg.data.splits import make_splits
from jaxseg.defaults import phantom_2d_config
from jaxseg.workdir import RunInfo, model_from_config, save_run

# 2 stages, 4 heads of width 4 in stage 0, 2 of width 8 in stage 1; MLP 32 and 64 channels.
TINY_ARGS = dict(
    embed_dims=(16, 16),
    depths=(2, 1),
    num_heads=(4, 2),
    stem_dims=(4, 8),
    mlp_ratio=2.0,
    window_sizes=(4, 4),
)


def tiny_config(root):
    c = phantom_2d_config("lightseg_tiny")
    c.data.root = str(root)
    c.data.patch_size = (32, 32)
    for k, v in TINY_ARGS.items():
        c.model.args[k] = v
    return c


def write_run(workdir, config, seed=0):
    """A workdir as training writes it, with init parameters at step 1 ("latest" only)."""
    spec = load_dataset(config.data.root)
    splits = make_splits(spec.training, seed=config.data.split_seed)
    info = RunInfo.from_spec(spec)
    save_run(workdir, config, info, {k: [c.case_id for c in v] for k, v in splits.items()})
    model = model_from_config(config, info)
    x = jnp.zeros((1, *config.data.patch_size, info.in_channels))
    params = jax.jit(lambda k: model.init(k, x, train=False)["params"])(jax.random.key(seed))
    # Random-init norms and biases are 1 / 0: perturb them so slicing errors would show.
    leaves, tree = jax.tree_util.tree_flatten(params)
    keys = jax.random.split(jax.random.key(seed + 1), len(leaves))
    leaves = [
        l + 0.1 * jax.random.normal(k, l.shape) if l.ndim == 1 else l for l, k in zip(leaves, keys)
    ]
    params = jax.tree_util.tree_unflatten(tree, leaves)
    manager = ocp.CheckpointManager(
        workdir / "checkpoints",
        options=ocp.CheckpointManagerOptions(create=True),
        item_handlers={"state": ocp.StandardCheckpointHandler()},
    )
    state = {"params": jax.tree_util.tree_map(np.asarray, params), "step": np.int32(1)}
    manager.save(1, args=ocp.args.Composite(state=ocp.args.StandardSave(state)))
    manager.wait_until_finished()
    manager.close()
    return model, params


@pytest.fixture(scope="session")
def tiny_run(phantom_2d, tmp_path_factory):
    """(workdir, model, params) of a tiny lightseg run on the shared 2D phantoms; read-only
    (the commands write their outputs elsewhere)."""
    workdir = tmp_path_factory.mktemp("compress") / "run"
    model, params = write_run(workdir, tiny_config(phantom_2d))
    return workdir, model, params
