"""Everything a training run is built from, in one place: data, model, mesh, state, step.

The training loop and the benchmarks build their runs here, so what is benchmarked is what
trains:

    spec, splits = training_data(config)            # dataset.json, checked, and the splits
    setup = build_training(config, spec, splits)    # model, optimiser, mesh, state layout, step
    state = setup.init_state(key)                   # or Checkpoints.restore(setup.abstract_state)
    batches = setup.train_batches()                 # this process's batches, from step 0
    state, metrics = setup.train_step(state, mesh_lib.global_batch(next(batches), mesh), key)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import ml_collections
import numpy as np
import optax
from jax.sharding import Mesh

from jaxseg.data import pipeline
from jaxseg.data import splits as splits_lib
from jaxseg.data.dataset import Case, DatasetSpec, load_dataset
from jaxseg.data.preprocess import Preprocessing
from jaxseg.errors import ConfigError
from jaxseg.losses import LossConfig
from jaxseg.training import mesh as mesh_lib
from jaxseg.training import optimizer as optimizer_lib
from jaxseg.training.state import TrainState, init_train_state
from jaxseg.training.steps import make_train_step
from jaxseg.workdir import RunInfo, load_trained, model_from_config


def training_data(
    config: ml_collections.ConfigDict,
) -> tuple[DatasetSpec, dict[str, tuple[Case, ...]]]:
    """The dataset `config.data.root` declares, checked against the config, and its splits
    (`data.fold`: None for the 7:1:2 split, or a cross-validation fold)."""
    spec = load_dataset(config.data.root)
    pipeline.check_patch_size(config.data.patch_size, spec)
    splits = splits_lib.make_splits(
        spec.training,
        seed=config.data.split_seed,
        fold=config.data.get("fold"),
        num_folds=config.data.get("num_folds", 5),
    )
    return spec, splits


@dataclasses.dataclass(frozen=True)
class TrainingSetup:
    """A run's model, optimiser, mesh, state layout and jitted step.

    abstract_state: the `TrainState` as `jax.ShapeDtypeStruct`s carrying their shardings
    (`mesh.param_rules`); `train_step(state, batch, key) -> (state, metrics)` is jitted over
    the mesh and donates the state.
    """

    config: ml_collections.ConfigDict
    spec: DatasetSpec
    splits: dict[str, tuple[Case, ...]]
    info: RunInfo
    model: nn.Module
    optimizer: optax.GradientTransformation
    mesh: Mesh
    abstract_state: TrainState
    train_step: Callable

    @property
    def state_sharding(self) -> Any:
        return jax.tree_util.tree_map(lambda s: s.sharding, self.abstract_state)

    def init_state(self, key: jax.Array) -> TrainState:
        """A fresh train state from `key`, laid out on the mesh; with `train.init_from`,
        its parameters are that run's (`initial_params`)."""
        sample = np.zeros((1, *self.config.data.patch_size, self.info.in_channels), np.float32)
        init = lambda: init_train_state(self.model, self.optimizer, key, sample)
        state = jax.jit(init, out_shardings=self.state_sharding)()
        source = self.config.train.get("init_from")
        if not source:
            return state
        return state.replace(params=initial_params(source, state.params))

    def train_batches(self, start_step: int = 0) -> pipeline.BatchIterator:
        """This process's training batches from `start_step` (close it when done)."""
        data = self.config.data
        return pipeline.train_batches(
            self.spec,
            self.splits["train"],
            patch_size=tuple(data.patch_size),
            batch_size=data.batch_size,
            seed=self.config.seed,
            start_step=start_step,
            foreground_fraction=data.foreground_fraction,
            num_threads=data.num_threads,
            prefetch=data.prefetch,
            num_workers=data.num_workers,
            preprocessing=Preprocessing.from_config(data, self.info.modalities),
            distance_maps=LossConfig.from_config(self.config.loss).needs_distance_maps,
        )


def initial_params(source: str, like: Any) -> Any:
    """The trained parameters of the workdir `source`, laid out as `like` (this run's
    freshly initialised, sharded parameters): every leaf's path and shape must match."""
    theirs = load_trained(source).params
    flat_like = dict(jax.tree_util.tree_leaves_with_path(like))
    flat_theirs = dict(jax.tree_util.tree_leaves_with_path(theirs))
    for path in sorted(flat_like.keys() | flat_theirs.keys(), key=jax.tree_util.keystr):
        a, b = flat_like.get(path), flat_theirs.get(path)
        if a is None or b is None or a.shape != np.shape(b):
            name = jax.tree_util.keystr(path)
            raise ConfigError(
                f"train.init_from={source}: parameter {name} is "
                f"{'missing' if b is None else np.shape(b)} there but "
                f"{'absent' if a is None else a.shape} in this model; init_from needs the "
                "same architecture (model.name and model.args)"
            )
    # make_array_from_callback: each process places only its own shards (multi-host safe).
    place = lambda path, a: jax.make_array_from_callback(
        a.shape, a.sharding, lambda idx: np.asarray(flat_theirs[path], a.dtype)[idx]
    )
    return jax.tree_util.tree_map_with_path(place, like)


def abstract_state(
    model: nn.Module,
    optimizer: optax.GradientTransformation,
    config: ml_collections.ConfigDict,
    info: RunInfo,
    mesh: Mesh,
) -> TrainState:
    """Shapes, dtypes and shardings (`mesh.param_rules`) of the train state, uncomputed."""
    sample = jax.ShapeDtypeStruct((1, *config.data.patch_size, info.in_channels), np.float32)
    shapes = jax.eval_shape(
        lambda x: init_train_state(model, optimizer, jax.random.key(0), x), sample
    )
    shardings = mesh_lib.state_shardings(shapes, mesh, config.mesh)
    return jax.tree_util.tree_map(
        lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh), shapes, shardings
    )


def build_training(
    config: ml_collections.ConfigDict,
    spec: DatasetSpec,
    splits: dict[str, tuple[Case, ...]],
    *,
    devices=None,
) -> TrainingSetup:
    """The model, optimiser, mesh (over `devices`, default all), state layout and the
    jitted train step of the run `config` describes, for `spec`'s data."""
    info = RunInfo.from_spec(spec)
    model = model_from_config(config, info)
    mesh = mesh_lib.make_mesh(config.mesh, devices)
    mesh_lib.check_batch_size(config.data.batch_size, mesh, config.train.get("grad_accum_steps", 1))
    optimizer = optimizer_lib.make_optimizer(config.train)
    abstract = abstract_state(model, optimizer, config, info, mesh)
    state_sharding = jax.tree_util.tree_map(lambda s: s.sharding, abstract)
    replicated = mesh_lib.replicated(mesh)
    train_step = jax.jit(
        make_train_step(model, optimizer, config),
        in_shardings=(state_sharding, mesh_lib.batch_sharding(mesh), replicated),
        out_shardings=(state_sharding, replicated),
        donate_argnums=0,
    )
    return TrainingSetup(config, spec, splits, info, model, optimizer, mesh, abstract, train_step)
