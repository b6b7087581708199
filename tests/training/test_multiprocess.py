"""Multi-process, topology and fault tests, run for real with local processes.

- 2 processes x 2 CPU devices (jax.distributed + gloo on 127.0.0.1) train to the same
  loss and parameters as 1 process with 4 devices, on a dataset with fewer training
  cases than processes; the 2-process checkpoint restores in this 1-device process.
- A checkpoint written on 1 device resumes on 8 (FSDP-sharded) and comes back to 1.
- SIGKILL mid-run, rerun: it resumes from the last checkpoint and ends with the same
  parameters as an unbroken run. A half-written checkpoint is never chosen.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest

from jaxseg.config import load_config
from jaxseg.data import synthetic
from jaxseg.training.loop import train
from jaxseg.workdir import load_trained

pytestmark = pytest.mark.multiprocess

ROOT = Path(__file__).resolve().parents[2]

CONFIG = """
from jaxseg.defaults import base_config

def get_config():
    c = base_config()
    c.data.root = {root!r}
    c.data.patch_size = (32, 32)
    c.data.batch_size = 8
    c.data.num_threads = 1
    c.model.name = "unet"
    c.model.args.features = (8, 16)
    c.train.steps = {steps}
    c.train.warmup_steps = 1
    c.train.log_every = 1
    c.train.eval_every = 1000
    c.train.checkpoint_every = 2
    c.mesh.fsdp_min_size = 0
    return c
"""


def _write_config(tmp_path, root, steps=4) -> Path:
    path = tmp_path / f"cfg_{steps}.py"
    path.write_text(CONFIG.format(root=str(root), steps=steps))
    return path


def _env(devices: int) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("JAXSEG_")}
    env.update(JAX_PLATFORMS="cpu", XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")
    return env


def _train_cmd(config: Path, workdir: Path, *extra) -> list[str]:
    return [
        sys.executable,
        "-m",
        "jaxseg.train",
        "--config",
        str(config),
        "--workdir",
        str(workdir),
        *extra,
    ]


def _last_json(stdout: str) -> dict:
    lines = [l.split("] ", 1)[-1] for l in stdout.splitlines()]
    return json.loads([l for l in lines if l.startswith("{")][-1])


def _params(workdir):
    return jax.device_get(load_trained(workdir, "latest").params)


def _assert_params_close(a, b, tol=1e-5):
    diffs = jax.tree_util.tree_map(lambda x, y: float(np.max(np.abs(x - y))), a, b)
    assert max(jax.tree_util.tree_leaves(diffs)) < tol, diffs


@pytest.fixture(scope="module")
def few_cases(tmp_path_factory):
    # 3 cases -> 1 training case for 2 processes: every process must still get data.
    root = tmp_path_factory.mktemp("few")
    synthetic.write_dataset(root, dims=2, num_cases=3, shape=(40, 48), seed=5)
    return root


def test_two_processes_match_one_process(few_cases, tmp_path):
    config = _write_config(tmp_path, few_cases)
    env = {**_env(2), "JAXSEG_LOCAL_DEVICES": "2"}
    multi = subprocess.run(
        [
            "bash",
            str(ROOT / "launch/local.sh"),
            "2",
            *_train_cmd(config, tmp_path / "multi"),
            "--config.mesh.data=2",
            "--config.mesh.fsdp=2",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert multi.returncode == 0, multi.stdout[-3000:] + multi.stderr[-3000:]
    single = subprocess.run(
        _train_cmd(config, tmp_path / "single"),
        cwd=ROOT,
        env=_env(4),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert single.returncode == 0, single.stderr[-3000:]
    loss_multi, loss_single = _last_json(multi.stdout)["loss"], _last_json(single.stdout)["loss"]
    assert loss_multi == pytest.approx(loss_single, rel=1e-4)
    # The 2-process (data 2 x fsdp 2) checkpoint restores here, on 1 device.
    _assert_params_close(_params(tmp_path / "multi"), _params(tmp_path / "single"))


def test_checkpoint_moves_between_1_and_8_devices(few_cases, tmp_path):
    config = _write_config(tmp_path, few_cases, steps=4)
    workdir = tmp_path / "topology"
    train(load_config(config, ["train.steps=2"]), workdir)  # here: 1 device
    # Resume on 8 devices with parameters and optimiser state sharded 8 ways.
    r = subprocess.run(
        _train_cmd(config, workdir, "--config.mesh.data=1", "--config.mesh.fsdp=8"),
        cwd=ROOT,
        env=_env(8),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert "Resuming" in r.stdout and _last_json(r.stdout)["step"] == 4
    # And back to 1 device, against an unbroken 1-device run.
    straight = tmp_path / "straight"
    train(load_config(config), straight)
    _assert_params_close(_params(workdir), _params(straight), tol=1e-4)


def test_sigkill_then_rerun_resumes_where_it_was(few_cases, tmp_path):
    config = _write_config(tmp_path, few_cases, steps=12)
    workdir = tmp_path / "killed"
    proc = subprocess.Popen(
        _train_cmd(config, workdir),
        cwd=ROOT,
        env=_env(1),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    deadline = time.time() + 300
    while not (workdir / "checkpoints" / "4").is_dir():
        assert proc.poll() is None, proc.stdout.read()[-3000:]
        assert time.time() < deadline, "no checkpoint at step 4 in time"
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())
    assert done and done[-1] < 12, done  # killed mid-run
    r = subprocess.run(
        _train_cmd(config, workdir),
        cwd=ROOT,
        env=_env(1),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert f"Resuming {workdir} from step {done[-1]}" in r.stdout
    straight = tmp_path / "straight"
    train(load_config(config), straight)
    _assert_params_close(_params(workdir), _params(straight), tol=1e-5)


def test_half_written_checkpoint_is_never_chosen(few_cases, tmp_path):
    config = _write_config(tmp_path, few_cases, steps=2)
    workdir = tmp_path / "partial"
    train(load_config(config), workdir)
    # What a kill mid-write leaves: orbax's temporary folder for a later step.
    partial = workdir / "checkpoints" / "4.orbax-checkpoint-tmp-1234"
    shutil.copytree(workdir / "checkpoints" / "2", partial)
    (partial / "commit_success.txt").unlink(missing_ok=True)
    result = train(load_config(config, ["train.steps=3"]), workdir)
    assert result["step"] == 3
    assert not partial.exists()  # cleaned up on start
