"""The launchers: dry runs print the commands; missing tools and settings fail clearly."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TPU_ENV = {"TPU_NAME": "seg-v5", "TPU_ZONE": "us-east5-a", "TPU_PROJECT": "proj"}
GKE_ENV = {
    "JOB_NAME": "seg1",
    "IMAGE": "img:1",
    "CONFIG": "configs/demo.py",
    "WORKDIR": "gs://b/seg1",
    "TPU_ACCELERATOR": "tpu-v5p-slice",
    "TPU_TOPOLOGY": "2x2x2",
    "NUM_HOSTS": "2",
    "CHIPS_PER_HOST": "4",
}


def _run(script, *args, env=None, path=None):
    full = {**os.environ, **(env or {})}
    for key in [*TPU_ENV, *GKE_ENV, "DRY_RUN"]:
        if env is None or key not in env:
            full.pop(key, None)
    if path is not None:
        full["PATH"] = path
    return subprocess.run(
        ["bash", str(ROOT / script), *args],
        env=full,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.fixture
def path_without_cloud_tools(tmp_path):
    """A PATH with the shell tools the scripts use but no gcloud or kubectl."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("bash", "sed", "dirname", "mktemp", "git", "cat"):
        found = shutil.which(tool)
        if found:
            (bin_dir / tool).symlink_to(found)
    (bin_dir / "python3").symlink_to(os.path.realpath(sys.executable))
    return str(bin_dir)


def test_local_dry_run_gives_each_process_its_id():
    r = _run("launch/local.sh", "3", "python", "-m", "jaxseg.train", env={"DRY_RUN": "1"})
    lines = r.stdout.strip().splitlines()
    assert r.returncode == 0 and len(lines) == 3
    for i, line in enumerate(lines):
        assert f"JAXSEG_PROCESS_ID={i}" in line and "JAXSEG_NUM_PROCESSES=3" in line
        assert line.endswith("python -m jaxseg.train")
    assert len({line.split()[0] for line in lines}) == 1  # one coordinator


def test_local_usage_error():
    r = _run("launch/local.sh", "two", "python")
    assert r.returncode == 2 and "usage" in r.stderr


def test_local_propagates_a_failing_process():
    r = _run("launch/local.sh", "2", "bash", "-c", "exit $((JAXSEG_PROCESS_ID + 3))")
    assert r.returncode in (3, 4)


def test_tpu_vm_needs_its_settings():
    r = _run("launch/tpu_vm.sh", "create", env={"TPU_NAME": "x"})
    assert r.returncode == 2 and "TPU_ZONE" in r.stderr and "TPU_PROJECT" in r.stderr


@pytest.mark.parametrize(
    "action,expect",
    [
        (
            "create",
            "tpu-vm create seg-v5 --zone=us-east5-a --project=proj --accelerator-type=v5litepod-16",
        ),
        ("stop", "tpu-vm stop seg-v5"),
        ("delete", "tpu-vm delete seg-v5 --zone=us-east5-a --project=proj --quiet"),
    ],
)
def test_tpu_vm_dry_run(action, expect):
    r = _run("launch/tpu_vm.sh", action, env={**TPU_ENV, "DRY_RUN": "1"})
    assert r.returncode == 0, r.stderr
    assert expect in r.stdout


def test_tpu_vm_run_goes_to_every_worker():
    r = _run(
        "launch/tpu_vm.sh",
        "run",
        "--",
        "python",
        "-m",
        "jaxseg.train",
        "--config",
        "configs/demo.py",
        "--workdir",
        "gs://b/r",
        env={**TPU_ENV, "DRY_RUN": "1"},
    )
    assert r.returncode == 0, r.stderr
    assert "tpu-vm ssh seg-v5" in r.stdout and "--worker=all" in r.stdout
    assert "jaxseg.train" in r.stdout and "gs://b/r" in r.stdout


def test_tpu_vm_without_gcloud(path_without_cloud_tools):
    r = _run("launch/tpu_vm.sh", "create", env=TPU_ENV, path=path_without_cloud_tools)
    assert r.returncode == 127 and "gcloud is not installed" in r.stderr


def test_gke_manifest_renders_every_field():
    r = _run("launch/gke/render.sh", "print", env=GKE_ENV)
    assert r.returncode == 0, r.stderr
    assert "${" not in r.stdout
    assert "parallelism: 2" in r.stdout and "google.com/tpu: 4" in r.stdout
    assert '"--workdir", "gs://b/seg1"' in r.stdout


def test_gke_needs_its_settings_and_kubectl(path_without_cloud_tools):
    r = _run("launch/gke/render.sh", "print", env={"JOB_NAME": "x"})
    assert r.returncode == 2 and "IMAGE" in r.stderr
    r = _run("launch/gke/render.sh", "apply", env=GKE_ENV, path=path_without_cloud_tools)
    assert r.returncode == 127 and "kubectl is not installed" in r.stderr
    r = _run("launch/gke/render.sh", "apply", env={**GKE_ENV, "DRY_RUN": "1"})
    assert r.returncode == 0 and r.stdout.startswith("kubectl apply -f -")
