"""Issue 15, piece 3: training the class head (loss.class_weight / class_target), evaluate's
AUC / accuracy / sensitivity / specificity, and predict --modalities with absent channels."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from jaxseg import losses
from jaxseg.defaults import base_config
from jaxseg.errors import ConfigError
from jaxseg.metrics.classification import classification_metrics
from jaxseg.training import optimizer as optimizer_lib
from jaxseg.training.state import TrainState
from jaxseg.training.steps import make_train_step
from jaxseg.workdir import RunInfo, model_from_config
from tests.models.test_fusion import TINY as FUSION_TINY
from tests.models.test_fusion import _random_params

# test_fusion's tiny sizes, deterministic in training (the class CE is recomputed outside).
TINY = {**FUSION_TINY, "drop_path": 0.0, "modality_dropout": 0.0}
LABELS = {0: "bg", 1: "a", 2: "b"}
INFO = RunInfo(2, 2, 3, LABELS, ("MRI", "MRI"), "", channel_names=("A", "B"))


def _config(target, heads=2, weight=0.5):
    c = base_config()
    c.model.name = "lightseg_fusion"
    c.model.args.update({**TINY, "num_case_classes": heads})
    for key in list(c.augment.keys()):  # no augmentation: the step sees the batch as given
        if key.endswith("_prob"):
            c.augment[key] = 0.0
    c.train.warmup_steps = 0
    c.loss.class_weight = weight
    c.loss.class_target = target
    return c


def _batch(n=4):
    rng = np.random.default_rng(0)
    label = rng.integers(0, 2, (n, 16, 16)) * (rng.random((n, 1, 1)) < 0.5)  # some without 1
    label[0, :3, :3] = 2
    return {
        "image": jnp.asarray(rng.normal(size=(n, 16, 16, 2)), jnp.float32),
        "label": jnp.asarray(label, jnp.int32),
        "case_class": jnp.asarray([1, 0, 1, 0], jnp.int32),
    }


def _numpy_ce(logits, target):
    z = np.asarray(logits, np.float64)
    logp = z - z.max(1, keepdims=True)
    logp -= np.log(np.exp(logp).sum(1, keepdims=True))
    return -logp[np.arange(len(target)), target].mean()


@pytest.mark.parametrize("spec", ["field", "foreground:1"])
def test_class_ce_term_equals_numpy_softmax_ce(spec):
    config = _config(spec)
    target = losses.resolve_class_target(config.loss, ("no", "yes"), LABELS)
    model = model_from_config(config, INFO)
    optimizer = optimizer_lib.make_optimizer(config.train)
    # Random parameters from the shapes, and one jitted apply: eager init would dispatch
    # (and compile) op by op.
    params = _random_params(model, jnp.zeros((1, 16, 16, 2)))
    state = TrainState(jnp.zeros((), jnp.int32), params, optimizer.init(params))
    batch = _batch()
    classify = jax.jit(lambda p, x: model.apply({"params": p}, x, with_class_logits=True)[1])
    cls = classify(params, batch["image"])
    label = np.asarray(batch["label"])
    truth = (
        np.asarray(batch["case_class"])
        if spec == "field"
        else np.array([(lab == 1).any() for lab in label], int)  # per patch
    )
    assert 0 < truth.sum() < len(truth)
    step = jax.jit(make_train_step(model, optimizer, config, class_target=target))
    _, metrics = step(state, batch, jax.random.key(1))
    np.testing.assert_allclose(metrics["class_ce"], _numpy_ce(cls, truth), rtol=1e-5)
    np.testing.assert_allclose(
        metrics["loss"], metrics["dice_loss"] + metrics["ce"] + 0.5 * metrics["class_ce"], 1e-5
    )


def test_foreground_target_is_numpy_any_per_patch():
    label = _batch()["label"]
    for k in (1, 2):
        want = np.array([(lab == k).any() for lab in np.asarray(label)], np.int32)
        np.testing.assert_array_equal(losses.foreground_target(label, k), want)


def test_config_errors_name_the_keys():
    with pytest.raises(ConfigError, match="num_case_classes = 3.*class_target"):
        config = _config("foreground:1", heads=3)
        model = model_from_config(config, INFO)
        target = losses.resolve_class_target(config.loss, (), LABELS)
        make_train_step(model, optimizer_lib.make_optimizer(config.train), config, None, target)
    config = base_config()
    config.model.name, config.loss.class_weight = "unet", 1.0
    config.model.args.features = (8, 16)
    unet = model_from_config(config, INFO)
    target = losses.resolve_class_target(config.loss, (), LABELS)
    with pytest.raises(ConfigError, match="model 'unet' has"):
        make_train_step(unet, optimizer_lib.make_optimizer(config.train), config, None, target)
    config.loss.class_target = "field"
    with pytest.raises(ConfigError, match="class_target"):
        losses.resolve_class_target(config.loss, (), LABELS)


def test_old_run_json_loads_and_presence_needs_a_multimodal_model():
    from jaxseg import inference

    old = json.loads(INFO.to_json())
    del old["channel_names"], old["case_classes"]  # a run.json written before them
    back = RunInfo.from_json(json.dumps(old))
    assert back.channel_names == () and back.case_classes == ()
    assert RunInfo.from_json(INFO.to_json()) == INFO
    config = base_config()
    config.model.name, config.model.args.features = "unet", (8, 16)
    with pytest.raises(ConfigError, match="takes no presence vector"):
        inference.make_predict_fn(model_from_config(config, INFO), presence=(True, False))


def test_metrics_equal_the_formulas():
    p1 = np.array([0.9, 0.8, 0.8, 0.3, 0.6, 0.2, 0.1, 0.8, 0.4, 0.55])
    y = np.array([1, 1, 0, 1, 0, 0, 0, 1, 1, 0])
    got = classification_metrics(np.stack([1 - p1, p1], 1), y)
    pos, neg = p1[y == 1], p1[y == 0]
    u = stats.mannwhitneyu(pos, neg).statistic  # U of the positives, ties 1/2
    assert got["auc"] == pytest.approx(u / (len(pos) * len(neg)))
    pred = p1 > 0.5
    tp, fn = (pred & (y == 1)).sum(), (~pred & (y == 1)).sum()
    tn, fp = (~pred & (y == 0)).sum(), (pred & (y == 0)).sum()
    assert got["sensitivity"] == pytest.approx(tp / (tp + fn))
    assert got["specificity"] == pytest.approx(tn / (tn + fp))
    assert got["accuracy"] == pytest.approx((tp + tn) / len(y))
    assert got["num_cases"] == 10


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny lightseg_fusion trained 2 steps with class_weight > 0 on 2-modality phantoms."""
    from jaxseg.config import load_config
    from jaxseg.data import synthetic
    from jaxseg.training.loop import train
    from tests.tiny_config import write_tiny_config

    tmp = tmp_path_factory.mktemp("cls")
    root = synthetic.write_dataset(
        tmp / "mm", dims=2, num_cases=10, shape=(32, 32), seed=1, modalities=2
    )
    settings = {
        "model.name": "lightseg_fusion",
        **{f"model.args.{k}": v for k, v in TINY.items()},
        "model.args.num_case_classes": 2,
        "loss.class_weight": 1.0,
        "eval.tta": False,
    }
    path = write_tiny_config(tmp / "c.py", root, steps=2, features=None, settings=settings)
    train(load_config(path), tmp / "run")
    return root, tmp / "run"


