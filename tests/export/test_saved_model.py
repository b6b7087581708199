"""SavedModel export: round trip through TensorFlow, metadata, atomic replacement, platforms."""

import json
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from jaxseg.errors import JaxsegError
from jaxseg.export import METADATA_FILENAME, export_saved_model, load_saved_model

tf = pytest.importorskip("tensorflow")


class TinyNet2D(nn.Module):
    """Conv -> token attention (einsum) -> dynamic_slice + pad -> 1x1 conv logits."""

    num_classes: int = 3

    @nn.compact
    def __call__(self, x):  # [B, X, Y, C] -> [B, X, Y, K]
        b, h, w = x.shape[0], x.shape[1], x.shape[2]
        x = nn.gelu(nn.Conv(8, (3, 3))(x))
        c = x.shape[-1]
        t = x.reshape(b, h * w, c)
        q, k = nn.Dense(c)(t), nn.Dense(c)(t)
        a = jax.nn.softmax(jnp.einsum("bnc,bmc->bnm", q, k) / np.sqrt(c), axis=-1)
        x = x + jnp.einsum("bnm,bmc->bnc", a, t).reshape(b, h, w, c)
        inner = lax.dynamic_slice(x, (0, 1, 1, 0), (b, h - 2, w - 2, c))
        x = x + jnp.pad(inner, ((0, 0), (1, 1), (1, 1), (0, 0)))
        return nn.Conv(self.num_classes, (1, 1))(x)


class TinyNet3D(nn.Module):
    num_classes: int = 2

    @nn.compact
    def __call__(self, x):  # [B, X, Y, Z, C] -> [B, X, Y, Z, K]
        x = nn.relu(nn.Conv(4, (3, 3, 3))(x))
        x = nn.relu(nn.Conv(4, (3, 3, 3), strides=2)(x))
        x = jax.image.resize(x, (x.shape[0], 8, 8, 8, 4), "nearest")
        return nn.Conv(self.num_classes, (1, 1, 1))(x)


def _make(model, shape, seed=0):
    rng = np.random.RandomState(seed)
    x = rng.randn(3, *shape).astype(np.float32)
    params = model.init(jax.random.PRNGKey(seed), x[:1])["params"]

    def apply_fn(p, img):
        return jax.nn.softmax(model.apply({"params": p}, img), axis=-1)

    return apply_fn, params, x


@pytest.fixture(scope="module")
def model2d():
    return _make(TinyNet2D(), (16, 16, 2))


@pytest.fixture(scope="module")
def export2d(model2d, tmp_path_factory):
    apply_fn, params, _ = model2d
    out = tmp_path_factory.mktemp("exp2d") / "model"
    meta = {"model": "tiny2d", "class_names": ["bg", "a", "b"], "mean": np.float32(0.5)}
    path = export_saved_model(
        apply_fn, params, out, patch_size=(16, 16), in_channels=2, metadata=meta
    )
    return path


def _serve(loaded, key, x):
    return loaded.signatures[key](image=tf.constant(x))["probabilities"].numpy()


def test_export_2d_round_trip(model2d, export2d):
    apply_fn, params, x = model2d
    assert export2d.is_dir() and (export2d / "saved_model.pb").is_file()
    loaded = tf.saved_model.load(str(export2d))
    assert set(loaded.signatures) == {"serving_default"}
    for b in (1, 3):
        got = _serve(loaded, "serving_default", x[:b])
        want = np.asarray(apply_fn(params, x[:b]))
        assert got.shape == (b, 16, 16, 3) and got.dtype == np.float32
        np.testing.assert_allclose(got, want, atol=1e-4)
    spec = loaded.signatures["serving_default"].structured_input_signature[1]["image"]
    assert spec.shape.as_list() == [None, 16, 16, 2] and spec.dtype == tf.float32
    # Parameters are variables (weights not baked in as constants), stored once.
    n_params = len(jax.tree_util.tree_leaves(params))
    ckpt = tf.train.load_checkpoint(str(export2d / "variables" / "variables"))
    assert sum(k.startswith("params/") for k in ckpt.get_variable_to_shape_map()) == n_params


def test_metadata_file(export2d):
    info = json.loads((export2d / METADATA_FILENAME).read_text())
    assert info["patch_size"] == [16, 16]
    assert info["in_channels"] == 2 and info["num_classes"] == 3 and info["dims"] == 2
    assert info["platforms"] == ["cpu"]
    assert info["signatures"] == {"serving_default": "cpu"}
    assert info["input"] == {"name": "image", "shape": [None, 16, 16, 2], "dtype": "float32"}
    assert info["output"]["shape"] == [None, 16, 16, 3]
    assert info["metadata"] == {"model": "tiny2d", "class_names": ["bg", "a", "b"], "mean": 0.5}
    loaded, info2 = load_saved_model(export2d)
    assert info2 == info and "serving_default" in loaded.signatures


def test_export_3d_round_trip(tmp_path):
    apply_fn, params, x = _make(TinyNet3D(), (8, 8, 8, 1), seed=1)
    path = export_saved_model(
        apply_fn, params, tmp_path / "m3d", patch_size=(8, 8, 8), in_channels=1, num_classes=2
    )
    loaded, info = load_saved_model(path)
    assert info["dims"] == 3 and info["num_classes"] == 2 and info["metadata"] == {}
    for b in (1, 3):
        got = _serve(loaded, "serving_default", x[:b])
        np.testing.assert_allclose(got, np.asarray(apply_fn(params, x[:b])), atol=1e-4)


