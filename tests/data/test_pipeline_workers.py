"""grain worker processes (`data.num_workers`): bitwise the batches of the in-process
pipeline, checkpointable through grain's CheckpointHandler, and no worker left behind.

The references are the `num_workers=0` pipeline and an unbroken iterator.
"""

import gc
import json
import multiprocessing

import grain
import jax
import numpy as np
import pytest
from etils import epath

from jaxseg.config import load_config
from jaxseg.data import pipeline
from jaxseg.errors import ConfigError, DataError
from jaxseg.training.loop import train
from jaxseg.workdir import load_trained
from tests.tiny_config import write_tiny_config

from ..test_end_to_end import _cli

KW = dict(patch_size=(16, 16), batch_size=3, seed=5)


def _take(it, n):
    return [next(it) for _ in range(n)]


def _assert_same(got, expected):
    assert len(got) == len(expected)
    for x, y in zip(got, expected):
        np.testing.assert_array_equal(x["image"], y["image"])
        np.testing.assert_array_equal(x["label"], y["label"])


def _grain_workers():
    return [p for p in multiprocessing.active_children() if p.name.startswith("grain-")]


def test_workers_yield_the_batches_of_threads(spec2d):
    threads = pipeline.train_batches(spec2d, spec2d.training, **KW)
    expected = _take(threads, 5)
    threads.close()
    it = pipeline.train_batches(spec2d, spec2d.training, num_workers=2, **KW)
    try:
        got = _take(it, 5)  # odd: the round-robin over 2 workers ends mid-cycle
        assert len(_grain_workers()) == 2
    finally:
        it.close()
    assert _grain_workers() == []
    _assert_same(got, expected)


def test_workers_resume_from_a_grain_checkpoint(spec2d, tmp_path):
    handler, directory = grain.checkpoint.CheckpointHandler(), epath.Path(tmp_path)
    it = pipeline.train_batches(spec2d, spec2d.training, num_workers=2, **KW)
    try:
        _take(it, 3)
        handler.save(directory, args=grain.checkpoint.CheckpointSave(it))
        unbroken = _take(it, 3)
    finally:
        it.close()
    fresh = pipeline.train_batches(spec2d, spec2d.training, num_workers=2, **KW)
    handler.restore(directory, args=grain.checkpoint.CheckpointRestore(fresh))
    assert fresh.get_state() == {"next_index": 3}
    _assert_same(_take(fresh, 3), unbroken)
    # Dropped without close(): grain's finaliser still joins the workers.
    del fresh
    gc.collect()
    assert _grain_workers() == []
    # The state is a batch index, so a run may resume with another number of workers.
    threads = pipeline.train_batches(spec2d, spec2d.training, **KW)
    handler.restore(directory, args=grain.checkpoint.CheckpointRestore(threads))
    _assert_same(_take(threads, 3), unbroken)
    threads.close()


def test_bad_worker_count_and_state_are_named(spec2d):
    with pytest.raises(ConfigError, match="data.num_workers"):
        pipeline.train_batches(spec2d, spec2d.training, num_workers=-1, **KW)
    it = pipeline.train_batches(spec2d, spec2d.training, **KW)
    with pytest.raises(DataError, match="next_index"):
        it.set_state({"iterators_in_use_states": []})
    it.close()
    with pytest.raises(ValueError, match="closed"):
        next(it)


@pytest.mark.slow
@pytest.mark.e2e
def test_training_with_workers_matches_threads(phantom_2d, tmp_path):
    """The loop with 2 workers stops and leaves no worker behind; the real command resumes
    it with workers and exits; the result is the parameters of a run with threads."""
    config_file = write_tiny_config(tmp_path / "tiny.py", phantom_2d, steps=6, warmup=2)
    fast = ["train.steps=4", "train.checkpoint_every=2", "eval.max_val_cases=0"]
    workers = tmp_path / "workers"
    train(load_config(config_file, [*fast, "data.num_workers=2"]), workers, stop_at=2)
    assert _grain_workers() == []
    r = _cli(
        "jaxseg.train",
        "--config",
        str(config_file),
        "--workdir",
        str(workers),
        *(f"--config.{o}" for o in [*fast, "data.num_workers=2"]),
    )
    assert r.returncode == 0, r.stderr[-2000:]
    state = workers / "checkpoints" / "4" / "data" / "process_0-of-1.json"
    assert json.loads(state.read_text()) == {"next_index": 4}
    threads = tmp_path / "threads"
    train(load_config(config_file, fast), threads)
    jax.tree_util.tree_map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7),
        jax.device_get(load_trained(threads).params),
        jax.device_get(load_trained(workers).params),
    )
