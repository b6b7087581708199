"""`python -m jaxseg.benchmark`: JSON lines for a tiny model, the input-pipeline mode on a
tiny synthetic dataset, the memory/timing helpers against independent figures, bad input.

Runtime: ~25 s on 2 idle cores (two subprocesses; the input-pipeline one compiles a train
step); the --train test compiles another train step and is marked slow.
"""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxseg import benchmark, benchmarking, cli
from jaxseg.data import synthetic
from tests.models.test_summary import unet_params

ROOT = Path(__file__).resolve().parents[1]
MODEL_KEYS = {
    "model",
    "dims",
    "size",
    "batch",
    "median_latency_s",
    "items_per_s",
    "peak_memory_mb",
    "compile_s",
    "p90_latency_s",
    "params",
    "backend",
    "mode",
}
TINY = ["--model", "unet", "--dims", "2", "--size", "32", "--model-arg", "features=(8,16)"]

CONFIG = """
from jaxseg.defaults import base_config

def get_config():
    c = base_config()
    c.data.root = {root!r}
    c.data.patch_size = (32, 32)
    c.data.batch_size = 4
    c.data.num_threads = 1
    c.data.prefetch = 2
    c.model.name = "unet"
    c.model.args.features = (8, 16)
    return c
"""


def _cli(*args):
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    return subprocess.run(
        [sys.executable, "-m", "jaxseg.benchmark", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


def _run(argv, capsys):
    """The CLI in-process (fast): exit code, stdout, stderr."""
    with pytest.raises(SystemExit) as exit_info:
        cli.run(benchmark.main, argv)
    out = capsys.readouterr()
    return exit_info.value.code, out.out, out.err


@pytest.fixture(scope="module")
def config_file(tmp_path_factory):
    root = tmp_path_factory.mktemp("phantoms")
    synthetic.write_dataset(root, dims=2, num_cases=6, shape=(40, 48), seed=3)
    path = tmp_path_factory.mktemp("configs") / "tiny.py"
    path.write_text(CONFIG.format(root=str(root)))
    return path


def test_model_benchmark_prints_one_json_line_per_run():
    r = _cli(*TINY, "--batch", "1", "2", "--repeats", "2", "--warmup", "1")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.strip().splitlines()
    assert len(lines) == 2
    runs = [json.loads(line) for line in lines]
    # Counted by hand, not by jaxseg's own summary: 1 channel in, 2 classes, instance norm.
    expected_params = unet_params(2, 1, 2, (8, 16), "instance")
    for run, batch in zip(runs, (1, 2)):
        assert MODEL_KEYS <= set(run)
        assert (run["model"], run["dims"], run["size"], run["batch"]) == ("unet", 2, 32, batch)
        assert run["mode"] == "inference" and run["repeats"] == 2
        assert 0 < run["median_latency_s"] <= run["p90_latency_s"]
        assert run["items_per_s"] == pytest.approx(batch / run["median_latency_s"])
        assert run["compile_s"] > 0 and run["gflops"] > 0
        assert run["params"] == expected_params
        # One call holds at least its input image and its f32 probabilities [B, 32, 32, 2].
        assert run["peak_memory_mb"] * 2**20 >= batch * 32 * 32 * (1 + 2) * 4
        assert run["rss_peak_mb"] > run["peak_memory_mb"]
    # Work scales with the batch (up to a few batch-independent ops).
    assert runs[1]["gflops"] == pytest.approx(2 * runs[0]["gflops"], rel=1e-3)


def test_input_pipeline_mode(config_file):
    r = _cli(
        "--input-pipeline",
        "--config",
        str(config_file),
        "--steps",
        "3",
        "--warmup",
        "1",
        "--pipeline-batches",
        "6",
        "--config.data.batch_size=2",
    )
    assert r.returncode == 0, r.stderr
    lines = r.stdout.strip().splitlines()
    assert len(lines) == 1
    run = json.loads(lines[0])
    assert run["mode"] == "input_pipeline" and run["model"] == "unet"
    assert run["batch"] == 2 and run["patch_size"] == [32, 32]  # the override was applied
    assert run["pipeline_batches_per_s"] > 0 and run["train_steps_per_s"] > 0
    assert run["pipeline_items_per_s"] == pytest.approx(2 * run["pipeline_batches_per_s"])
    assert 0 <= run["input_wait_fraction"] <= 1
    assert run["input_wait_s"] <= run["train_step_s"]
    assert run["compile_s"] > 0 and run["num_train_cases"] == 4  # 7:1:2 of 6 cases


def test_input_pipeline_names_missing_data_root(config_file, tmp_path, capsys):
    code, out, err = _run(
        [
            "--input-pipeline",
            "--config",
            str(config_file),
            f"--config.data.root={tmp_path / 'nowhere'}",
        ],
        capsys,
    )
    assert code == 2 and out == ""
    assert "data.root" in err and "nowhere" in err and "jaxseg.data.synthetic" in err
    assert "Traceback" not in err


@pytest.mark.parametrize(
    "argv,needle",
    [
        (["--model", "unetz", "--dims", "2", "--size", "32"], "registered models are"),
        ([*TINY, "--model-arg", "featurez=1"], "featurez"),
        ([*TINY, "--model-arg", "norm"], "no '='"),
        ([*TINY, "--repeats", "0"], "--repeats must be >= 1"),
        ([*TINY, "--batch", "0"], "--batch must be >= 1"),
        ([*TINY, "--dtype", "bfloat16", "--model-arg", "dtype=float32"], "--dtype"),
        (["--model", "unet"], "--dims"),
        ([*TINY, "--config", "configs/demo.py"], "--input-pipeline only"),
        (["--input-pipeline"], "needs --config"),
        (["--input-pipeline", "--config", "nowhere.py"], "nowhere.py"),
    ],
)
def test_bad_arguments_exit_2(capsys, argv, needle):
    code, out, err = _run(argv, capsys)
    assert code == 2 and out == ""
    assert needle in err and "Traceback" not in err


def test_executable_memory_against_buffer_sizes():
    n = 256
    a = jnp.zeros((n, n), jnp.float32)

    def two_matmuls(a):  # needs temporaries beyond its argument and output
        b = jnp.sin(a) @ a
        return (jnp.cos(b) @ b).sum()

    mem = benchmarking.executable_memory(jax.jit(two_matmuls).lower(a).compile())
    assert mem["xla_argument_mb"] * 2**20 == n * n * 4
    assert mem["xla_output_mb"] * 2**20 == 4
    assert mem["xla_temp_mb"] > 0
    assert mem["peak_memory_mb"] == pytest.approx(
        mem["xla_argument_mb"] + mem["xla_output_mb"] + mem["xla_temp_mb"]
    )

    # A donated argument written in place is counted once.
    donated = jax.jit(lambda s, x: s + x, donate_argnums=0).lower(a, a).compile()
    mem = benchmarking.executable_memory(donated)
    assert mem["xla_alias_mb"] * 2**20 == n * n * 4
    assert mem["peak_memory_mb"] * 2**20 == pytest.approx(2 * n * n * 4, rel=0.01)


def test_time_calls_counts_warmup_and_repeats():
    calls = []

    def call():
        calls.append(time.perf_counter())
        time.sleep(0.01)

    times = benchmarking.time_calls(call, repeats=3, warmup=2)
    assert len(calls) == 5 and len(times) == 3
    assert all(t >= 0.01 for t in times)


@pytest.mark.slow
def test_train_mode_times_the_train_step():
    """~30-60 s: compiles a full train step (augment + forward + backward + AdamW)."""
    infer = benchmarking.benchmark_model(
        "unet", 2, 32, 2, model_args={"features": (8, 16)}, repeats=2, warmup=1
    )
    train = benchmarking.benchmark_model(
        "unet", 2, 32, 2, model_args={"features": (8, 16)}, repeats=2, warmup=1, train=True
    )
    assert train["mode"] == "train" and train["params"] == infer["params"]
    # Backward is about twice the forward: a train step counts well over 2x the flops.
    assert train["gflops"] > 2 * infer["gflops"]
    assert np.isfinite(train["median_latency_s"]) and train["items_per_s"] > 0
