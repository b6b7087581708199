"""train.init_from: a run starts from another run's trained parameters (as orbax stored
them), and refuses one whose architecture differs, naming the parameter."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxseg.config import load_config
from jaxseg.errors import ConfigError
from jaxseg.models import build_model
from jaxseg.training import init_from
from jaxseg.training import setup as setup_lib
from jaxseg.training.checkpoint import Checkpoints
from jaxseg.training.loop import train
from jaxseg.training.setup import build_training, training_data
from jaxseg.training.state import TrainState
from jaxseg.workdir import RunInfo, load_trained, model_from_config
from tests.tiny_config import write_tiny_config


def test_init_from_starts_at_the_source_parameters_and_checks_the_architecture(
    phantom_2d, tmp_path
):
    source = tmp_path / "a"
    cfg = write_tiny_config(tmp_path / "a.py", phantom_2d, steps=2, features=(4, 8))
    train(load_config(cfg), source)
    trained = load_trained(source).params

    def start(features):
        path = tmp_path / f"b{len(features)}{features[0]}.py"
        settings = {"train.init_from": str(source)}
        write_tiny_config(path, phantom_2d, steps=2, features=features, settings=settings)
        config = load_config(path)
        spec, splits = training_data(config)
        return build_training(config, spec, splits).init_state(jax.random.key(9)).params

    got = start((4, 8))
    flat_got = jax.tree_util.tree_leaves_with_path(got)
    flat_src = dict(jax.tree_util.tree_leaves_with_path(trained))
    assert len(flat_got) == len(flat_src)
    for path, leaf in flat_got:
        np.testing.assert_array_equal(np.asarray(leaf), np.asarray(flat_src[path]))
    with pytest.raises(ConfigError, match="differ in shape from model unet.*kernel: "):
        start((8, 16))


def _write_source(workdir, params) -> str:
    """A workdir holding one checkpoint whose train state's params are `params`: what a
    training or a pretraining run (jaxseg.pretrain) leaves behind."""
    ckpts = Checkpoints(workdir)
    ckpts.save(TrainState(step=jnp.asarray(1, jnp.int32), params=params, opt_state={}))
    ckpts.close()
    return str(workdir)


def _like():
    """This run's freshly initialised parameters: an encoder, a decoder and a head."""
    return {
        "enc": {"kernel": jnp.full((3, 3, 1, 4), 0.5), "bias": jnp.zeros(4)},
        "dec": {"kernel": jnp.full((3, 3, 4, 4), 0.25)},
        "head": {"kernel": jnp.full((4, 2), 0.125), "bias": jnp.zeros(2)},
    }


def test_init_from_a_pretrained_encoder_loads_by_path_and_lists_the_rest(tmp_path, capsys):
    rng = np.random.default_rng(0)
    enc = {"kernel": rng.normal(size=(3, 3, 1, 4)), "bias": rng.normal(size=4)}
    source = _write_source(tmp_path / "pre", {"enc": enc, "mask_token": np.ones((1, 4))})
    like = _like()
    found = init_from.match(source, init_from.read_source(source, like), like, "tiny")
    assert set(found.missing) == {"dec/kernel", "head/kernel", "head/bias"}
    assert found.extra == ("mask_token",)
    got = init_from.place(found, like)
    np.testing.assert_array_equal(
        np.asarray(got["enc"]["kernel"]), enc["kernel"].astype(np.float32)
    )
    np.testing.assert_array_equal(np.asarray(got["enc"]["bias"]), enc["bias"].astype(np.float32))
    for path in (("dec", "kernel"), ("head", "kernel"), ("head", "bias")):  # fresh, kept
        np.testing.assert_array_equal(np.asarray(got[path[0]][path[1]]), like[path[0]][path[1]])
    text = found.describe()
    assert "2 parameter arrays loaded" in text and "3 initialised fresh" in text
    assert "dec/kernel" in text and "mask_token" in text


