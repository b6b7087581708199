"""End to end on a tiny phantom dataset: train, resume, extend, evaluate, predict, export.

The library calls are the ones the command-line tools make; the last tests run the tools
themselves in a subprocess to check what a user sees on bad input.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import nibabel as nib
import numpy as np
import pytest

from jaxseg.config import load_config
from jaxseg.evaluate import cross_validate_runs, evaluate_run
from jaxseg.segment import Segmenter
from jaxseg.training.loop import train
from jaxseg.workdir import load_postprocessing, load_trained
from tests.tiny_config import write_tiny_config

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def config_file(phantom_2d, tmp_path_factory):
    path = tmp_path_factory.mktemp("configs") / "tiny.py"
    write_tiny_config(
        path,
        phantom_2d,
        steps=6,
        warmup=2,
        every=3,
        max_val_cases=2,
        settings={"train.log_every": 2},
    )
    return path


@pytest.fixture(scope="module")
def trained(config_file, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("run") / "w"
    result = train(load_config(config_file), workdir)
    return workdir, result


def _params(workdir, which="latest"):
    return jax.device_get(load_trained(workdir, which).params)


def test_train_writes_a_complete_workdir(trained):
    workdir, result = trained
    assert result["step"] == 6 and np.isfinite(result["loss"])
    for name in ("config.json", "run.json", "splits.json"):
        assert (workdir / name).is_file()
    assert sorted(p.name for p in (workdir / "checkpoints").iterdir()) == ["3", "6"]
    assert len(list((workdir / "best").iterdir())) == 1
    assert list((workdir / "tensorboard").iterdir())
    splits = json.loads((workdir / "splits.json").read_text())
    assert sorted(len(v) for v in splits.values()) == [1, 2, 7]


def test_interrupted_run_resumes_exactly(config_file, trained, tmp_path):
    workdir, _ = trained
    resumed = tmp_path / "resumed"
    config = load_config(config_file)
    assert train(config, resumed, stop_at=3)["step"] == 3
    assert train(config, resumed)["step"] == 6
    straight, again = _params(workdir), _params(resumed)
    jax.tree_util.tree_map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7), straight, again
    )


def test_raising_steps_extends_a_finished_run(config_file, tmp_path):
    workdir = tmp_path / "extend"
    train(load_config(config_file, ["train.steps=3"]), workdir)
    result = train(load_config(config_file, ["train.steps=5"]), workdir)
    assert result["step"] == 5
    assert "5" in {p.name for p in (workdir / "checkpoints").iterdir()}


def test_rerun_with_another_model_is_refused(config_file, trained):
    from jaxseg.errors import ConfigError

    workdir, _ = trained
    with pytest.raises(ConfigError, match="model.name"):
        train(load_config(config_file, ["model.name=lightseg_tiny"]), workdir)


def test_rerun_may_switch_remat_but_not_the_architecture(config_file, tmp_path):
    from jaxseg.errors import ConfigError

    workdir = tmp_path / "w"
    train(load_config(config_file, ["train.steps=3"]), workdir)
    result = train(load_config(config_file, ["train.steps=4", "model.args.remat=true"]), workdir)
    assert result["step"] == 4
    with pytest.raises(ConfigError, match="model.args"):
        train(load_config(config_file, ["train.steps=5", "model.args.features=(8,32)"]), workdir)


def test_evaluate_writes_report(trained):
    workdir, _ = trained
    summary = evaluate_run(workdir, split="test")
    report = workdir / "eval_test"
    lines = (report / "metrics.csv").read_text().splitlines()
    num_test = len(json.loads((workdir / "splits.json").read_text())["test"])
    assert len(lines) == 1 + num_test * 3  # header + cases x foreground classes
    saved = json.loads((report / "summary.json").read_text())
    assert saved["mean"]["dice"] == pytest.approx(summary["mean"]["dice"])
    assert all(np.isfinite(v) for v in saved["mean"].values())
    assert saved["inference"]["cases_per_second"] > 0


@pytest.fixture(scope="module")
def folds(config_file, tmp_path_factory):
    """Two cross-validation folds of the tiny config (data.num_folds=2)."""
    root = tmp_path_factory.mktemp("folds")
    workdirs = []
    for k in range(2):
        workdirs.append(root / f"fold{k}")
        overrides = [f"data.fold={k}", "data.num_folds=2", "train.eval_every=6"]
        train(load_config(config_file, overrides), workdirs[-1])
    return workdirs


def test_cross_validation_pools_out_of_fold_cases_and_decides_postprocessing(folds):
    summary = cross_validate_runs([str(w) for w in folds], tta=False)
    splits = [json.loads((w / "splits.json").read_text()) for w in folds]
    assert splits[0]["test"] == splits[1]["test"]  # the held-out test split is untouched
    assert not set(splits[0]["val"]) & set(splits[1]["val"])
    assert set(splits[0]["val"]) | set(splits[1]["val"]) == set(
        splits[0]["train"] + splits[0]["val"]
    )
    assert summary["num_cases"] == len(splits[0]["val"]) + len(splits[1]["val"])
    rows = (folds[0] / "crossval" / "metrics.csv").read_text().splitlines()
    assert len(rows) == 1 + 3 * summary["num_cases"]
    assert {r.split(",")[0] for r in rows[1:]} == set(splits[0]["val"] + splits[1]["val"])
    written = [json.loads((w / "postprocessing.json").read_text()) for w in folds]
    assert written[0] == written[1] == summary["postprocessing"]
    # evaluate applies (and records) the decision from now on
    assert evaluate_run(folds[0], split="test", tta=False)["postprocessing"] == written[0]


def test_fold_ensemble_averages_the_folds_probabilities(folds, phantom_2d):
    """predict with two workdirs = the argmax of the mean of each fold's own sliding-window
    probabilities (computed here fold by fold), then the folds' postprocessing."""
    from jaxseg import inference, postprocess
    from jaxseg.data import io, preprocess

    source = next((phantom_2d / "imagesTs").iterdir())
    image = io.read_image([source], dims=2)
    got = Segmenter([str(w) for w in folds], tta=False).segment(image)
    probs = []
    for w in folds:
        run = load_trained(w)
        x = preprocess.normalize(image.data, run.info.modalities)
        predictor = inference.window_predictor(run.model, run.params)
        window = inference.window_options(run.config, run.info.num_classes)
        probs.append(inference.sliding_window_predict(x, predictor, **window))
    expected = np.argmax((probs[0] + probs[1]) / 2, -1)
    decision = load_postprocessing(folds[0])
    expected = postprocess.apply_postprocessing(expected, decision) if decision else expected
    np.testing.assert_array_equal(got, expected)


