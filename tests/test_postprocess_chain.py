"""The eval.postprocess chain: config parsing and its errors, the order of the steps, the
record in the workdir, and the path evaluate and predict take (CRF on the probabilities
of `inference.case_probabilities`, then the decision, then the label steps)."""

import json

import numpy as np
import pytest
from scipy import ndimage

from jaxseg import evaluation, inference
from jaxseg import postprocess as pp
from jaxseg.config import apply_override, config_from_json
from jaxseg.data.io import Image
from jaxseg.data.preprocess import Preprocessing
from jaxseg.defaults import base_config
from jaxseg.errors import ConfigError, DataError
from jaxseg.workdir import POSTPROCESS_CHAIN_FILE, RunInfo, load_postprocess_chain
from tests.tiny_config import write_tiny_config

LABELS = {0: "background", 1: "tumour", 2: "core"}


def test_default_is_empty_and_overrides_parse():
    c = base_config()
    assert tuple(c.eval.postprocess) == ()
    assert not pp.Chain(c.eval.postprocess, LABELS)
    apply_override(c, 'eval.postprocess=[{"step": "open", "radius_mm": 1}, {"step": "fill_holes"}]')
    # Saved in config.json and read back (dicts become ConfigDicts, lists tuples).
    chain = pp.Chain(config_from_json(c.to_json()).eval.postprocess, LABELS)
    assert [s["step"] for s in chain.steps] == ["open", "fill_holes"]
    assert chain.steps[0]["radius_mm"] == 1.0 and chain.steps[0]["classes"] is None


@pytest.mark.parametrize(
    "steps, match",
    [
        ([{"step": "erode"}], "unknown postprocessing step 'erode'; valid steps: crf, open, close"),
        ([{"step": "open", "radius_mm": -1.0}], "negative"),
        ([{"step": "open"}], "'radius_mm' is required"),
        ([{"step": "crf", "window_mm": 0}], "window_mm=0"),
        ([{"step": "crf", "window_mm": -2.0}], "window_mm"),
        ([{"step": "fill_holes"}, {"step": "crf"}], "must be the first step"),
        ([{"step": "hierarchy", "constraints": {"core": "inside:edema"}}], "'edema' is not"),
        ([{"step": "close", "radius_mm": 1, "classes": ["edema"]}], "'edema' is not a foreground"),
        ([{"step": "keep_components"}], "set top_k or min_volume_mm3"),
        ([{"step": "keep_components", "top_k": 0}], "top_k=0"),
        ([{"step": "keep_components", "top_k": 1, "min_volume_mm3": -1}], "min_volume_mm3"),
        ([{"step": "fill_holes", "radius_mm": 1}], "unknown options"),
        ([{"radius_mm": 1}], "'step' name"),
        ({"step": "open"}, "list of steps"),
    ],
)
def test_bad_chains_are_config_errors(steps, match):
    with pytest.raises(ConfigError, match=match):
        pp.Chain(steps, LABELS)


def _case(seed=0):
    rng = np.random.default_rng(seed)
    field = ndimage.gaussian_filter(rng.standard_normal((30, 28)), 2.0)
    labels = np.zeros((30, 28), np.uint8)
    labels[field > 0.02] = 1
    labels[field > 0.12] = 2
    return labels


def test_chain_applies_steps_in_order_and_round_trips(tmp_path):
    steps = [
        {"step": "close", "radius_mm": 1.0, "classes": ["tumour"]},
        {"step": "fill_holes"},
        {"step": "keep_components", "top_k": 1, "foreground": True},
        {"step": "hierarchy", "constraints": {"core": "inside:tumour"}},
        {"step": "open", "radius_mm": 2.0},
    ]
    chain = pp.Chain(steps, LABELS)
    labels, spacing = _case(), (1.0, 1.2)
    want = pp.close_labels(labels, spacing, 1.0, [1])
    want = pp.fill_holes(want)
    want = pp.keep_components(want, spacing, top_k=1, foreground=True)
    want = pp.apply_hierarchy(want, [(2, 1)])
    want = pp.open_labels(want, spacing, 2.0)
    got = chain.apply(labels, spacing)
    np.testing.assert_array_equal(got, want)
    assert got.dtype == labels.dtype and (got != labels).any()
    # The record has every option and class names; it reads back to the same chain.
    pp.save_chain(chain, tmp_path / "chain.json")
    record = json.loads((tmp_path / "chain.json").read_text())["steps"]
    assert record[0] == {"step": "close", "radius_mm": 1.0, "classes": ["tumour"]}
    assert record[2]["min_volume_mm3"] == 0.0 and record[2]["connectivity"] is None
    again = pp.load_chain(tmp_path / "chain.json", LABELS)
    np.testing.assert_array_equal(again.apply(labels, spacing), want)
    (tmp_path / "bad.json").write_text("[1, 2]")
    with pytest.raises(DataError, match="bad.json"):
        pp.load_chain(tmp_path / "bad.json", LABELS)


