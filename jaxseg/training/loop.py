"""The training loop: data -> jitted step over the mesh -> checkpoints and logs in a workdir.

Rerunning `train(config, workdir)` resumes from the latest checkpoint: the step, the
optimiser state and the learning-rate schedule continue where they were, and the input
pipeline yields exactly the batches an unbroken run would have seen (batch i is a function
of the seed and i alone). Raising `train.steps` and rerunning extends a finished run.

SIGTERM (preemption) saves a checkpoint at a step every process agrees on and returns with
`"preempted": True` (`distributed.PreemptionWatch`). A non-finite loss stops the run at
the step that made it; a checkpoint that cannot be written is a `CheckpointWriteError`.
Either way the input pipeline, the writer and the checkpoint managers are closed.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
from collections.abc import Callable
from typing import Any, Protocol

import jax
import ml_collections
import numpy as np
import tqdm
from etils import epath

from jaxseg import evaluation, inference
from jaxseg.data import pipeline
from jaxseg.data.preprocess import Preprocessing
from jaxseg.errors import JaxsegError
from jaxseg.training import checkpoint, distributed
from jaxseg.training import mesh as mesh_lib
from jaxseg.training import optimizer as optimizer_lib
from jaxseg.training.setup import TrainingSetup, build_training, training_data
from jaxseg.training.steps import FINITE
from jaxseg.workdir import CHECKPOINTS_DIR, RunInfo, as_path, save_run


class NonFiniteLossError(JaxsegError):
    """The loss or the gradients became NaN or Inf."""


def train(
    config: ml_collections.ConfigDict, workdir: str | os.PathLike, *, stop_at: int | None = None
) -> dict:
    """Trains (or resumes) the run in `workdir`; returns the last logged metrics.

    stop_at: leave after this step with a checkpoint, as a preemptible job would; the
    schedule still runs to `train.steps`, and rerunning continues.
    """
    workdir = as_path(workdir)
    spec, splits = training_data(config)
    save_run(
        workdir,
        config,
        RunInfo.from_spec(spec),
        {name: [c.case_id for c in cases] for name, cases in splits.items()},
    )
    setup = build_training(config, spec, splits)
    if jax.process_index() == 0:
        print(setup.finetune_summary(), flush=True)  # what trains, and its optimiser memory
    validation = lambda: _Validation(config, spec, splits["val"], setup.model, setup.info)
    return run_training(setup, workdir, validation, stop_at=stop_at)


def run_training(
    setup: TrainingSetup,
    workdir: epath.Path,
    evaluator: Callable[[], Evaluator],
    *,
    stop_at: int | None = None,
) -> dict:
    """The loop of `train` (and of `jaxseg.training.pretrain`) over a built setup: restore
    or initialise, step, evaluate, checkpoint, until `train.steps`. `evaluator()` is made
    only when there are steps left to run."""
    config = setup.config
    schedule = optimizer_lib.learning_rate_schedule(config.train)
    init_key, step_key = jax.random.split(jax.random.key(config.seed))

    with contextlib.ExitStack() as cleanup:
        # Everything opened is closed on every way out (a full disk included): grain's
        # worker processes are joined and the TensorBoard writer flushed.
        ckpts = checkpoint.Checkpoints(workdir, keep=config.train.keep_checkpoints)
        cleanup.callback(ckpts.close)
        batches = setup.train_batches()
        cleanup.callback(batches.close)  # joins grain's worker processes (data.num_workers)
        start = ckpts.latest_step()
        if start is None:
            state = setup.init_state(init_key)
            start = 0
        else:
            state = ckpts.restore(setup.abstract_state, batches)  # also moves `batches`
            if jax.process_index() == 0:
                print(f"Resuming {workdir} from step {start}.")
        total = config.train.steps
        if start >= total:
            if jax.process_index() == 0:
                print(
                    f"{workdir} is already trained to step {start} (train.steps={total}); "
                    "raise --config.train.steps to train further."
                )
            return {"step": start}
        validation = evaluator()
        writer = _summary_writer(workdir)
        if writer is not None:
            cleanup.callback(writer.close)
        preemption = cleanup.enter_context(distributed.PreemptionWatch())
        run = _Run(setup, batches, ckpts, validation, writer, preemption, schedule, workdir)
        last = _run_steps(run, state, start, total, step_key, stop_at)
    if last.get("preempted"):  # every process says so: each one's log shows where it stopped
        print(
            f"Preempted (SIGTERM): process {jax.process_index()} saved step {last['step']} "
            f"to {workdir / CHECKPOINTS_DIR / str(last['step'])}; rerun the same command "
            "to resume from it.",
            flush=True,
        )
    return last


@dataclasses.dataclass(frozen=True)
class _Run:
    """What the steps of one `train` call write to and read from."""

    setup: TrainingSetup
    batches: pipeline.BatchIterator
    ckpts: checkpoint.Checkpoints
    validation: Evaluator
    writer: Any  # tensorboardX.SummaryWriter on process 0, else None
    preemption: distributed.PreemptionWatch
    schedule: Callable[[int], Any]
    workdir: epath.Path


def _run_steps(
    run: _Run, state, start: int, total: int, step_key: jax.Array, stop_at: int | None
) -> dict:
    """Steps `start` .. `total`; returns the last logged metrics with the step reached.

    Non-finite losses are caught at the step that made them without a host sync per step:
    each step returns a device flag, read one step late, once the next step is queued.
    """
    mesh, train_cfg, workdir = run.setup.mesh, run.setup.config.train, run.workdir
    last, metrics, pending = {}, None, None  # pending: (step, flag, metrics), flag unread
    progress = tqdm.tqdm(
        range(start, total),
        initial=start,
        total=total,
        desc="train",
        disable=jax.process_index() != 0,
        mininterval=2,
    )
    for step in progress:
        preempted = run.preemption.reached(step)
        if preempted or (stop_at is not None and step >= stop_at):
            _check_pending(pending, workdir)
            run.ckpts.save(state, run.batches)
            last["preempted"] = preempted
            break
        batch = mesh_lib.global_batch(next(run.batches), mesh)
        state, metrics = run.setup.train_step(state, batch, step_key)
        finite = metrics.pop(FINITE)
        done = step + 1
        # The previous step's flag is ready (or nearly): this one is queued behind it.
        _check_pending(pending, workdir)
        pending = (done, finite, metrics)
        log_now = done % train_cfg.log_every == 0 or done == total
        eval_now = (done % train_cfg.eval_every == 0 or done == total) and run.validation.enabled
        save_now = done % train_cfg.checkpoint_every == 0 or done == total
        if not (log_now or eval_now or save_now):
            continue
        # Nothing non-finite is logged as progress or saved over a good checkpoint.
        _check_pending(pending, workdir)
        pending = None
        last = {**last, **_finite(metrics, done, workdir)}
        if log_now:
            last["learning_rate"] = float(run.schedule(done))
            _log(run.writer, done, "train", last)
            progress.set_postfix(loss=f"{last['loss']:.4f}")
        if eval_now:
            measured = run.validation(state.params, done, run.writer)
            last.update(measured)
            # TensorBoard's val/dice, val/sample_l1, ...; the log line "validation dice 0.8123".
            named = {k.removeprefix("val_"): v for k, v in measured.items()}
            _log(run.writer, done, "val", named)
            text = ", ".join(f"{k.replace('_', ' ')} {v:.4f}" for k, v in named.items())
            progress.write(f"step {done}: validation {text}")
            best = run.validation.best_metric
            if best is not None:
                run.ckpts.save(state, run.batches, val_dice=measured[best], best=True)
        if save_now:
            run.ckpts.save(state, run.batches)
    else:
        _check_pending(pending, workdir)
    last["step"] = int(jax.device_get(state.step))
    return last


def _check_pending(pending, workdir: epath.Path) -> None:
    """NonFiniteLossError naming the step `pending` = (step, flag, metrics) ran, if its
    flag says the loss or a gradient was not finite."""
    if pending is not None and not bool(pending[1]):
        step, _, metrics = pending
        _finite(metrics, step, workdir)
        raise NonFiniteLossError(f"non-finite gradient at step {step}")  # inf only in grads


def _finite(metrics, step: int, workdir: epath.Path) -> dict:
    values = {k: float(v) for k, v in jax.device_get(metrics).items()}
    if not all(math.isfinite(v) for v in values.values()):
        raise NonFiniteLossError(
            f"non-finite loss or gradient at step {step}: {values}. The last good checkpoint "
            f"in {workdir / CHECKPOINTS_DIR} is kept; lower train.learning_rate, raise "
            "train.warmup_steps or check the data, then rerun to resume from it."
        )
    return values


class Evaluator(Protocol):
    """What the loop runs every `train.eval_every` steps, when `enabled`: metrics of the
    params by name (logged under `val/`); `best_metric` names the one (higher is better)
    the best checkpoint is kept by, or is None for no best checkpoint."""

    enabled: bool
    best_metric: str | None

    def __call__(self, params, step: int, writer) -> dict[str, float]: ...


class _Validation:
    """Mean foreground Dice over (up to `eval.max_val_cases`) validation cases."""

    best_metric = "val_dice"

    def __init__(self, config, spec, cases, model, info: RunInfo):
        self.cases = list(pipeline.eval_cases(spec, cases[: config.eval.max_val_cases]))
        self.enabled = bool(self.cases)
        self.preprocessing = Preprocessing.from_config(config.data, info.modalities)
        self.model, self.config, self.info = model, config, info

    def __call__(self, params, step: int, writer) -> dict[str, float]:
        return {"val_dice": self.dice(params)}

    def dice(self, params) -> float:
        rows, _ = evaluation.evaluate_cases(
            self.cases,
            inference.window_predictor(self.model, params),
            window=inference.window_options(self.config, self.info.num_classes),
            labels=self.info.labels,
            preprocessing=self.preprocessing,  # no TTA: a quick pseudo-Dice, as nnU-Net's
        )
        return float(np.mean([r["dice"] for r in rows]))


def _summary_writer(workdir: epath.Path):
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
