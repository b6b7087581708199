"""The workdir on a path that is not local: a `gs://` bucket served by an in-memory-like
epath backend (every `gs://bucket/...` path lands in a temporary folder), so a workdir
that went through `pathlib.Path` (which turns `gs://b/run` into the local `gs:/b/run`)
fails these tests."""

from __future__ import annotations

import glob as glob_lib
import os
import shutil

import ml_collections
import pytest
from etils import epath
from etils.epath import backend as backend_lib
from etils.epath import gpath

from jaxseg import evaluation, workdir
from jaxseg.defaults import base_config


class _BucketBackend(backend_lib.Backend):
    """`gs://NAME/...` -> `<root>/NAME/...` on the local disk, for every epath operation."""

    def __init__(self, root: str):
        self.root = root
        self.os = backend_lib.os_backend

    def _local(self, path) -> str:
        text = os.fspath(path)
        assert text.startswith("gs://"), f"the bucket backend got a non-bucket path {text!r}"
        return os.path.join(self.root, text[len("gs://") :])

    def open(self, path, mode):
        return self.os.open(self._local(path), mode)

    def exists(self, path):
        return self.os.exists(self._local(path))

    def isdir(self, path):
        return self.os.isdir(self._local(path))

    def listdir(self, path):
        return self.os.listdir(self._local(path))

    def glob(self, path):
        found = glob_lib.glob(self._local(path))
        return ["gs://" + os.path.relpath(f, self.root) for f in found]

    def walk(self, top, *, top_down=True, on_error=None):
        for dirpath, dirs, files in os.walk(self._local(top), topdown=top_down, onerror=on_error):
            yield "gs://" + os.path.relpath(dirpath, self.root), dirs, files

    def makedirs(self, path, *, exist_ok=False, mode=None):
        os.makedirs(self._local(path), exist_ok=exist_ok)

    def mkdir(self, path, *, exist_ok=False, mode=None):
        if not (exist_ok and self.isdir(path)):
            os.mkdir(self._local(path))

    def rmtree(self, path):
        shutil.rmtree(self._local(path))

    def remove(self, path):
        os.remove(self._local(path))

    def rename(self, path, dst):
        os.rename(self._local(path), self._local(dst))

    def replace(self, path, dst):
        os.replace(self._local(path), self._local(dst))

    def copy(self, path, dst, *, overwrite):
        shutil.copy(self._local(path), self._local(dst))

    def stat(self, path):
        return self.os.stat(self._local(path))


@pytest.fixture
def bucket(tmp_path, monkeypatch):
    """A fake `gs://` file system rooted at `tmp_path / "bucket-root"`; returns that root."""
    root = tmp_path / "bucket-root"
    root.mkdir()
    fake, real = _BucketBackend(str(root)), gpath._GPath._backend
    # The property etils uses to pick a backend (tf, fsspec or os, depending on what is
    # installed): gs:// paths get the fake bucket, every other path what etils would pick.
    backend = property(lambda p: fake if p._uri_scheme == "gs" else real.fget(p))
    monkeypatch.setattr(gpath._GPath, "_backend", backend)
    monkeypatch.chdir(tmp_path)  # a pathlib mistake would create ./gs:/... here
    return root


def _info() -> workdir.RunInfo:
    return workdir.RunInfo(
        dims=2,
        in_channels=1,
        num_classes=3,
        labels={0: "background", 1: "a", 2: "b"},
        modalities=("MRI",),
        dataset_root="gs://bucket/data",
    )


def test_run_files_round_trip_on_a_bucket(bucket, tmp_path):
    config = base_config()
    run = "gs://bucket/runs/A"
    splits = {"train": ["c1", "c2"], "val": ["c3"], "test": ["c4"]}
    workdir.save_run(run, config, _info(), splits)

    assert sorted(os.listdir(bucket / "bucket" / "runs" / "A")) == [
        "config.json",
        "run.json",
        "splits.json",
    ]
    assert not (tmp_path / "gs:").exists()
    loaded, info = workdir.load_run(run)
    assert loaded.model.name == config.model.name and info == _info()
    assert workdir.load_splits(epath.Path(run)) == splits

    # A rerun with another model is refused by reading the bucket's config back.
    other = ml_collections.ConfigDict(config.to_dict())
    other.model.name = "unet"
    with pytest.raises(workdir.ConfigError, match="model.name"):
        workdir.save_run(run, other, _info(), splits)


def test_report_is_written_to_a_bucket(bucket):
    rows = [
        {"case": "c1", "class": 1, "name": "a", "dice": 0.5, "iou": 0.3, "precision": 0.4}
        | {"recall": 0.6, "hd95": 1.0, "asd": 0.5}
    ]
    summary = evaluation.summarize(rows, {1: "a"})
    evaluation.write_report(rows, summary, "gs://bucket/runs/A/eval_test")
    out = bucket / "bucket" / "runs" / "A" / "eval_test"
    assert (out / "summary.json").is_file() and (out / "metrics.csv").read_text().startswith(
        "case,class,name,dice"
    )


def test_checkpoint_managers_get_the_bucket_uri(bucket, monkeypatch):
    """orbax (which writes arrays through tensorstore's own gcs driver) must be handed the
    URI itself, as an epath, for the latest and the best slot alike."""
    from jaxseg.training import checkpoint

    seen = []

    class Recorder:
        def __init__(self, directory, **kwargs):
            seen.append(directory)

        def close(self):
            pass

        def latest_step(self):
            return None

        def best_step(self):
            return None

    monkeypatch.setattr(checkpoint.ocp, "CheckpointManager", Recorder)
    checkpoint.Checkpoints("gs://bucket/runs/A")
    assert [str(d) for d in seen] == ["gs://bucket/runs/A/checkpoints", "gs://bucket/runs/A/best"]
    assert all(isinstance(d, epath.Path) for d in seen)

    seen.clear()
    workdir.save_run("gs://bucket/runs/A", base_config(), _info(), {"train": []})
    monkeypatch.setattr(workdir.ocp, "CheckpointManager", Recorder)
    with pytest.raises(workdir.JaxsegError, match="no checkpoint in gs://bucket/runs/A"):
        workdir.load_trained("gs://bucket/runs/A")
    assert [str(d) for d in seen] == ["gs://bucket/runs/A/best", "gs://bucket/runs/A/checkpoints"]