def test_workdir_chain_file_takes_precedence(tmp_path):
    config = base_config()
    config.eval.postprocess = ({"step": "fill_holes"},)
    info = RunInfo(
        dims=2, in_channels=1, num_classes=3, labels=LABELS, modalities=("MRI",), dataset_root=""
    )
    assert load_postprocess_chain(tmp_path, config, info).to_json()[0]["step"] == "fill_holes"
    pp.save_chain(
        pp.Chain([{"step": "open", "radius_mm": 1}], LABELS), tmp_path / POSTPROCESS_CHAIN_FILE
    )
    assert load_postprocess_chain(tmp_path, config, info).to_json()[0]["step"] == "open"
    config.eval.postprocess = ({"step": "nope"},)
    (tmp_path / POSTPROCESS_CHAIN_FILE).unlink()
    with pytest.raises(ConfigError, match="valid steps"):
        load_postprocess_chain(tmp_path, config, info)


def test_predict_labels_runs_crf_then_decision_then_label_steps():
    """evaluate's and predict's path: the CRF on `case_probabilities` and the image, the
    largest-component decision, then the chain's label steps; checked step by step."""
    rng = np.random.default_rng(2)
    truth = _case(3)
    intensity = truth.astype(np.float32) + rng.normal(0, 0.4, truth.shape).astype(np.float32)
    image = Image(
        data=intensity[..., None],
        affine=np.eye(4),
        spacing=(1.0, 1.0),
        original_affine=np.eye(4),
        original_shape=truth.shape,
        path="c.nii.gz",
    )
    prep = Preprocessing(modalities=("noNorm",))

    def predictor(x):  # a "model": softmax of a noisy one-hot of the rounded intensity
        k = np.clip(np.rint(x[..., 0]), 0, 2).astype(int)
        logits = 2.0 * np.eye(3, dtype=np.float32)[k] + rng.normal(0, 1.0, (*k.shape, 3))
        e = np.exp(logits - logits.max(-1, keepdims=True))
        return (e / e.sum(-1, keepdims=True)).astype(np.float32)

    window = dict(
        patch_size=(32, 32), num_classes=3, overlap=0.5, batch_size=1, gaussian_sigma_scale=0.125
    )
    chain = pp.Chain([{"step": "crf"}, {"step": "fill_holes"}], LABELS)
    decision = {"foreground": True, "classes": []}
    seed_state = rng.bit_generator.state
    got = evaluation.predict_labels(
        image, predictor, window=window, preprocessing=prep, postprocessing=decision, chain=chain
    )
    rng.bit_generator.state = seed_state  # the same "model" noise again
    probs, grid = inference.case_probabilities(
        image.data, image.spacing, predictor, window=window, preprocessing=prep
    )
    want = grid.uncrop(pp.crf_labels(probs, image.data[grid.box], image.spacing))
    assert (want != inference.argmax_labels(probs)).any()  # the CRF changed something
    want = pp.fill_holes(pp.keep_largest(want, foreground=True, classes=[]))
    np.testing.assert_array_equal(got, want)
    # Without a chain it is predict_case plus the decision, as before.
    rng.bit_generator.state = seed_state
    plain = evaluation.predict_labels(image, predictor, window=window, preprocessing=prep)
    rng.bit_generator.state = seed_state
    np.testing.assert_array_equal(
        plain,
        inference.predict_case(
            image.data, image.spacing, predictor, window=window, preprocessing=prep
        ),
    )


@pytest.mark.e2e
def test_evaluate_and_predict_apply_and_record_the_chain(phantom_2d, tmp_path):
    from jaxseg.config import load_config
    from jaxseg.data import dataset as dataset_lib
    from jaxseg.data import pipeline
    from jaxseg.evaluate import evaluate_run
    from jaxseg.segment import Segmenter
    from jaxseg.training.loop import train

    config_file = tmp_path / "tiny.py"
    write_tiny_config(
        config_file,
        phantom_2d,
        steps=2,
        settings={
            "eval.tta": False,
            "eval.postprocess": ({"step": "crf", "iterations": 2}, {"step": "fill_holes"}),
        },
    )
    workdir = tmp_path / "w"
    train(load_config(config_file), workdir)
    summary = evaluate_run(workdir, split="val")
    assert [s["step"] for s in summary["postprocess_chain"]] == ["crf", "fill_holes"]
    assert summary["postprocess_chain"][0]["iterations"] == 2
    saved = json.loads((workdir / "eval_val" / "summary.json").read_text())
    assert saved["postprocess_chain"] == summary["postprocess_chain"]
    # predict (Segmenter) runs the same chain: equal to predict_labels step by step.
    seg = Segmenter(workdir, tta=False)
    spec = dataset_lib.load_dataset(phantom_2d)
    _, image, _ = next(pipeline.eval_cases(spec, spec.training[:1]))
    probs, grid = inference.case_probabilities(
        image.data,
        image.spacing,
        seg._predictor,
        window=seg._window,
        preprocessing=seg.preprocessing,
    )
    want = grid.uncrop(pp.crf_labels(probs, image.data[grid.box], image.spacing, iterations=2))
    want = pp.fill_holes(want)
    np.testing.assert_array_equal(seg.segment(image), want)  # label values = classes here
