"""The whole-pipeline `segment` signature: its sliding windows against the host
implementation (concrete and with symbolic shapes through jax.export), its normalisation
against `preprocess.normalize`, and a client process that imports only TensorFlow and
numpy, on a shape the export never saw, against `jaxseg.predict`'s Segmenter."""

import json
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import export

from jaxseg import inference
from jaxseg.data import preprocess
from jaxseg.errors import ConfigError
from jaxseg.export import pipeline
from tests.tiny_config import write_tiny_config

RNG = np.random.default_rng(0)
W = RNG.normal(size=(2, 3)).astype(np.float32)


def _predict(windows):
    """A position-dependent stand-in model: a window's place in the blend matters."""
    ramp = jnp.linspace(0.0, 1.0, windows.shape[1]).reshape((1, -1) + (1,) * (windows.ndim - 2))
    return jax.nn.softmax(windows @ W + ramp, axis=-1)


def _host(image, patch, overlap=0.5):
    return inference.sliding_window_predict(
        image,
        lambda b: np.asarray(_predict(b)),
        patch_size=patch,
        num_classes=3,
        overlap=overlap,
        batch_size=3,
    )


@pytest.mark.parametrize(
    "shape,patch,overlap",
    [
        ((37, 29, 2), (16, 16), 0.5),
        ((9, 40, 2), (16, 16), 0.25),  # smaller than the patch along x
        ((16, 16, 2), (16, 16), 0.5),
        ((11, 19, 7, 2), (8, 8, 8), 0.5),
    ],
)
def test_windows_match_the_host_sliding_window(shape, patch, overlap):
    image = RNG.normal(size=shape).astype(np.float32)
    fn = lambda x: pipeline.sliding_windows(
        x, _predict, patch_size=patch, num_classes=3, overlap=overlap
    )
    np.testing.assert_allclose(jax.jit(fn)(image), _host(image, patch, overlap), atol=1e-6)


def test_symbolic_shapes_export_once_and_run_on_any_size():
    sizes = export.symbolic_shape("x, y, z")
    fn = lambda v: pipeline.sliding_windows(v, _predict, patch_size=(8, 8, 8), num_classes=3)
    exported = export.export(jax.jit(fn))(jax.ShapeDtypeStruct((*sizes, 2), jnp.float32))
    for shape in ((11, 19, 7, 2), (5, 5, 5, 2), (17, 8, 12, 2)):
        image = RNG.normal(size=shape).astype(np.float32)
        np.testing.assert_allclose(exported.call(image), _host(image, (8, 8, 8)), atol=1e-6)


@pytest.mark.parametrize(
    "modality,method,window,stats,zeros",
    [
        ("MRI", None, (-1000.0, 1000.0), None, False),
        ("MRI", None, (-1000.0, 1000.0), None, True),  # mostly zero: z-score the nonzero
        ("CT", None, (-200.0, 300.0), None, False),
        ("CT", None, (-1000.0, 1000.0), [(-50.0, 400.0, 60.0, 80.0)], False),
        ("noNorm", None, (-1000.0, 1000.0), None, False),
        ("rgb_to_0_1", None, (-1000.0, 1000.0), None, False),
        ("US", "minmax01", (-1000.0, 1000.0), None, False),
        ("US", "minmax11", (-1000.0, 1000.0), None, False),
        ("MRI", "percentile_clip", (-1000.0, 1000.0), None, False),
        ("MRI", "percentile_clip+minmax01", (-1000.0, 1000.0), None, True),
        ("CT", "percentile_clip+ct_window", (-100.0, 200.0), None, False),
    ],
)
def test_in_graph_normalisation_is_the_runs(modality, method, window, stats, zeros):
    image = (300.0 * RNG.normal(size=(23, 17, 1)) + 40.0).astype(np.float32)
    if zeros:
        image[:15] = 0.0
    prep = preprocess.Preprocessing(
        modalities=(modality,), ct_window=window, intensity_stats=stats, normalize=method
    )
    expected, _ = prep.image(image, (1.0, 1.0))
    schemes = prep.describe()["normalization"]
    got = jax.jit(lambda x: pipeline.normalize_schemes(x, schemes))(image)
    np.testing.assert_allclose(got, expected, rtol=2e-5, atol=2e-5)


def test_what_has_no_in_graph_form_is_refused():
    with pytest.raises(ConfigError, match="crop_nonzero"):
        pipeline.check_exportable({"crop_nonzero": True, "normalization": []})
    with pytest.raises(ConfigError, match="no in-graph form"):
        pipeline.check_exportable({"normalization": [{"scheme": "clahe_then", "channel": 0}]})


CLIENT = """
import json, sys
import numpy as np
import tensorflow as tf

model = tf.saved_model.load(sys.argv[1])
segment = model.signatures["segment"]
image = np.load(sys.argv[2])
out = segment(image=tf.constant(image), spacing=tf.constant([1.0, 1.0]))
np.save(sys.argv[3], out["labels"].numpy())
try:
    segment(image=tf.constant(np.concatenate([image, image], -1)), spacing=tf.constant([1.0, 1.0]))
    error = None
except tf.errors.InvalidArgumentError as e:
    error = e.message
print(json.dumps({"error": error, "jaxseg": sorted(m for m in sys.modules if m.startswith("jaxseg"))}))
"""


@pytest.mark.e2e
def test_a_plain_tensorflow_client_gets_predicts_labels(phantom_2d, tmp_path):
    from jaxseg.config import load_config
    from jaxseg.data import io
    from jaxseg.export.from_workdir import export_run
    from jaxseg.segment import Segmenter
    from jaxseg.training.loop import train

    cfg = tmp_path / "c.py"
    write_tiny_config(cfg, phantom_2d, steps=12, warmup=2)
    workdir = tmp_path / "w"
    train(load_config(cfg), workdir)
    saved = export_run(workdir, tmp_path / "sm", pipeline=True, tta=False, tflite=True)
    assert (saved / "model_float16.tflite").stat().length > 0
    meta = json.loads((saved / "jaxseg_export.json").read_text())
    assert meta["signatures"]["segment"] == "cpu"

    # A shape the export never saw: a crop of the test image, 37 x 45 (patch 32).
    image = io.read_image(next((phantom_2d / "imagesTs").iterdir()), dims=2)
    crop = np.ascontiguousarray(image.data[:37, :45])
    np.save(tmp_path / "x.npy", crop)
    script = tmp_path / "client.py"
    script.write_text(CLIENT)
    run = subprocess.run(
        [sys.executable, str(script), str(saved), str(tmp_path / "x.npy"), str(tmp_path / "y.npy")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    report = json.loads(run.stdout.strip().splitlines()[-1])
    assert report["jaxseg"] == []  # the client never imported jaxseg
    assert "takes 1 channel(s)" in report["error"]

    import dataclasses

    expected = Segmenter(workdir, tta=False).segment(dataclasses.replace(image, data=crop))
    labels = np.load(tmp_path / "y.npy")
    assert labels.shape == expected.shape and labels.dtype == expected.dtype
    assert np.mean(labels == expected) >= 0.999