def test_init_from_refuses_other_shapes_and_another_architecture(tmp_path):
    bad = {
        "enc": {"kernel": np.ones((3, 3, 2, 4)), "bias": np.ones(4)},
        "head": {"bias": np.ones(3)},
    }
    source = _write_source(tmp_path / "bad", bad)
    like = _like()
    theirs = init_from.read_source(source, like)
    with pytest.raises(ConfigError) as e:
        init_from.match(source, theirs, like, "tiny")
    msg = str(e.value)  # every mismatch, with both shapes
    assert "2 parameter(s) differ" in msg
    assert "enc/kernel: (3, 3, 2, 4) in the source, (3, 3, 1, 4) in tiny" in msg
    assert "head/bias: (3,) in the source, (2,) in tiny" in msg
    other = _write_source(tmp_path / "other", {"stage0": {"qkv": {"kernel": np.ones((4, 12))}}})
    with pytest.raises(
        ConfigError, match=f"init_from={other} shares no parameter path with model tiny"
    ):
        init_from.match(other, init_from.read_source(other, like), like, "tiny")
    with pytest.raises(ConfigError, match="neither a workdir nor a MONAI checkpoint"):
        init_from.read_source(str(tmp_path / "nothing"), like)


def test_init_from_a_monai_file_maps_its_keys_onto_the_model(tmp_path):
    torch = pytest.importorskip("torch")
    model = build_model("swinunetr", dims=2, in_channels=1, num_classes=2, feature_size=12)
    x = jax.ShapeDtypeStruct((1, 32, 32, 1), jnp.float32)
    like = jax.eval_shape(model.init, jax.random.key(0), x)["params"]
    # An encoder-only SwinViT file (MONAI layout: Conv [out, in, kh, kw], Linear [out, in]).
    patch = torch.randn(12, 1, 2, 2)
    qkv = torch.randn(36, 12)
    path = tmp_path / "model_swinvit.pt"
    torch.save(
        {
            "patch_embed.proj.weight": patch,
            "layers1.0.blocks.0.attn.qkv.weight": qkv,
            "contrastive_head.weight": torch.randn(3, 3),
        },
        path,
    )
    found = init_from.match(str(path), init_from.read_source(str(path), like), like, "swinunetr")
    assert set(found.loaded) == {
        "swinViT/patch_embed/proj/kernel",
        "swinViT/layers1_0/blocks_0/attn/qkv/kernel",
    }
    np.testing.assert_array_equal(
        found.loaded["swinViT/patch_embed/proj/kernel"], patch.numpy().transpose(2, 3, 1, 0)
    )
    np.testing.assert_array_equal(
        found.loaded["swinViT/layers1_0/blocks_0/attn/qkv/kernel"], qkv.numpy().T
    )
    assert found.extra == ("(MONAI) contrastive_head.weight",)
    assert "swinViT/patch_embed/proj/bias" in found.missing


def test_lora_from_a_partial_source_trains_what_the_source_lacks(tmp_path):
    """finetune.train_fresh: with LoRA on a UNet's convolutions, the LoRA factors and the
    layers the source did not provide train; the loaded base weights are frozen."""
    config = load_config(write_tiny_config(tmp_path / "c.py", tmp_path, steps=1, features=(4, 8)))
    info = RunInfo(2, 1, 2, {0: "background", 1: "organ"}, ("MRI",), "")
    x = jax.ShapeDtypeStruct((1, 32, 32, 1), jnp.float32)
    plain = jax.eval_shape(model_from_config(config, info).init, jax.random.key(0), x)
    loaded = sorted(k for k in plain["params"] if k.startswith("ConvNormAct_"))[:2]
    encoder = {
        k: jax.tree_util.tree_map(lambda s: np.zeros(s.shape, s.dtype), plain["params"][k])
        for k in loaded
    }
    config.train.init_from = _write_source(tmp_path / "pre", encoder)
    config.finetune.method, config.finetune.lora_convs = "lora", True
    mask = setup_lib.trainable_params(model_from_config(config, info), config, info)
    seen = set()
    for path, trains in jax.tree_util.tree_leaves_with_path(mask):
        name = "/".join(k.key for k in path)
        lora = name.endswith(("/lora_a", "/lora_b"))
        seen.add(lora)
        assert trains == (lora or name.split("/")[0] not in loaded), name
    assert seen == {True, False}
