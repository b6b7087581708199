"""No command overwrites the user's data, and a bad output path fails fast (issue 11,
items 1, 3 and 4): predict, export, evaluate, plan and train check their outputs before
any inference, and the faces print one line and exit 2.

One tiny run (2 steps of a small U-Net on the 2D phantom) serves every test; a test that
changes the run copies it first. "Before inference" is proven by making inference raise.
"""

import json
import os
import shutil

import pytest

from jaxseg import cli
from jaxseg.config import load_config
from jaxseg.errors import DataError
from tests.tiny_config import write_tiny_config

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def config_file(phantom_2d, tmp_path_factory):
    path = tmp_path_factory.mktemp("configs") / "tiny.py"
    write_tiny_config(path, phantom_2d, steps=2, features=(4, 8), settings={"eval.tta": False})
    return path


@pytest.fixture(scope="module")
def workdir(config_file, tmp_path_factory):
    from jaxseg.training.loop import train

    workdir = tmp_path_factory.mktemp("run") / "w"
    train(load_config(config_file), workdir)
    return workdir


@pytest.fixture(scope="module")
def segmenter(workdir):
    from jaxseg.segment import Segmenter

    return Segmenter(workdir)


@pytest.fixture
def no_inference(monkeypatch):
    """Any model call fails the test: the checks must come first."""
    from jaxseg import evaluation, inference

    def boom(*args, **kwargs):
        raise AssertionError("inference ran before the output check")

    monkeypatch.setattr(inference, "predict_case", boom)
    monkeypatch.setattr(evaluation, "predict_labels", boom, raising=False)
    monkeypatch.setattr(evaluation, "evaluate_cases", boom)


def _face(main, argv, capsys):
    """Runs a command-line face in-process as `python -m` would: (exit code, stderr)."""
    with pytest.raises(SystemExit) as e:
        cli.run(main, argv)
    err = capsys.readouterr().err
    return e.value.code, err


def _one_line_error(code, err, *needles):
    """Exit 2 and one line `error: ...` (a progress bar drawn before it may precede it)."""
    assert code == 2, err
    lines = [line for line in err.split("\n") if line and "\r" not in line]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    err = lines[0]
    for needle in needles:
        assert str(needle) in err, (needle, err)


@pytest.fixture
def scan(phantom_2d, tmp_path):
    """A copy of the phantom's test image, and its bytes, to check it is left alone."""
    source = next((phantom_2d / "imagesTs").iterdir())
    path = tmp_path / "in" / source.name
    path.parent.mkdir()
    shutil.copy(source, path)
    return path, path.read_bytes()


# ------------------------------------------------------------------ predict: inputs are kept


def test_predict_output_equal_to_input_file_is_refused(workdir, scan, capsys, no_inference):
    from jaxseg import predict

    path, before = scan
    code, err = _face(
        predict.main,
        ["--workdir", str(workdir), "--input", str(path), "--output", str(path)],
        capsys,
    )
    _one_line_error(code, err, path, "overwrite")
    assert path.read_bytes() == before


@pytest.mark.parametrize("how", ["symlink", "hardlink", "dotdot"])
def test_predict_output_that_is_the_input_by_another_name(segmenter, scan, how, no_inference):
    path, before = scan
    other = path.parent / "mask.nii.gz"
    if how == "symlink":
        other.symlink_to(path)
    elif how == "hardlink":
        os.link(path, other)
    else:
        other = path.parent / ".." / path.parent.name / path.name
    with pytest.raises(DataError, match="the same file"):
        segmenter.segment_path(path, other)
    assert path.read_bytes() == before


def test_predict_output_folder_equal_to_input_folder(workdir, scan, capsys, no_inference):
    from jaxseg import predict

    path, before = scan
    folder = str(path.parent)
    code, err = _face(
        predict.main, ["--workdir", str(workdir), "--input", folder, "--output", folder], capsys
    )
    _one_line_error(code, err, path.name, "overwrite")
    assert path.read_bytes() == before


