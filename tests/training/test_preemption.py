"""Preemption (SIGTERM) and kills during a checkpoint write, with faults at known steps.

- One process: SIGTERM at a known batch -> a checkpoint at the next step, exit cleanly;
  the rerun resumes there and ends with the parameters of an unbroken run.
- Two processes (jax.distributed + gloo on 127.0.0.1): SIGTERM to one of them -> both save
  the same step and exit 0; rerun both -> parameters equal an unbroken run's.
- A process that dies inside a checkpoint write (after orbax made its temporary folder,
  before the commit) -> the restart picks the previous complete step.
"""

import os
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path

from jaxseg.config import load_config
from jaxseg.data import pipeline
from jaxseg.training.loop import train
from jaxseg.workdir import load_trained
from tests.training import preemption_worker as worker
from tests.training.test_faults import assert_params_close, steps_on_disk, unbroken_params

ROOT = Path(__file__).resolve().parents[2]
WORKER = Path(worker.__file__)


def _config_file(tmp_path, root, **kwargs) -> Path:
    path = tmp_path / "cfg.py"
    path.write_text(worker.config_text(root, **kwargs))
    return path


def _env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JAXSEG_", "WORKER_"))}
    env.update(JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=1")
    env.update(PYTHONPATH=str(ROOT), **extra)
    return env


def _worker_cmd(config: Path, workdir: Path, *extra) -> list[str]:
    return [sys.executable, str(WORKER), "--config", str(config), "--workdir", str(workdir), *extra]


def test_sigterm_saves_the_step_and_resumes_to_an_unbroken_run(
    phantom_2d, tmp_path, monkeypatch, capsys
):
    original = pipeline.BatchIterator.__next__

    def preempted_at_batch_5(self):
        index = self._next
        batch = original(self)
        if index == 5:
            os.kill(os.getpid(), signal.SIGTERM)  # the handler runs before this returns
        return batch

    handler_before = signal.getsignal(signal.SIGTERM)
    monkeypatch.setattr(pipeline.BatchIterator, "__next__", preempted_at_batch_5)
    config = load_config(_config_file(tmp_path, phantom_2d, checkpoint_every=4))
    workdir = tmp_path / "preempted"
    result = train(config, workdir)
    # Batch 5 is step 6's; the notice is seen before step 7 starts.
    assert result == {**result, "step": 6, "preempted": True}
    assert f"saved step 6 to {workdir / 'checkpoints' / '6'}" in capsys.readouterr().out
    assert steps_on_disk(workdir) == [4, 6]
    assert signal.getsignal(signal.SIGTERM) == handler_before  # the old handler is back

    monkeypatch.undo()
    result = train(config, workdir)
    assert "from step 6" in capsys.readouterr().out and result["step"] == worker.STEPS
    assert_params_close(load_trained(workdir, "latest").params, unbroken_params(phantom_2d))


def test_death_inside_a_checkpoint_write_resumes_from_the_previous_step(
    phantom_2d, tmp_path, capsys
):
    config = _config_file(tmp_path, phantom_2d)
    workdir = tmp_path / "died"
    died = subprocess.run(
        _worker_cmd(config, workdir),
        cwd=ROOT,
        env=_env(WORKER_EXIT_IN_WRITE="6"),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert died.returncode == worker.WRITE_EXIT, died.stdout[-2000:] + died.stderr[-3000:]
    assert "inside the write of checkpoint 6" in died.stdout
    assert steps_on_disk(workdir) == [2, 4]
    assert (workdir / "checkpoints" / "6.orbax-checkpoint-tmp").is_dir()  # half written
    result = train(load_config(config), workdir)
    assert "from step 4" in capsys.readouterr().out and result["step"] == worker.STEPS
    assert not (workdir / "checkpoints" / "6.orbax-checkpoint-tmp").exists()
    assert_params_close(load_trained(workdir, "latest").params, unbroken_params(phantom_2d), 1e-5)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _two_processes(config: Path, workdir: Path, **extra_env) -> list[subprocess.CompletedProcess]:
    port = _free_port()
    procs = [
        subprocess.Popen(
            _worker_cmd(config, workdir, "--config.mesh.data=2"),
            cwd=ROOT,
            env=_env(
                JAXSEG_COORDINATOR=f"127.0.0.1:{port}",
                JAXSEG_NUM_PROCESSES="2",
                JAXSEG_PROCESS_ID=str(i),
                **extra_env,
            ),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(2)
    ]
    results = []
    try:
        for p in procs:
            out, err = p.communicate(timeout=300)
            results.append(subprocess.CompletedProcess(p.args, p.returncode, out, err))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    return results


def test_two_processes_sigterm_one_both_save_the_same_step(phantom_2d, tmp_path):
    steps = 24
    config = _config_file(tmp_path, phantom_2d, steps=steps, checkpoint_every=100)
    workdir = tmp_path / "pod"
    # Process 1 alone gets the notice, at batch 2; 0.3 s a step leaves the coordinator
    # time to tell process 0 long before the run would end.
    first = _two_processes(
        config, workdir, WORKER_SIGTERM_AT="2", WORKER_SIGTERM_PROCESS="1", WORKER_STEP_SLEEP="0.3"
    )
    saved = []
    for i, r in enumerate(first):
        assert r.returncode == 0, f"process {i}:\n{r.stdout[-2000:]}\n{r.stderr[-3000:]}"
        found = re.findall(rf"process {i} saved step (\d+) to ", r.stdout)
        assert len(found) == 1, r.stdout[-2000:]
        saved.append(int(found[0]))
    step = saved[0]
    assert saved == [step, step] and 2 < step < steps, saved
    print(f"SIGTERM at batch 2 of process 1: both processes saved step {step}")
    assert steps_on_disk(workdir) == [step]
    data = workdir / "checkpoints" / str(step) / "data"
    written = sorted(p.name for p in data.glob("process_*.json"))
    assert written == ["process_0-of-2.json", "process_1-of-2.json"]  # both saved step

    second = _two_processes(config, workdir)
    for i, r in enumerate(second):
        assert r.returncode == 0, f"process {i}:\n{r.stdout[-2000:]}\n{r.stderr[-3000:]}"
    assert f"from step {step}" in second[0].stdout
    assert steps_on_disk(workdir)[-1] == steps
    params = load_trained(workdir, "latest").params
    assert_params_close(params, unbroken_params(phantom_2d, steps), tol=1e-5)
