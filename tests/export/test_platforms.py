"""One SavedModel, one signature per platform: XLA for CPU, the Pallas kernels for TPU."""

import jax
import numpy as np

from jaxseg.export.from_workdir import platform_predict_fns
from jaxseg.export.saved_model import export_saved_model, load_saved_model
from jaxseg.inference import make_predict_fn
from jaxseg.models import build_model


def test_cpu_and_tpu_signatures_over_shared_variables(tmp_path):
    model = build_model(
        "lightseg_tiny",
        dims=2,
        in_channels=1,
        num_classes=3,
        embed_dims=(16, 32),
        depths=(2, 2),
        num_heads=(1, 2),
        stem_dims=(8, 8),
    )
    x = np.random.default_rng(0).normal(size=(2, 32, 32, 1)).astype(np.float32)
    params = model.init(jax.random.key(0), x[:1])["params"]
    fns = platform_predict_fns(model, ("cpu", "tpu"))
    # Exporting for TPU runs the Mosaic lowering of the window-attention kernel here.
    path = export_saved_model(
        fns,
        params,
        tmp_path / "sm",
        patch_size=(32, 32),
        in_channels=1,
        num_classes=3,
        platforms=("cpu", "tpu"),
    )
    loaded, info = load_saved_model(path)
    assert {"serving_default", "serving_cpu", "serving_tpu"} <= set(loaded.signatures)
    served = loaded.signatures["serving_cpu"](image=x)["probabilities"].numpy()
    expected = np.asarray(make_predict_fn(model.clone(attention_impl="xla"))(params, x))
    np.testing.assert_allclose(served, expected, atol=1e-4)
    # Both signatures read one set of variables, not a copy each.
    assert len(loaded.params) == len(jax.tree_util.tree_leaves(params))


def test_platform_choices_follow_the_model_fields():
    lightseg = build_model("lightseg_tiny", dims=2, in_channels=1, num_classes=2)
    unet = build_model("unet", dims=2, in_channels=1, num_classes=2)
    assert set(platform_predict_fns(lightseg, ("cpu", "tpu"))) == {"cpu", "tpu"}
    assert set(platform_predict_fns(unet, ("tpu",))) == {"tpu"}  # no attention: unchanged