def test_predict_overlays_a_reoriented_input(trained, phantom_2d, tmp_path):
    workdir, _ = trained
    source = next((phantom_2d / "imagesTs").iterdir())
    original = nib.load(source)
    # The same image stored another way round: x flipped and x/y swapped on disk.
    data = np.asarray(original.dataobj)
    flip_x = np.diag([-1.0, 1.0, 1.0, 1.0])
    flip_x[0, 3] = data.shape[0] - 1
    swap = np.eye(4)[[1, 0, 2, 3]]
    reoriented = np.transpose(data[::-1], (1, 0, 2))
    affine = original.affine @ flip_x @ swap
    moved = tmp_path / "moved.nii.gz"
    nib.save(nib.Nifti1Image(reoriented, affine), moved)

    segmenter = Segmenter(workdir)
    out_a = segmenter.segment_path(source, tmp_path / "a.nii.gz")[0]
    out_b = segmenter.segment_path(moved, tmp_path / "b.nii.gz")[0]
    mask_b = nib.load(out_b)
    assert mask_b.shape == reoriented.shape
    np.testing.assert_allclose(mask_b.affine, affine, atol=1e-5)
    assert mask_b.get_data_dtype() == np.uint8
    # Both masks describe the same anatomy: equal once put in canonical orientation.
    canon_a = np.asarray(nib.as_closest_canonical(nib.load(out_a)).dataobj)
    canon_b = np.asarray(nib.as_closest_canonical(mask_b).dataobj)
    np.testing.assert_array_equal(canon_a, canon_b)
    assert canon_a.max() > 0


def test_predict_a_folder(trained, phantom_2d, tmp_path):
    workdir, _ = trained
    written = Segmenter(workdir).segment_path(phantom_2d / "imagesTs", tmp_path / "masks")
    assert [p.name for p in written] == sorted(p.name for p in (phantom_2d / "imagesTs").iterdir())


def test_predict_with_rotation_tta(trained, phantom_2d, tmp_path):
    """--tta-rot90 reaches the predictor; the mask is written on the input's grid."""
    from jaxseg import predict

    workdir, _ = trained
    source = sorted((phantom_2d / "imagesTs").iterdir())[0]
    out = tmp_path / "rot.nii.gz"
    argv = ["--workdir", str(workdir), "--input", str(source), "--output", str(out)]
    assert predict.main([*argv, "--tta-rot90"]) == 0
    assert nib.load(out).shape == nib.load(source).shape


def test_export_matches_jax(trained, tmp_path):
    from jaxseg.export.from_workdir import export_run
    from jaxseg.export.saved_model import load_saved_model
    from jaxseg.inference import make_predict_fn

    workdir, _ = trained
    path = export_run(workdir, tmp_path / "saved_model")
    loaded, info = load_saved_model(path)
    assert info["metadata"]["model"] == "unet"
    x = np.random.default_rng(0).normal(size=(3, 32, 32, 1)).astype(np.float32)
    served = loaded.signatures["serving_default"](image=x)["probabilities"].numpy()
    run = load_trained(workdir)
    expected = np.asarray(make_predict_fn(run.model)(run.params, x))
    np.testing.assert_allclose(served, expected, atol=1e-4)


def _cli(*args, cwd=ROOT):
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    return subprocess.run(
        [sys.executable, "-m", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )


def test_cli_unknown_config_key(config_file, tmp_path):
    r = _cli(
        "jaxseg.train",
        "--config",
        str(config_file),
        "--workdir",
        str(tmp_path / "w"),
        "--config.train.stpes=3",
    )
    assert r.returncode == 2
    assert "train.stpes" in r.stderr and "steps" in r.stderr and "Traceback" not in r.stderr


def test_cli_unknown_model_name(config_file, tmp_path):
    r = _cli(
        "jaxseg.train",
        "--config",
        str(config_file),
        "--workdir",
        str(tmp_path / "w"),
        "--config.model.name=unetz",
    )
    assert r.returncode == 2
    assert "unetz" in r.stderr and "lightseg_tiny" in r.stderr and "Traceback" not in r.stderr


def test_cli_missing_dataset(config_file, tmp_path):
    r = _cli(
        "jaxseg.train",
        "--config",
        str(config_file),
        "--workdir",
        str(tmp_path / "w"),
        f"--config.data.root={tmp_path / 'nowhere'}",
    )
    assert r.returncode == 2
    assert "nowhere" in r.stderr and "Traceback" not in r.stderr


def test_cli_evaluate_needs_a_workdir(tmp_path):
    r = _cli("jaxseg.evaluate", "--workdir", str(tmp_path))
    assert r.returncode == 2 and "config.json" in r.stderr