def test_predict_folder_output_holding_a_link_to_an_input(segmenter, scan, tmp_path, no_inference):
    """The output folder differs, but the name a mask takes there is a hardlink to an input."""
    path, before = scan
    out = tmp_path / "masks"
    out.mkdir()
    os.link(path, out / path.name)
    with pytest.raises(DataError, match="the same file"):
        segmenter.segment_path(path.parent, out)
    assert path.read_bytes() == before


# ------------------------------------------------------- predict: bad output paths, early


@pytest.mark.parametrize(
    "output,needle",
    [
        ("blocker/mask.nii.gz", "is a file, not a folder"),  # a missing root: a file in the way
        ("/proc/jaxseg-no-such-dir/mask.nii.gz", "cannot write into /proc"),  # not writable
        ("mask.jpg", "unsupported output type '.jpg'"),  # rejected before inference now
        ("mask", "unsupported output type '(no ending)'"),
        ("existing_folder", "is a folder; give a file name"),
    ],
)
def test_predict_bad_output_fails_before_inference(
    workdir, scan, tmp_path, capsys, no_inference, output, needle
):
    from jaxseg import predict

    path, _ = scan
    (tmp_path / "blocker").write_text("not a folder")
    (tmp_path / "existing_folder").mkdir()
    target = output if output.startswith("/") else str(tmp_path / output)
    code, err = _face(
        predict.main, ["--workdir", str(workdir), "--input", str(path), "--output", target], capsys
    )
    _one_line_error(code, err, target, needle)


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write into a read-only folder")
def test_predict_into_a_read_only_folder(segmenter, scan, tmp_path, no_inference):
    path, _ = scan
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        with pytest.raises(DataError, match="locked"):
            segmenter.segment_path(path, locked / "mask.nii.gz")
    finally:
        locked.chmod(0o700)


def test_predict_folder_into_an_existing_file(segmenter, scan, tmp_path, no_inference):
    path, _ = scan
    (tmp_path / "out.txt").write_text("keep me")
    with pytest.raises(DataError, match="is a file; give a folder"):
        segmenter.segment_path(path.parent, tmp_path / "out.txt")
    assert (tmp_path / "out.txt").read_text() == "keep me"


def test_predict_still_writes_a_mask(segmenter, scan, tmp_path):
    """The checks let an ordinary run through, into a folder that does not exist yet."""
    path, before = scan
    written = segmenter.segment_path(path, tmp_path / "new" / "deeper" / "mask.nii.gz")
    assert written[0].is_file() and path.read_bytes() == before


@pytest.mark.parametrize(
    "probabilities, needle",
    [("input", "overwrite"), ("mask", "same file"), ("probs.png", "NIfTI")],
)
def test_predict_probability_path_checked_before_inference(
    segmenter, scan, tmp_path, no_inference, probabilities, needle
):
    """--probabilities may not replace the input or the mask, and must be NIfTI."""
    path, before = scan
    mask = tmp_path / "mask.nii.gz"
    target = {"input": path, "mask": mask}.get(probabilities, tmp_path / probabilities)
    with pytest.raises(DataError, match=needle):
        segmenter.segment_path(path, mask, probabilities=target)
    assert path.read_bytes() == before and not mask.exists()


def test_predict_into_a_folder_inside_the_input_folder(segmenter, scan):
    """in/masks is not an input: writing there is fine, and so is a rerun, which now sees
    in/masks as a folder beside the image."""
    path, before = scan
    for _ in range(2):
        written = segmenter.segment_path(path.parent, path.parent / "masks")
        assert [p.name for p in written] == [path.name]
    assert path.read_bytes() == before


# ------------------------------------------------------------------------------ export


def test_export_refuses_to_replace_what_is_not_an_export(workdir, tmp_path, capsys):
    from jaxseg.export import __main__ as export_face

    other = tmp_path / "their_model"
    other.mkdir()
    (other / "saved_model.pb").write_bytes(b"another tool's SavedModel")
    for target, needle in [
        (other, "not a jaxseg export"),  # a SavedModel, but not ours: export would delete it
        (workdir, "is or holds the run"),
        (workdir.parent, "is or holds the run"),
        (tmp_path / "file.txt", "is a file"),
        (tmp_path / "file.txt" / "saved_model", "is a file, not a folder"),
    ]:
        (tmp_path / "file.txt").write_text("keep me")
        code, err = _face(
            export_face.main, ["--workdir", str(workdir), "--output", str(target)], capsys
        )
        _one_line_error(code, err, target, needle)
    assert (other / "saved_model.pb").read_bytes() == b"another tool's SavedModel"
    assert (workdir / "config.json").is_file()


