"""`python -m jaxseg.plan`: the files it writes load as a config that trains the plan, and
bad input is one line on stderr with exit status 2."""

import json

import pytest

from jaxseg import cli
from jaxseg import plan as plan_cli
from jaxseg.config import load_config
from jaxseg.data import pipeline
from jaxseg.data.dataset import load_dataset
from jaxseg.data.splits import make_splits
from jaxseg.data.synthetic import write_dataset
from jaxseg.workdir import RunInfo, model_from_config


def _run(argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.run(plan_cli.main, argv)
    out = capsys.readouterr()
    return exit_info.value.code, out.out, out.err


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory):
    root = tmp_path_factory.mktemp("phantoms")
    return write_dataset(root, dims=2, num_cases=6, shape=(40, 48), seed=5)


def test_plan_writes_fingerprint_plan_and_a_loadable_config(phantoms, tmp_path, capsys):
    out = tmp_path / "plans" / "phantom"
    argv = ["--data", str(phantoms), "--out", str(out), "--model", "unet", "--steps", "300"]
    code, stdout, _ = _run(argv, capsys)
    assert code == 0 and "patch" in stdout
    fingerprint = json.loads((out / "fingerprint.json").read_text())
    plan = json.loads((out / "plan.json").read_text())
    # the held-out test split (7:1:2 of 6 patients: 1 case) is not fingerprinted
    test = make_splits(load_dataset(phantoms).training, seed=0)["test"]
    assert len(test) == 1 and fingerprint["num_cases_analysed"] == 6 - len(test)
    assert plan["model"] == "unet"
    config = load_config(out / "config.py")
    assert list(config.data.patch_size) == plan["patch_size"]
    assert config.data.batch_size == plan["batch_size"]
    assert list(config.data.target_spacing) == pytest.approx(plan["target_spacing"], rel=1e-6)
    assert config.data.crop_nonzero == plan["crop_nonzero"] and config.train.steps == 300
    assert config.model.args.features == tuple(plan["model_args"]["features"])
    text = (out / "config.py").read_text()
    assert "rounded up to a multiple of the total stride" in text  # comments say why
    lines = text.splitlines()
    i = next(i for i, line in enumerate(lines) if line.startswith("    c.train.steps"))
    above = []
    while lines[i - 1 - len(above)].startswith("    # "):
        above.append(lines[i - 1 - len(above)])
    steps_comment = " ".join(reversed(above))
    assert "the device the plan was made on" in steps_comment and " h" in steps_comment
    assert plan["memory"]["train_step_bytes"] <= plan["memory"]["budget_bytes"]
    assert plan["training"]["step_seconds"] > 0
    # The config is one the training setup accepts: its patch fits the data, its model builds.
    spec = load_dataset(config.data.root)
    pipeline.check_patch_size(config.data.patch_size, spec)
    model_from_config(config, RunInfo.from_spec(spec))

    # A second run into the same folder is refused, and leaves the plan as it was.
    code, _, err = _run(argv, capsys)
    assert code == 2 and err.count("\n") == 1 and "--force" in err
    assert json.loads((out / "plan.json").read_text()) == plan


def test_bad_input_is_one_line_and_exit_2(phantoms, phantom_3d, tmp_path, capsys):
    code, _, err = _run(
        ["--data", str(phantoms), "--out", str(tmp_path / "a"), "--dims", "3"], capsys
    )
    assert code == 2 and err.count("\n") == 1 and "dims=3" in err
    code, _, err = _run(
        ["--data", str(phantom_3d), "--out", str(tmp_path / "s"), "--dims", "2"], capsys
    )
    assert code == 2 and err.count("\n") == 1
    assert "2D training on slices of 3D volumes is not supported yet" in err
    assert not (tmp_path / "s").exists()  # refused before any work
    code, _, err = _run(["--data", str(tmp_path / "missing"), "--out", str(tmp_path / "b")], capsys)
    assert code == 2 and err.count("\n") == 1 and "dataset folder not found" in err
    code, _, err = _run(
        ["--data", str(phantoms), "--out", str(tmp_path / "c"), "--memory-budget-gib", "0"], capsys
    )
    assert code == 2 and "memory budget" in err