def test_failed_export_keeps_previous_and_leaves_no_temp(model2d, tmp_path, monkeypatch):
    apply_fn, params, x = model2d
    out = tmp_path / "model"
    export_saved_model(apply_fn, params, out, patch_size=(16, 16), in_channels=2, metadata={"v": 1})
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}

    def boom(module, export_dir, *args, **kwargs):
        # Write part of an export first, as a real crash would.
        tf.io.gfile.makedirs(export_dir)
        (tf.io.gfile.GFile(export_dir + "/saved_model.pb", "w")).write("partial")
        raise RuntimeError("disk full")

    monkeypatch.setattr(tf.saved_model, "save", boom)
    params2 = jax.tree_util.tree_map(lambda a: a + 1.0, params)
    with pytest.raises(RuntimeError, match="disk full"):
        export_saved_model(
            apply_fn, params2, out, patch_size=(16, 16), in_channels=2, metadata={"v": 2}
        )
    monkeypatch.undo()

    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]
    after = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert after == before
    loaded, info = load_saved_model(out)
    assert info["metadata"] == {"v": 1}
    np.testing.assert_allclose(
        _serve(loaded, "serving_default", x[:1]), np.asarray(apply_fn(params, x[:1])), atol=1e-4
    )

    # A successful export replaces the old one completely and leaves nothing behind.
    export_saved_model(
        apply_fn, params2, out, patch_size=(16, 16), in_channels=2, metadata={"v": 2}
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]
    loaded, info = load_saved_model(out)
    assert info["metadata"] == {"v": 2}
    np.testing.assert_allclose(
        _serve(loaded, "serving_default", x[:1]), np.asarray(apply_fn(params2, x[:1])), atol=1e-4
    )


def test_multi_platform_signatures_share_variables(model2d, tmp_path):
    apply_fn, params, x = model2d
    path = export_saved_model(
        apply_fn,
        params,
        tmp_path / "m",
        patch_size=(16, 16),
        in_channels=2,
        platforms=("cpu", "tpu"),
    )
    loaded, info = load_saved_model(path)
    assert set(loaded.signatures) == {"serving_default", "serving_cpu", "serving_tpu"}
    assert info["signatures"] == {
        "serving_default": "cpu",
        "serving_cpu": "cpu",
        "serving_tpu": "tpu",
    }
    assert info["platforms"] == ["cpu", "tpu"]
    want = np.asarray(apply_fn(params, x))
    np.testing.assert_allclose(_serve(loaded, "serving_cpu", x), want, atol=1e-4)
    np.testing.assert_allclose(_serve(loaded, "serving_default", x), want, atol=1e-4)
    tpu_out = loaded.signatures["serving_tpu"].structured_outputs["probabilities"]
    assert tpu_out.shape.as_list() == [None, 16, 16, 3]
    # One set of weights for all signatures.
    ckpt = tf.train.load_checkpoint(str(path / "variables" / "variables"))
    n_params = len(jax.tree_util.tree_leaves(params))
    assert sum(k.startswith("params/") for k in ckpt.get_variable_to_shape_map()) == n_params


def test_per_platform_apply_fns(model2d, tmp_path):
    apply_fn, params, x = model2d

    def tpu_fn(p, img):  # stands in for a Pallas-kernel variant over the same params
        return apply_fn(p, img)

    path = export_saved_model(
        {"tpu": tpu_fn, "cpu": apply_fn},
        params,
        tmp_path / "m",
        patch_size=(16, 16),
        in_channels=2,
        platforms=("tpu", "cpu"),
    )
    loaded, info = load_saved_model(path)
    assert info["signatures"]["serving_default"] == "tpu"
    np.testing.assert_allclose(
        _serve(loaded, "serving_cpu", x[:2]), np.asarray(apply_fn(params, x[:2])), atol=1e-4
    )
    with pytest.raises(JaxsegError, match="one function per exported platform"):
        export_saved_model(
            {"cpu": apply_fn},
            params,
            tmp_path / "n",
            patch_size=(16, 16),
            in_channels=2,
            platforms=("cpu", "tpu"),
        )


def test_bad_inputs_raise_before_writing(model2d, tmp_path):
    apply_fn, params, _ = model2d
    kw = dict(patch_size=(16, 16), in_channels=2)
    with pytest.raises(JaxsegError, match="patch_size"):
        export_saved_model(apply_fn, params, tmp_path / "a", patch_size=(16,), in_channels=2)
    with pytest.raises(JaxsegError, match="num_classes=4"):
        export_saved_model(apply_fn, params, tmp_path / "a", num_classes=4, **kw)
    with pytest.raises(JaxsegError, match="platforms"):
        export_saved_model(apply_fn, params, tmp_path / "a", platforms=("gpu",), **kw)
    with pytest.raises(JaxsegError, match=r"metadata\['bad'\]"):
        export_saved_model(apply_fn, params, tmp_path / "a", metadata={"bad": object()}, **kw)
    with pytest.raises(JaxsegError, match="any batch size"):
        export_saved_model(lambda p, x: apply_fn(p, x)[:1], params, tmp_path / "a", **kw)
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "notes.txt").write_text("keep me")
    with pytest.raises(JaxsegError, match="not a SavedModel"):
        export_saved_model(apply_fn, params, precious, **kw)
    assert (precious / "notes.txt").read_text() == "keep me"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["precious"]
    with pytest.raises(JaxsegError, match="no saved_model.pb"):
        load_saved_model(precious)


def test_import_is_light():
    code = "import sys, jaxseg.export; print('tensorflow' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
