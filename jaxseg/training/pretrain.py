"""SimMIM pretraining through the training loop: the same mesh, state layout, checkpoints,
preemption and resume as `jaxseg.train`, with a masked-image-modelling step.

    setup = build_pretraining(config, spec)   # the SimMIM model of config.model, its step
    pretrain(config, workdir)                 # or python -m jaxseg.pretrain

The images are every case of the dataset folder (training and test, less the 7:1:2 test
split; labels are never read) plus the folders in `data.unlabelled`. A pretraining workdir is an ordinary one
(`config.json`, `run.json`, `checkpoints/`), so `train.init_from=WORKDIR` starts a
segmentation run from its encoder: the parameter paths are the segmentation model's
(`jaxseg.models.simmim`), and the decoder, which pretraining lacks, starts fresh.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from jaxseg import augment
from jaxseg.data import folders, pipeline
from jaxseg.data import splits as splits_lib
from jaxseg.data.dataset import Case, DatasetSpec, load_dataset
from jaxseg.data.preprocess import Preprocessing
from jaxseg.errors import DataError
from jaxseg.models import simmim
from jaxseg.training import loop
from jaxseg.training import mesh as mesh_lib
from jaxseg.training import optimizer as optimizer_lib
from jaxseg.training.setup import TrainingSetup, abstract_state
from jaxseg.training.state import TrainState
from jaxseg.training.steps import FINITE, augment_spacing
from jaxseg.workdir import RunInfo, as_path, model_from_config, save_run


def pretraining_cases(config: ml_collections.ConfigDict, spec: DatasetSpec) -> tuple[Case, ...]:
    """Every image case of the dataset (training and test) and of `data.unlabelled`; with
    `pretrain.exclude_test_split` (the default) less the labelled cases the 7:1:2 split of
    `data.split_seed` holds out for testing, so a fine-tuned run is never scored on images
    its encoder saw."""
    held_out: set[str] = set()
    labelled = [c for c in spec.training if c.label_path is not None]
    if config.pretrain.get("exclude_test_split", True) and labelled:
        test = splits_lib.make_splits(labelled, seed=config.data.split_seed)["test"]
        held_out = {c.case_id for c in test}
    cases = [c for c in (*spec.training, *spec.test) if c.case_id not in held_out]
    for folder in config.data.get("unlabelled") or ():
        cases.extend(folders.unlabelled_cases(folder, spec.num_channels))
    if not cases:
        raise DataError(f"{spec.root}: no images to pretrain on (and no data.unlabelled folders).")
    return tuple(cases)


def mask_patch(config: ml_collections.ConfigDict) -> int:
    """`pretrain.mask_patch`, checked (`simmim.check_mask_options`); 0 picks the largest
    valid size up to 32, SimMIM's."""
    patch = tuple(config.data.patch_size)
    size = int(config.pretrain.mask_patch)
    if size == 0:
        valid = [m for m in range(simmim.STEM_STRIDE, 33, simmim.STEM_STRIDE)]
        valid = [m for m in valid if all(s % m == 0 for s in patch)]
        size = max(valid, default=simmim.STEM_STRIDE)
    simmim.check_mask_options(size, config.pretrain.mask_ratio, patch)
    return size