# ----------------------------------------------------------------------------- evaluate


def test_evaluate_report_path_checked_before_inference(workdir, tmp_path, capsys, no_inference):
    from jaxseg import evaluate

    run = tmp_path / "run"
    shutil.copytree(workdir, run)
    (run / "eval_test").write_text("a file where the report folder goes")
    code, err = _face(evaluate.main, ["--workdir", str(run), "--split", "test"], capsys)
    _one_line_error(code, err, run / "eval_test", "is a file")


@pytest.mark.parametrize("broken", ["empty", "missing"])
def test_evaluate_an_empty_or_missing_split(workdir, tmp_path, capsys, no_inference, broken):
    """Not "nan over 0 cases" with exit 0: an error with the case count and the need."""
    from jaxseg import evaluate

    run = tmp_path / "run"
    shutil.copytree(workdir, run)
    recorded = json.loads((run / "splits.json").read_text())
    if broken == "empty":
        recorded["test"] = []
    else:
        del recorded["test"]
    (run / "splits.json").write_text(json.dumps(recorded))
    code, err = _face(evaluate.main, ["--workdir", str(run), "--split", "test"], capsys)
    _one_line_error(code, err, "test split", "10 training cases", "at least 3 patients")


# ------------------------------------------------------------------------- plan, train


def test_plan_into_the_dataset_is_refused_even_with_force(phantom_2d, tmp_path, capsys):
    from jaxseg import plan

    data = tmp_path / "ds"
    shutil.copytree(phantom_2d, data)
    listing = sorted(p.name for p in data.iterdir())
    code, err = _face(
        plan.main, ["--data", str(data), "--out", str(data), "--force", "--no-timing"], capsys
    )
    _one_line_error(code, err, data, "dataset folder")
    assert sorted(p.name for p in data.iterdir()) == listing


def test_plan_out_not_writable(phantom_2d, tmp_path, capsys):
    from jaxseg import plan

    (tmp_path / "file.txt").write_text("x")
    out = tmp_path / "file.txt" / "plan"
    code, err = _face(plan.main, ["--data", str(phantom_2d), "--out", str(out)], capsys)
    _one_line_error(code, err, out, "is a file, not a folder")


def test_train_workdir_in_the_dataset_is_refused(config_file, phantom_2d, tmp_path, capsys):
    from jaxseg import train

    data = tmp_path / "ds"
    shutil.copytree(phantom_2d, data)
    listing = sorted(p.name for p in data.iterdir())
    for workdir in (data, data / "imagesTr" / "run"):
        code, err = _face(
            train.main,
            ["--config", str(config_file), "--workdir", str(workdir), f"--config.data.root={data}"],
            capsys,
        )
        _one_line_error(code, err, workdir, "dataset folder")
    assert sorted(p.name for p in data.iterdir()) == listing


# --------------------------------------------------------------- image-size limit flags


def test_predict_max_image_bytes_flag(workdir, scan, tmp_path, capsys):
    from jaxseg import predict

    path, _ = scan
    argv = ["--workdir", str(workdir), "--input", str(path), "--output", str(tmp_path / "m.nii.gz")]
    code, err = _face(predict.main, [*argv, "--max-image-bytes", "100"], capsys)
    _one_line_error(code, err, path, "above the limit of 100 bytes")
    assert not (tmp_path / "m.nii.gz").exists()


def test_evaluate_max_image_bytes_flag_reaches_the_pipeline(workdir, tmp_path, capsys):
    from jaxseg import evaluate

    run = tmp_path / "run"
    shutil.copytree(workdir, run)
    argv = ["--workdir", str(run), "--split", "test", "--max-image-bytes", "100"]
    code, err = _face(evaluate.main, argv, capsys)
    _one_line_error(code, err, "above the limit of 100 bytes", "max_image_bytes")