@pytest.mark.slow
def test_trains_and_evaluate_reports_classification(trained):
    from jaxseg.evaluate import evaluate_run

    _, workdir = trained
    summary = evaluate_run(workdir, split="test", tta=False)
    c = summary["classification"]
    assert c["target"] == "field" and c["pooling"] == "mean" and c["num_cases"] == 2
    assert set(c) >= {"auc", "accuracy", "sensitivity", "specificity"}
    on_disk = json.loads((workdir / "eval_test" / "summary.json").read_text())
    assert on_disk["classification"]["accuracy"] == c["accuracy"]


@pytest.mark.slow
def test_predict_modalities_with_one_absent(trained, tmp_path, capsys):
    from jaxseg import cli, predict
    from jaxseg.data import io
    from jaxseg.data.preprocess import Preprocessing
    from jaxseg.workdir import load_trained

    root, workdir = trained
    case = sorted((root / "imagesTr").glob("*_0000.nii.gz"))[0]
    out = tmp_path / "mask.nii.gz"
    argv = ["--workdir", str(workdir), "--input", str(case), "--no-tta"]
    with pytest.raises(SystemExit) as done:
        cli.run(predict.main, [*argv, "--output", str(out), "--modalities", "A"])
    assert done.value.code == 0
    # The reference: the model on the zero-filled preprocessed case with presence [1, 0]
    # (32 x 32 = one window, no TTA: the mask is that window's argmax).
    run = load_trained(workdir)
    image = io.read_image([case], dims=2)
    full = np.concatenate([image.data, np.zeros_like(image.data)], axis=-1)
    x, _ = Preprocessing.from_config(run.config.data, run.info.modalities).image(
        full, image.spacing
    )
    logits = run.model.apply(
        {"params": run.params}, jnp.asarray(x[None]), presence=jnp.array([[True, False]])
    )
    want = np.asarray(jnp.argmax(logits[0], -1))
    got = io.read_image([out], dims=2).data[..., 0]  # canonical, as the model saw it
    np.testing.assert_array_equal(got, want)
    for names, message in (("C", "declared channels are A, B"), ("", "--modalities is empty")):
        with pytest.raises(SystemExit) as done:
            cli.run(
                predict.main, [*argv, "--output", str(tmp_path / "x.nii"), "--modalities", names]
            )
        assert done.value.code == 2
        assert message in capsys.readouterr().err


@pytest.mark.slow
def test_export_signature_returns_class_probabilities(trained, tmp_path):
    tf = pytest.importorskip("tensorflow")
    from jaxseg.export.from_workdir import export_run
    from jaxseg.workdir import load_trained

    _, workdir = trained
    saved = export_run(workdir, tmp_path / "export")
    info = json.loads((saved / "jaxseg_export.json").read_text())
    assert info["class_output"] == {
        "name": "class_probabilities",
        "shape": [None, 2],
        "dtype": "float32",
    }
    x = np.random.default_rng(0).normal(size=(2, 32, 32, 2)).astype(np.float32)
    out = tf.saved_model.load(str(saved)).signatures["serving_default"](image=tf.constant(x))
    run = load_trained(workdir)
    seg, cls = run.model.apply({"params": run.params}, x, with_class_logits=True)
    z = np.asarray(cls, np.float64)
    want = np.exp(z - z.max(1, keepdims=True))
    want /= want.sum(1, keepdims=True)  # softmax in numpy
    np.testing.assert_allclose(out["class_probabilities"].numpy(), want, atol=1e-5)
    assert out["probabilities"].shape == (2, 32, 32, 3)