def make_pretrain_step(
    model, optimizer: optax.GradientTransformation, config: ml_collections.ConfigDict
) -> Callable:
    """`step(state, batch, key) -> (state, metrics)`: augment (as training does) -> random
    block mask -> reconstruction -> L1 on the masked voxels -> optax. batch["image"]
    `[B, *patch, C]`; the key is folded with the step, so a resumed run repeats it."""
    block = model.mask_patch
    ratio = float(config.pretrain.mask_ratio)

    def loss_fn(params, image, mask, dropout_key):
        recon = model.apply(
            {"params": params}, image, mask, train=True, rngs={"dropout": dropout_key}
        )
        return simmim.masked_l1(recon, image, mask, block)

    def step(state: TrainState, batch: dict, key: jax.Array):
        key = jax.random.fold_in(key, state.step)
        aug_key, mask_key, dropout_key = jax.random.split(key, 3)
        image = batch["image"]
        image, _ = augment.augment_batch(
            aug_key, image, batch["label"], config.augment, spacing=augment_spacing(config)
        )
        grid = tuple(s // block for s in image.shape[1:-1])
        mask = simmim.random_block_mask(mask_key, batch=image.shape[0], grid=grid, ratio=ratio)
        loss, grads = jax.value_and_grad(loss_fn)(state.params, image, mask, dropout_key)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        metrics = {"loss": loss, "grad_norm": optax.global_norm(grads)}
        metrics[FINITE] = jnp.all(jnp.isfinite(jnp.stack(list(metrics.values()))))
        return state.replace(step=state.step + 1, params=params, opt_state=opt_state), metrics

    return step


def build_pretraining(
    config: ml_collections.ConfigDict, spec: DatasetSpec, *, devices=None
) -> TrainingSetup:
    """The SimMIM model of `config.model`, its optimiser, mesh, state layout and jitted
    step, over the images `pretraining_cases` finds."""
    info = RunInfo.from_spec(spec)
    model = simmim.simmim_model(
        model_from_config(config, info), mask_patch(config), int(config.pretrain.head_dim)
    )
    mesh = mesh_lib.make_mesh(config.mesh, devices)
    mesh_lib.check_batch_size(config.data.batch_size, mesh, 1)
    optimizer = optimizer_lib.make_optimizer(config.train)
    abstract = abstract_state(model, optimizer, config, info, mesh)
    state_sharding = jax.tree_util.tree_map(lambda s: s.sharding, abstract)
    replicated = mesh_lib.replicated(mesh)
    train_step = jax.jit(
        make_pretrain_step(model, optimizer, config),
        in_shardings=(state_sharding, mesh_lib.batch_sharding(mesh), replicated),
        out_shardings=(state_sharding, replicated),
        donate_argnums=0,
    )
    splits = {"train": pretraining_cases(config, spec), "val": (), "test": ()}
    return TrainingSetup(
        config, spec, splits, info, model, optimizer, mesh, abstract, train_step, unlabelled=True
    )


class Reconstructions:
    """At each evaluation step: the masked L1 of one fixed batch (a patch of each of the
    first four cases, a fixed mask) and a PNG per example of its middle slice, channel 0 — input,
    masked input, reconstruction side by side — in TensorBoard (`pretrain/...`)."""

    best_metric = None  # pretraining keeps the latest checkpoints only

    def __init__(self, setup: TrainingSetup):
        data, cases = setup.config.data, setup.splits["train"][:4]
        prep = Preprocessing.from_config(data, setup.info.modalities)
        arrays = pipeline.load_training_arrays(setup.spec, cases, prep, labels=False)
        rng = np.random.default_rng(setup.config.seed)
        patches = [pipeline.sample_patch(a, data.patch_size, rng, 0.0)["image"] for a in arrays]
        self.image = np.stack(patches)
        model = setup.model
        grid = tuple(s // model.mask_patch for s in self.image.shape[1:-1])
        self.mask = simmim.random_block_mask(
            jax.random.key(0),
            batch=len(self.image),
            grid=grid,
            ratio=setup.config.pretrain.mask_ratio,
        )
        self.apply = jax.jit(lambda p, x, m: model.apply({"params": p}, x, m))
        self.block = model.mask_patch
        self.enabled = True

    def __call__(self, params, step: int, writer) -> dict:
        params = jax.device_get(params)
        recon = np.asarray(self.apply(params, self.image, self.mask))
        l1 = float(simmim.masked_l1(recon, self.image, self.mask, self.block))
        if writer is not None:
            voxels = np.asarray(simmim.block_mask_voxels(self.mask, self.block))
            for i, (x, r, m) in enumerate(zip(self.image, recon, voxels)):
                writer.add_image(
                    f"pretrain/reconstruction_{i}", _panel(x, r, m), step, dataformats="HW"
                )
        return {"sample_l1": l1}


def _panel(image: np.ndarray, recon: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """`[H, 3W]` float in [0, 1]: input, masked input (masked voxels 0), reconstruction of
    the middle slice along the last spatial axis (3D), channel 0."""
    if image.ndim == 4:
        z = image.shape[2] // 2
        image, recon, mask = image[:, :, z], recon[:, :, z], mask[:, :, z]
    x, r = image[..., 0], recon[..., 0]
    lo, hi = float(np.min(x)), float(np.max(x))
    scale = lambda v: np.clip((v - lo) / max(hi - lo, 1e-6), 0.0, 1.0)
    return np.concatenate([scale(x), np.where(mask, 0.0, scale(x)), scale(r)], axis=1)


def pretrain(
    config: ml_collections.ConfigDict, workdir: str | os.PathLike, *, stop_at: int | None = None
) -> dict:
    """Pretrains (or resumes) the SimMIM run in `workdir`; returns the last logged metrics."""
    workdir = as_path(workdir)
    spec = load_dataset(config.data.root)
    pipeline.check_patch_size(config.data.patch_size, spec)
    setup = build_pretraining(config, spec)
    save_run(
        workdir,
        config,
        setup.info,
        {name: [c.case_id for c in cases] for name, cases in setup.splits.items()},
    )
    return loop.run_training(setup, workdir, lambda: Reconstructions(setup), stop_at=stop_at)
