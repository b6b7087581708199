"""Training faults, each injected at a known step: a non-finite loss stops the run at the
step that made it; a full disk during a checkpoint write is a one-line error that names
the path, closes the input pipeline and the TensorBoard writer, and leaves the previous
checkpoint intact and resumable."""

import errno
import functools
import os
import shutil
import tempfile

import jax
import numpy as np
import pytest
import tensorboardX
from etils import epath

from jaxseg.config import load_config
from jaxseg.data import pipeline
from jaxseg.errors import JaxsegError
from jaxseg.training.checkpoint import Checkpoints, CheckpointWriteError
from jaxseg.training.loop import NonFiniteLossError, train
from jaxseg.workdir import load_trained
from tests.training import preemption_worker as worker


def config(tmp_path, root, **kwargs):
    path = tmp_path / f"cfg_{len(list(tmp_path.glob('cfg_*')))}.py"
    path.write_text(worker.config_text(root, **kwargs))
    return load_config(path)


@functools.cache
def _unbroken(root: str, steps: int) -> dict:
    workdir = tempfile.mkdtemp(prefix="unbroken_")
    try:
        cfg_dir = epath.Path(workdir) / "cfg"
        cfg_dir.mkdir()
        train(config(cfg_dir, root, steps=steps), os.path.join(workdir, "run"))
        return jax.device_get(load_trained(os.path.join(workdir, "run"), "latest").params)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def unbroken_params(root, steps=worker.STEPS) -> dict:
    """Parameters after an uninterrupted run of `worker.config_text(root)` (computed once)."""
    return _unbroken(str(root), steps)


def assert_params_close(a, b, tol=1e-6):
    diffs = jax.tree_util.tree_map(lambda x, y: float(np.max(np.abs(x - y))), a, b)
    assert max(jax.tree_util.tree_leaves(diffs)) <= tol, diffs


def steps_on_disk(workdir) -> list[int]:
    folder = workdir / "checkpoints"
    return sorted(int(p.name) for p in folder.iterdir() if p.name.isdigit())


def test_non_finite_loss_stops_at_the_step_that_made_it(phantom_2d, tmp_path, monkeypatch):
    # Batch 4 (0-based) is step 5's; checkpoints come every 4 steps, so before this change
    # the NaN was found at step 8, and only then.
    original = pipeline.BatchIterator.__next__

    def poisoned(self):
        index = self._next
        batch = original(self)
        if index == 4:
            batch = {**batch, "image": np.full_like(batch["image"], np.nan)}
        return batch

    monkeypatch.setattr(pipeline.BatchIterator, "__next__", poisoned)
    workdir = tmp_path / "nan"
    with pytest.raises(NonFiniteLossError, match=r"at step 5\b") as err:
        train(config(tmp_path, phantom_2d, checkpoint_every=4), workdir)
    assert "\n" not in str(err.value) and isinstance(err.value, JaxsegError)
    assert steps_on_disk(workdir) == [4]  # nothing non-finite was saved over it


def test_full_disk_during_checkpoint_keeps_the_previous_one(phantom_2d, tmp_path, monkeypatch):
    # orbax writes checkpoint metadata from a background thread: ENOSPC there is what a
    # full disk gives. Checkpoint 4 fails; 2 (the only one kept: keep=1) must survive.
    original_write = epath.Path.write_text
    failed = []

    def full_disk(self, *args, **kwargs):
        if "/4.orbax-checkpoint-tmp" in str(self):
            failed.append(str(self))
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self))
        return original_write(self, *args, **kwargs)

    closed = []
    for cls in (pipeline.BatchIterator, tensorboardX.SummaryWriter):
        monkeypatch.setattr(
            cls, "close", functools.partialmethod(_record_close, cls.close, closed, cls.__name__)
        )
    monkeypatch.setattr(epath.Path, "write_text", full_disk)
    workdir = tmp_path / "full"
    cfg = config(tmp_path, phantom_2d, keep=1)
    with pytest.raises(CheckpointWriteError) as err:
        train(cfg, workdir)
    message = str(err.value)
    assert failed and "\n" not in message, message
    assert "no space left on device" in message and "/4.orbax-checkpoint-tmp" in message
    assert "at step 4:" in message and "checkpoint step 2 " in message, message  # resume there
    assert {"BatchIterator", "SummaryWriter"} <= set(closed), closed

    monkeypatch.undo()  # disk freed
    assert steps_on_disk(workdir) == [2]
    assert Checkpoints(workdir).latest_step() == 2
    result = train(cfg, workdir)
    assert result["step"] == worker.STEPS
    assert_params_close(load_trained(workdir, "latest").params, unbroken_params(phantom_2d))


def _record_close(self, close, closed, name):
    closed.append(name)
    return close(self)
