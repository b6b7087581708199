"""The training loop: data -> jitted step over the mesh -> checkpoints and logs in a workdir.

Rerunning `train(config, workdir)` resumes from the latest checkpoint: the step, the
optimiser state and the learning-rate schedule continue where they were, and the input
pipeline yields exactly the batches an unbroken run would have seen (batch i is a function
of the seed and i alone). Raising `train.steps` and rerunning extends a finished run.
"""

from __future__ import annotations

import math
from pathlib import Path

import jax
import ml_collections
import numpy as np
import tqdm

from jaxseg import evaluation
from jaxseg.data import dataset as dataset_lib
from jaxseg.data import pipeline
from jaxseg.errors import ConfigError, JaxsegError
from jaxseg.run import RunInfo, abstract_state, build_model, save_run
from jaxseg.training import checkpoint
from jaxseg.training import mesh as mesh_lib
from jaxseg.training import optimizer as optimizer_lib
from jaxseg.training.state import init_train_state
from jaxseg.training.steps import make_train_step


class NonFiniteLossError(JaxsegError):
    """The loss or the gradients became NaN or Inf."""


def train(
    config: ml_collections.ConfigDict, workdir: str | Path, *, stop_at: int | None = None
) -> dict:
    """Trains (or resumes) the run in `workdir`; returns the last logged metrics.

    stop_at: leave after this step with a checkpoint, as a preemptible job would; the
    schedule still runs to `train.steps`, and rerunning continues.
    """
    workdir = Path(workdir)
    spec = dataset_lib.load_dataset(config.data.root)
    if len(config.data.patch_size) != spec.dims:
        raise ConfigError(
            f"data.patch_size={tuple(config.data.patch_size)} has "
            f"{len(config.data.patch_size)} axes but {spec.root} is "
            f"{spec.dims}D"
        )
    splits = dataset_lib.split_cases(spec.training, seed=config.data.split_seed)
    info = RunInfo.from_spec(spec)
    save_run(
        workdir, config, info, {name: [c.case_id for c in cases] for name, cases in splits.items()}
    )

    model = build_model(config, info)
    mesh = mesh_lib.make_mesh(config.mesh)
    mesh_lib.check_batch_size(config.data.batch_size, mesh, config.train.grad_accum_steps)
    optimizer = optimizer_lib.make_optimizer(config.train)
    schedule = optimizer_lib.learning_rate_schedule(config.train)
    init_key, step_key = jax.random.split(jax.random.key(config.seed))

    abstract = abstract_state(model, optimizer, config, info, mesh)
    state_sharding = jax.tree_util.tree_map(lambda s: s.sharding, abstract)
    ckpts = checkpoint.Checkpoints(workdir, keep=config.train.keep_checkpoints)
    batches = pipeline.train_batches(
        spec,
        splits["train"],
        patch_size=tuple(config.data.patch_size),
        batch_size=config.data.batch_size,
        seed=config.seed,
        foreground_fraction=config.data.foreground_fraction,
        num_threads=config.data.num_threads,
        prefetch=config.data.prefetch,
        num_workers=config.data.num_workers,
        ct_window=tuple(config.data.ct_window),
    )
    start = ckpts.latest_step()
    if start is None:
        sample = np.zeros((1, *config.data.patch_size, info.in_channels), np.float32)
        state = jax.jit(
            lambda: init_train_state(model, optimizer, init_key, sample),
            out_shardings=state_sharding,
        )()
        start = 0
    else:
        state = ckpts.restore(abstract, batches)  # also moves `batches` to step `start`
        if jax.process_index() == 0:
            print(f"Resuming {workdir} from step {start}.")
    total = config.train.steps
    if start >= total:
        if jax.process_index() == 0:
            print(
                f"{workdir} is already trained to step {start} (train.steps={total}); "
                "raise --config.train.steps to train further."
            )
        ckpts.close()
        batches.close()
        return {"step": start}

    replicated = mesh_lib.replicated(mesh)
    train_step = jax.jit(
        make_train_step(model, optimizer, config),
        in_shardings=(state_sharding, mesh_lib.batch_sharding(mesh), replicated),
        out_shardings=(state_sharding, replicated),
        donate_argnums=0,
    )
    validation = _Validation(config, spec, splits["val"], model, info)
    writer = _summary_writer(workdir)
    train_cfg = config.train
    last, metrics = {}, None
    try:
        progress = tqdm.tqdm(
            range(start, total),
            initial=start,
            total=total,
            desc="train",
            disable=jax.process_index() != 0,
            mininterval=2,
        )
        for step in progress:
            if stop_at is not None and step >= stop_at:
                if metrics is not None:
                    _finite(metrics, step, workdir)
                ckpts.save(state, batches)
                break
            batch = mesh_lib.global_batch(next(batches), mesh)
            state, metrics = train_step(state, batch, step_key)
            done = step + 1
            log_now = done % train_cfg.log_every == 0 or done == total
            eval_now = (done % train_cfg.eval_every == 0 or done == total) and validation.cases
            save_now = done % train_cfg.checkpoint_every == 0 or done == total
            if not (log_now or eval_now or save_now):
                continue
            # Nothing non-finite is logged as progress or saved over a good checkpoint.
            last = {**last, **_finite(metrics, done, workdir)}
            if log_now:
                last["learning_rate"] = float(schedule(done))
                _log(writer, done, "train", last)
                progress.set_postfix(loss=f"{last['loss']:.4f}")
            if eval_now:
                last["val_dice"] = validation(state.params)
                _log(writer, done, "val", {"dice": last["val_dice"]})
                progress.write(f"step {done}: validation Dice {last['val_dice']:.4f}")
                ckpts.save(state, batches, val_dice=last["val_dice"], best=True)
            if save_now:
                ckpts.save(state, batches)
    finally:
        ckpts.close()
        batches.close()  # joins grain's worker processes (data.num_workers > 0)
        if writer is not None:
            writer.close()
    last["step"] = int(jax.device_get(state.step))
    return last


def _finite(metrics, step: int, workdir: Path) -> dict:
    values = {k: float(v) for k, v in jax.device_get(metrics).items()}
    if not all(math.isfinite(v) for v in values.values()):
        raise NonFiniteLossError(
            f"non-finite loss or gradient at step {step}: {values}. The last good checkpoint "
            f"in {workdir / 'checkpoints'} is kept; lower train.learning_rate, raise "
            "train.warmup_steps or check the data, then rerun to resume from it."
        )
    return values


class _Validation:
    """Mean foreground Dice over (up to `eval.max_val_cases`) validation cases."""

    def __init__(self, config, spec, cases, model, info: RunInfo):
        self.cases = list(
            pipeline.eval_cases(
                spec, cases[: config.eval.max_val_cases], ct_window=tuple(config.data.ct_window)
            )
        )
        self.model, self.config, self.info = model, config, info

    def __call__(self, params) -> float:
        predictor = evaluation.window_predictor(self.model, params)
        rows, _ = evaluation.evaluate_cases(
            self.cases,
            predictor,
            patch_size=self.config.data.patch_size,
            num_classes=self.info.num_classes,
            labels=self.info.labels,
            eval_config=self.config.eval,
        )
        return float(np.mean([r["dice"] for r in rows]))


def _summary_writer(workdir: Path):
    if jax.process_index() != 0:
        return None
    import tensorboardX  # Only the writing process needs it.

    return tensorboardX.SummaryWriter(str(workdir / "tensorboard"))


def _log(writer, step: int, prefix: str, values: dict) -> None:
    if writer is None:
        return
    for name, value in values.items():
        writer.add_scalar(f"{prefix}/{name}", value, step)
    writer.flush()
