"""TFLite float16 from the patch signature: run under ai-edge-litert and compared with the
JAX predict function; a failed conversion names the problem and leaves no file."""

import jax
import numpy as np
import pytest

from jaxseg import inference
from jaxseg.errors import JaxsegError
from jaxseg.export import tflite
from jaxseg.export.saved_model import export_saved_model
from jaxseg.models import build_model


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    model = build_model("unet", dims=2, in_channels=1, num_classes=3, features=(4, 8))
    x = np.zeros((1, 32, 32, 1), np.float32)
    params = model.init(jax.random.PRNGKey(0), x, train=False)["params"]
    out = tmp_path_factory.mktemp("tfl") / "sm"
    export_saved_model(
        inference.make_predict_fn(model), params, out, patch_size=(32, 32), in_channels=1
    )
    return out, model, params


def test_float16_tflite_matches_jax(exported):
    from ai_edge_litert.interpreter import Interpreter

    saved, model, params = exported
    path = tflite.write_tflite_float16(saved)
    assert path.name == tflite.TFLITE_FLOAT16 and path.stat().length > 0
    runner = Interpreter(model_path=str(path)).get_signature_runner("serving_default")
    x = np.random.default_rng(0).normal(size=(1, 32, 32, 1)).astype(np.float32)
    got = runner(image=x)["probabilities"]
    want = np.asarray(jax.jit(inference.make_predict_fn(model))(params, x))
    # float16 weights: probabilities agree to ~1e-3, the argmax almost everywhere.
    np.testing.assert_allclose(got, want, atol=5e-3)
    assert np.mean(got.argmax(-1) == want.argmax(-1)) > 0.99


def test_a_failed_conversion_names_it_and_writes_nothing(exported, monkeypatch):
    import tensorflow as tf

    saved, _, _ = exported
    target = saved.parent / "bad.tflite"

    class Broken:
        def convert(self):
            raise RuntimeError("'tf.Conv3DBackpropInputV2' op is neither a custom nor a flex op")

    real = tf.lite.TFLiteConverter.from_saved_model

    def from_saved_model(*args, **kwargs):
        broken = Broken()
        broken.__dict__.update(vars(real(*args, **kwargs)))  # options are set on it
        return broken

    monkeypatch.setattr(tf.lite.TFLiteConverter, "from_saved_model", from_saved_model)
    with pytest.raises(JaxsegError, match=r"ops: tf\.Conv3DBackpropInputV2"):
        tflite.write_tflite_float16(saved, target)
    assert not target.exists() and not list(saved.parent.glob(".bad.tflite*"))
