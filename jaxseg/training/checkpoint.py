"""Checkpoints in a workdir: the latest K, plus the best by validation Dice.

    workdir/checkpoints/<step>/state   the latest `keep` train states ...
    workdir/checkpoints/<step>/data    ... with the grain iterator state of every process
    workdir/best/<step>/state          the train state with the highest validation Dice

orbax writes each checkpoint into a temporary folder and renames it when complete, so a
run killed mid-write leaves no checkpoint that `latest_step` would choose.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import grain
import jax
import orbax.checkpoint as ocp

from jaxseg.errors import JaxsegError

LATEST, BEST = "latest", "best"


class Checkpoints:
    """The two checkpoint managers of one workdir."""

    def __init__(self, workdir: str | Path, keep: int = 3, *, read_only: bool = False):
        workdir = Path(workdir).absolute()
        common = dict(
            create=not read_only, read_only=read_only, cleanup_tmp_directories=not read_only
        )
        self.latest = ocp.CheckpointManager(
            workdir / "checkpoints",
            options=ocp.CheckpointManagerOptions(max_to_keep=keep, **common),
            item_handlers={
                "state": ocp.StandardCheckpointHandler(),
                "data": grain.checkpoint.CheckpointHandler(),
            },
        )
        self.best = ocp.CheckpointManager(
            workdir / "best",
            options=ocp.CheckpointManagerOptions(
                max_to_keep=1,
                best_fn=lambda m: m["val_dice"],
                best_mode="max",
                keep_checkpoints_without_metrics=False,
                **common,
            ),
            item_handlers={"state": ocp.StandardCheckpointHandler()},
        )
        self.workdir = workdir

    def latest_step(self) -> int | None:
        return self.latest.latest_step()

    def save(
        self, state: Any, data_iterator=None, *, val_dice: float | None = None, best: bool = False
    ) -> None:
        """Saves `state` (and the input iterator's position) as the latest; with `best`,
        also offers the state to the best-Dice slot."""
        step = int(jax.device_get(state.step))
        # The two managers' asynchronous commits each run cross-process barriers in a
        # background thread; running them concurrently can interleave those barriers
        # differently on different hosts and deadlock a multi-host run. One at a time.
        if self.latest.latest_step() != step:
            items = {"state": ocp.args.StandardSave(state)}
            if data_iterator is not None:
                items["data"] = grain.checkpoint.CheckpointSave(data_iterator)
            self.best.wait_until_finished()
            self.latest.save(step, args=ocp.args.Composite(**items), force=True)
        if best:
            self.latest.wait_until_finished()
            self.best.save(
                step,
                args=ocp.args.Composite(state=ocp.args.StandardSave(state)),
                metrics={"val_dice": float(val_dice)},
                force=True,
            )

    def restore(self, abstract_state: Any, data_iterator=None, *, which: str = LATEST) -> Any:
        """Restores into the shapes, dtypes and shardings of `abstract_state`, and (from the
        latest checkpoint) moves `data_iterator` to where the run was.

        The shardings may differ from the ones the checkpoint was written with: orbax
        reshards, so a checkpoint from 8 devices restores on 1 and back.
        """
        manager = self._manager(which)
        step = manager.best_step() if which == BEST else manager.latest_step()
        if step is None:
            raise JaxsegError(
                f"no {which} checkpoint in {self.workdir}; train first with "
                f"python -m jaxseg.train --workdir {self.workdir}"
            )
        items = {"state": ocp.args.StandardRestore(abstract_state)}
        if data_iterator is not None:
            items["data"] = grain.checkpoint.CheckpointRestore(data_iterator)
        return manager.restore(step, args=ocp.args.Composite(**items))["state"]

    def available(self, which: str) -> bool:
        manager = self._manager(which)
        return (manager.best_step() if which == BEST else manager.latest_step()) is not None

    def _manager(self, which: str) -> ocp.CheckpointManager:
        if which not in (LATEST, BEST):
            raise JaxsegError(f"unknown checkpoint {which!r}; use {LATEST!r} or {BEST!r}")
        return self.latest if which == LATEST else self.best

    def close(self) -> None:
        self.latest.wait_until_finished()
        self.best.wait_until_finished()
        self.latest.close()
        self.best.close()
