"""Writing and resuming a run's checkpoints: the latest K, plus the best by validation Dice.

The layout is the workdir's (`jaxseg.workdir`): `checkpoints/<step>/{state,data}` holds the
latest `keep` train states with the grain iterator state of every process, `best/<step>/
state` the train state with the highest validation Dice. Inference reads parameters back
with `jaxseg.workdir.load_trained`, which needs none of this module.

orbax writes each checkpoint into a temporary folder and renames it when complete, so a
run killed mid-write leaves no checkpoint that `latest_step` would choose. A write that
fails (a full disk, a read-only or vanished folder), in this thread or in orbax's
background one, is raised as `CheckpointWriteError`, naming the path; the checkpoints
before it are untouched, since orbax deletes old ones only after a new one is committed.
"""

from __future__ import annotations

import contextlib
import errno
import os
from typing import Any

import grain
import jax
import orbax.checkpoint as ocp

from jaxseg import workdir as workdir_lib
from jaxseg.errors import JaxsegError
from jaxseg.workdir import BEST, BEST_METRIC, DATA_ITEM, LATEST, STATE_ITEM


class CheckpointWriteError(JaxsegError):
    """A checkpoint could not be written (no space, no permission, a missing folder)."""


def _os_error(e: BaseException) -> OSError | None:
    """The OSError that caused `e`, if any: orbax re-raises background-thread errors, at
    times wrapped."""
    seen = set()
    while e is not None and id(e) not in seen:
        if isinstance(e, OSError):
            return e
        seen.add(id(e))
        e = e.__cause__ or e.__context__
    return None


class Checkpoints:
    """The two checkpoint managers of one workdir, for a training run."""

    def __init__(self, workdir: str | os.PathLike, keep: int = 3):
        self.workdir = workdir_lib.as_path(workdir)
        self._failed = False  # a write failed and was raised
        common = dict(create=True, cleanup_tmp_directories=True)
        self.latest = ocp.CheckpointManager(
            workdir_lib.checkpoint_dir(self.workdir, LATEST),
            options=ocp.CheckpointManagerOptions(max_to_keep=keep, **common),
            item_handlers={
                STATE_ITEM: ocp.StandardCheckpointHandler(),
                DATA_ITEM: grain.checkpoint.CheckpointHandler(),
            },
        )
        self.best = ocp.CheckpointManager(
            workdir_lib.checkpoint_dir(self.workdir, BEST),
            options=workdir_lib.best_options(**common),
            item_handlers={STATE_ITEM: ocp.StandardCheckpointHandler()},
        )

    def latest_step(self) -> int | None:
        return self.latest.latest_step()

    def save(
        self,
        state: Any,
        data_iterator=None,
        *,
        val_dice: float | None = None,
        best: bool = False,
    ) -> None:
        """Saves `state` (and the input iterator's position) as the latest; with `best`,
        also offers the state to the best-Dice slot."""
        step = int(jax.device_get(state.step))
        with self._write_errors(step):
            self._save(step, state, data_iterator, val_dice, best)

    def _save(self, step, state, data_iterator, val_dice, best) -> None:
        # The two managers' asynchronous commits each run cross-process barriers in a
        # background thread; running them concurrently can interleave those barriers
        # differently on different hosts and deadlock a multi-host run. One at a time.
        if self.latest.latest_step() != step:
            items = {STATE_ITEM: ocp.args.StandardSave(state)}
            if data_iterator is not None:
                items[DATA_ITEM] = grain.checkpoint.CheckpointSave(data_iterator)
            self.best.wait_until_finished()
            self.latest.save(step, args=ocp.args.Composite(**items), force=True)
        if best:
            self.latest.wait_until_finished()
            self.best.save(
                step,
                args=ocp.args.Composite(**{STATE_ITEM: ocp.args.StandardSave(state)}),
                metrics={BEST_METRIC: float(val_dice)},
                force=True,
            )

    def restore(self, abstract_state: Any, data_iterator=None, *, which: str = LATEST) -> Any:
        """Restores into the shapes, dtypes and shardings of `abstract_state`, and (from the
        latest checkpoint) moves `data_iterator` to where the run was.

        The shardings may differ from the ones the checkpoint was written with: orbax
        reshards, so a checkpoint from 8 devices restores on 1 and back.
        """
        manager = self.latest if which == LATEST else self.best
        step = workdir_lib.checkpoint_step(manager, which)
        if step is None:
            raise JaxsegError(
                f"no {which} checkpoint in {self.workdir}; train first with "
                f"python -m jaxseg.train --workdir {self.workdir}"
            )
        items = {STATE_ITEM: ocp.args.StandardRestore(abstract_state)}
        if data_iterator is not None:
            items[DATA_ITEM] = grain.checkpoint.CheckpointRestore(data_iterator)
        return manager.restore(step, args=ocp.args.Composite(**items))[STATE_ITEM]

    def close(self) -> None:
        """Waits for the writes under way and closes both managers (both, even if the
        first fails)."""
        try:
            with self._write_errors(None):
                self.latest.wait_until_finished()
                self.best.wait_until_finished()
        finally:
            with self._write_errors(None):
                self.latest.close()
                self.best.close()

    @contextlib.contextmanager
    def _write_errors(self, step: int | None):
        try:
            yield
        except Exception as e:
            cause = _os_error(e)
            if cause is None:
                raise
            if step is None and self._failed:
                return  # orbax re-raises a failed write on close; it was reported already
            self._failed = True
            raise CheckpointWriteError(self._describe(cause, step)) from e

    def _describe(self, e: OSError, step: int | None) -> str:
        where = e.filename or workdir_lib.checkpoint_dir(self.workdir, LATEST)
        what = "no space left on device" if e.errno == errno.ENOSPC else e.strerror or str(e)
        kept = self.latest.all_steps(read=True)  # committed ones, read from disk
        resume = (
            f"checkpoint step {max(kept)} in {workdir_lib.checkpoint_dir(self.workdir, LATEST)} "
            "is intact; free space (or fix the folder) and rerun the same command to resume "
            "from it"
            if kept
            else "no earlier checkpoint exists; free space (or fix the folder) and rerun"
        )
        at = f" at step {step}" if step is not None else ""
        return f"cannot write the checkpoint{at}: {what}: {where}. The {resume}."
