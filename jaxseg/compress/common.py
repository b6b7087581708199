"""What the compression commands share: training patches of a run, and writing a new
workdir in the training layout (config.json, run.json, splits.json, checkpoints/<step>/)."""

from __future__ import annotations

import os
from typing import Any

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp

from jaxseg.data import pipeline, preprocess
from jaxseg.data.dataset import load_dataset
from jaxseg.errors import ConfigError, DataError
from jaxseg.workdir import (
    CHECKPOINTS_DIR,
    STATE_ITEM,
    TrainedRun,
    as_path,
    load_run,
    load_splits,
    save_run,
)


def training_patches(
    run: TrainedRun, count: int, *, seed: int = 0, cases: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """`count` random training patches of `run`'s dataset, preprocessed as in training.

    Returns (images f32 `[count, *patch, C]`, labels int32 `[count, *patch]`), drawn from
    the first `cases` training cases of the run's split (all when None), seeded.
    """
    if count < 1:
        raise ConfigError(f"need at least one training patch; got {count}")
    config = run.config
    spec = load_dataset(config.data.root)
    train_ids = list(load_splits(run.workdir)["train"])
    if cases is not None:
        train_ids = train_ids[: max(int(cases), 1)]
    by_id = {c.case_id: c for c in spec.training}
    missing = [i for i in train_ids if i not in by_id]
    if missing:
        raise DataError(
            f"{config.data.root}: training cases {missing[:3]} of {run.workdir}/splits.json are "
            "not in the dataset; point data.root at the dataset the run was trained on"
        )
    prep = preprocess.Preprocessing.from_config(config.data, spec.modalities)
    arrays = pipeline.load_training_arrays(spec, [by_id[i] for i in train_ids], prep)
    rng = np.random.default_rng(seed)
    fg = float(config.data.get("foreground_fraction", 0.33))
    patches = [
        pipeline.sample_patch(arrays[i % len(arrays)], config.data.patch_size, rng, fg)
        for i in range(count)
    ]
    return (
        np.stack([p["image"] for p in patches]),
        np.stack([p["label"] for p in patches]),
    )


def check_new_workdir(out: str | os.PathLike, src: str | os.PathLike) -> None:
    """Refuses an `out` that exists with anything in it, or that is `src`: no command
    overwrites a run."""
    out, src = as_path(out), as_path(src)
    if out == src:
        raise ConfigError(f"--out {out} is the input workdir; choose a new directory")
    if out.exists() and any(out.iterdir()):
        raise ConfigError(f"--out {out} exists and is not empty; choose a new directory")


def write_workdir(
    src: str | os.PathLike,
    out: str | os.PathLike,
    config: ml_collections.ConfigDict,
    params: Any,
    step: int,
) -> None:
    """Writes `out` as a workdir of `config` (run.json and splits.json from `src`) whose
    latest checkpoint at `step` holds `{"params": params}` in the training layout."""
    check_new_workdir(out, src)
    _, info = load_run(src)
    save_run(out, config, info, load_splits(src))
    manager = ocp.CheckpointManager(
        as_path(out) / CHECKPOINTS_DIR,
        options=ocp.CheckpointManagerOptions(max_to_keep=1, create=True),
        item_handlers={STATE_ITEM: ocp.StandardCheckpointHandler()},
    )
    try:
        state = {"params": jax.tree_util.tree_map(np.asarray, params)}
        manager.save(step, args=ocp.args.Composite(**{STATE_ITEM: ocp.args.StandardSave(state)}))
        manager.wait_until_finished()
    finally:
        manager.close()
