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
from jaxseg.losses import ClassTarget, LossConfig, class_weight, resolve_class_target
from jaxseg.models import peft
from jaxseg.training import finetune, init_from
from jaxseg.training import mesh as mesh_lib
from jaxseg.training import optimizer as optimizer_lib
from jaxseg.training.state import TrainState, init_train_state
from jaxseg.training.steps import make_train_step
from jaxseg.workdir import RunInfo, model_from_config


def training_data(
    config: ml_collections.ConfigDict,
) -> tuple[DatasetSpec, dict[str, tuple[Case, ...]]]:
    """The dataset `config.data.root` declares, checked against the config, and its splits
    (`data.fold`: None for the 7:1:2 split, or a cross-validation fold; `data.train_fraction`
    of the training split's patients)."""
    spec = load_dataset(config.data.root)
    pipeline.check_patch_size(config.data.patch_size, spec)
    splits = splits_lib.make_splits(
        spec.training,
        seed=config.data.split_seed,
        fold=config.data.get("fold"),
        num_folds=config.data.get("num_folds", 5),
    )
    fraction = config.data.get("train_fraction", 1.0)
    if fraction != 1.0:  # a learning curve's row: fewer labelled cases, the same val and test
        train = splits_lib.labelled_subset(splits["train"], fraction, seed=config.data.split_seed)
        splits = {**splits, "train": train}
    return spec, splits


@dataclasses.dataclass(frozen=True)
class TrainingSetup:
    """A run's model, optimiser, mesh, state layout and jitted step.

    abstract_state: the `TrainState` as `jax.ShapeDtypeStruct`s carrying their shardings
    (`mesh.param_rules`); `train_step(state, batch, key) -> (state, metrics)` is jitted over
    the mesh and donates the state. trainable: a bool per parameter leaf
    (`finetune.trainable_mask`), None when everything trains. unlabelled: the batches'
    labels are all 0 and never read (`jaxseg.training.pretrain`). class_target: the
    resolved `loss.class_target` when `loss.class_weight` > 0 trains a class head, else None.
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
    trainable: Any | None = None
    unlabelled: bool = False  # pretraining: batches of image patches, no label read
    class_target: ClassTarget | None = None

    @property
    def state_sharding(self) -> Any:
        return jax.tree_util.tree_map(lambda s: s.sharding, self.abstract_state)

    def init_state(self, key: jax.Array) -> TrainState:
        """A fresh train state from `key`, laid out on the mesh; with `train.init_from`,
        its parameters are matched by path from that source (`jaxseg.training.init_from`),
        the rest fresh, and what was loaded is printed."""
        sample = np.zeros((1, *self.config.data.patch_size, self.info.in_channels), np.float32)
        init = lambda: init_train_state(self.model, self.optimizer, key, sample)
        state = jax.jit(init, out_shardings=self.state_sharding)()
        source = self.config.train.get("init_from")
        if not source:
            return state
        found = init_from.match(
            source,
            init_from.read_source(source, state.params),
            state.params,
            self.config.model.name,
        )
        if jax.process_index() == 0:
            print(found.describe(), flush=True)
        return state.replace(params=init_from.place(found, state.params))

    def finetune_summary(self) -> str:
        """The trainable parameters and the optimiser-state bytes, next to full
        fine-tuning's (`finetune.summary`), as one line."""
        params = self.abstract_state.params
        facts = finetune.summary(params, self.trainable, self.config.train)
        return finetune.describe(peft.method_of(self.config), facts)

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
            foreground_fraction=0.0 if self.unlabelled else data.foreground_fraction,
            num_threads=data.num_threads,
            prefetch=data.prefetch,
            num_workers=data.num_workers,
            preprocessing=Preprocessing.from_config(data, self.info.modalities),
            distance_maps=(
                not self.unlabelled and LossConfig.from_config(self.config.loss).needs_distance_maps
            ),
            labels=not self.unlabelled,
            case_classes=self.class_target is not None and not self.class_target.derived,
        )


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
    trainable = trainable_params(model, config, info)
    optimizer = optimizer_lib.make_optimizer(config.train, trainable)
    abstract = abstract_state(model, optimizer, config, info, mesh)
    target = None
    if class_weight(config.loss) > 0:
        target = resolve_class_target(config.loss, spec.case_classes, dict(spec.labels))
    state_sharding = jax.tree_util.tree_map(lambda s: s.sharding, abstract)
    replicated = mesh_lib.replicated(mesh)
    train_step = jax.jit(
        make_train_step(model, optimizer, config, trainable, target),
        in_shardings=(state_sharding, mesh_lib.batch_sharding(mesh), replicated),
        out_shardings=(state_sharding, replicated),
        donate_argnums=0,
    )
    return TrainingSetup(
        config,
        spec,
        splits,
        info,
        model,
        optimizer,
        mesh,
        abstract,
        train_step,
        trainable,
        class_target=target,
    )


def trainable_params(
    model: nn.Module, config: ml_collections.ConfigDict, info: RunInfo
) -> Any | None:
    """`finetune.trainable_mask` over `model`'s parameter shapes. For lora and adapter with
    `train.init_from` (and `finetune.train_fresh`), the parameters the source lacks train
    too, so the source is read here (also on a resume: it must still exist)."""
    if peft.method_of(config) == "full":
        return None
    sample = jax.ShapeDtypeStruct((1, *config.data.patch_size, info.in_channels), np.float32)
    shapes = jax.eval_shape(lambda x: model.init(jax.random.key(0), x, train=False), sample)
    shapes = shapes["params"]
    source = config.train.get("init_from")
    fresh: tuple[str, ...] = ()
    if source and peft.method_of(config) in ("lora", "adapter") and config.finetune.train_fresh:
        theirs = init_from.read_source(source, shapes)
        fresh = init_from.match(source, theirs, shapes, config.model.name).missing
    return finetune.trainable_mask(shapes, config, fresh)
