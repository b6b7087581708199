"""Writing and resuming a run's checkpoints: the latest K, plus the best by validation Dice.

The layout is the workdir's (`jaxseg.workdir`): `checkpoints/<step>/{state,data}` holds the
latest `keep` train states with the grain iterator state of every process, `best/<step>/
state` the train state with the highest validation Dice. Inference reads parameters back
with `jaxseg.workdir.load_trained`, which needs none of this module.

orbax writes each checkpoint into a temporary folder and renames it when complete, so a
run killed mid-write leaves no checkpoint that `latest_step` would choose.
"""

from __future__ import annotations

import os
from typing import Any

import grain
import jax
import orbax.checkpoint as ocp

from jaxseg import workdir as workdir_lib
from jaxseg.errors import JaxsegError
from jaxseg.workdir import BEST, BEST_METRIC, DATA_ITEM, LATEST, STATE_ITEM


class Checkpoints:
    """The two checkpoint managers of one workdir, for a training run."""

    def __init__(self, workdir: str | os.PathLike, keep: int = 3):
        self.workdir = workdir_lib.as_path(workdir)
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
        self.latest.wait_until_finished()
        self.best.wait_until_finished()
        self.latest.close()
        self.best.close()
