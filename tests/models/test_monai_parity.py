"""SwinUNETR / UNETR against MONAI 1.6.1 (the reference): parameter counts, weights loaded
with `jaxseg.models.convert.from_monai` giving MONAI's outputs (fp32, 1e-4), the legacy
checkpoint layouts, key-mismatch errors, and shapes MONAI cannot take.

Skipped when torch or monai is absent (`pip install -e ".[test]"` installs them).
Runtime on 2 shared cores (noisy): ~60-90 s without the slow tests; the slow ones
(3D SwinUNETR v1/v2 at 64^3, 2D v2, gradients) add ~3 min. Mostly XLA compile time.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
monai = pytest.importorskip("monai", minversion="1.6.1")
from monai.networks.nets import UNETR as TorchUNETR  # noqa: E402
from monai.networks.nets import SwinUNETR as TorchSwinUNETR  # noqa: E402

from jaxseg.errors import ConfigError  # noqa: E402
from jaxseg.models import build_model  # noqa: E402
from jaxseg.models.convert import from_monai, infer_monai_config, load_monai, param_count  # noqa: E402

TOL = 1e-4


def _torch_count(m) -> int:
    return sum(p.numel() for p in m.parameters())


def _torch_forward(m, x_cl: np.ndarray) -> np.ndarray:
    """MONAI forward on a channels-last numpy batch; returns channels-last logits."""
    with torch.no_grad():
        y = m.eval()(torch.from_numpy(np.ascontiguousarray(np.moveaxis(x_cl, -1, 1))))
    return np.moveaxis(y.numpy(), 1, -1)


def _jax_forward(model, params, x_cl: np.ndarray) -> np.ndarray:
    return np.asarray(jax.jit(model.apply)({"params": params}, jnp.asarray(x_cl)))


def _input(shape, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


# --------------------------------------------------------------------------- parameter counts


@pytest.mark.parametrize("dims", [2, 3])
@pytest.mark.parametrize("feature_size", [24, 48])
@pytest.mark.parametrize("use_v2", [False, True])
def test_swinunetr_param_count_equals_monai(dims, feature_size, use_v2):
    ref = TorchSwinUNETR(
        in_channels=1, out_channels=14, feature_size=feature_size, spatial_dims=dims, use_v2=use_v2
    )
    ours = build_model(
        "swinunetr",
        dims=dims,
        in_channels=1,
        num_classes=14,
        feature_size=feature_size,
        use_v2=use_v2,
    )
    assert param_count(ours) == _torch_count(ref)


def test_unetr_param_count_equals_monai():
    ref = TorchUNETR(in_channels=1, out_channels=14, img_size=96)  # MONAI's defaults (ViT-B/16)
    ours = build_model("unetr", dims=3, in_channels=1, num_classes=14, img_size=96)
    assert param_count(ours) == _torch_count(ref)


# --------------------------------------------------------------------------- output parity


def _swin_pair(dims, use_v2, downsample, feature_size=12, in_channels=2, num_classes=3, seed=0):
    torch.manual_seed(seed)
    ref = TorchSwinUNETR(
        in_channels=in_channels,
        out_channels=num_classes,
        feature_size=feature_size,
        spatial_dims=dims,
        use_v2=use_v2,
        downsample=downsample,
    )
    ours = build_model(
        "swinunetr",
        dims=dims,
        in_channels=in_channels,
        num_classes=num_classes,
        feature_size=feature_size,
        use_v2=use_v2,
        downsample=downsample,
    )
    return ref, ours


@pytest.fixture(scope="module")
def swin2d():
    """2D v1 at 64x128: the deepest stage (4x8) clamps the window on one axis only and
    shifts on the other; earlier stages pad 32->35, 16->21, 8->14 with unmasked padding."""
    ref, ours = _swin_pair(2, False, "merging")
    return ref, ours, from_monai(ref.state_dict(), ours)


def test_swinunetr_2d_matches_monai(swin2d):
    ref, ours, params = swin2d
    x = _input((2, 64, 128, 2))
    np.testing.assert_allclose(
        _jax_forward(ours, params, x), _torch_forward(ref, x), atol=TOL, rtol=0
    )


@pytest.mark.slow
def test_swinunetr_2d_v2_matches_monai():
    ref, ours = _swin_pair(2, True, "mergingv2", seed=1)
    x = _input((1, 96, 64, 2), seed=1)
    np.testing.assert_allclose(
        _jax_forward(ours, from_monai(ref.state_dict(), ours), x),
        _torch_forward(ref, x),
        atol=TOL,
        rtol=0,
    )


@pytest.mark.slow
@pytest.mark.parametrize("use_v2,downsample", [(False, "merging"), (True, "mergingv2")])
def test_swinunetr_3d_matches_monai(use_v2, downsample):
    # 64^3, feature_size 12: stages at 32, 16, 8 (padded to window multiples) and 4 (clamped).
    ref, ours = _swin_pair(3, use_v2, downsample, seed=2)
    x = _input((1, 64, 64, 64, 2), seed=2)
    np.testing.assert_allclose(
        _jax_forward(ours, from_monai(ref.state_dict(), ours), x),
        _torch_forward(ref, x),
        atol=TOL,
        rtol=0,
    )


@pytest.mark.slow
def test_swinunetr_odd_shape_equals_monai_on_padded_input(swin2d):
    """MONAI raises for 50x100 (not divisible by 32); ours pads to 64x128 and crops back,
    which must equal MONAI run on the zero-padded image, cropped."""
    ref, ours, params = swin2d
    x = _input((1, 50, 100, 2), seed=3)
    with pytest.raises(ValueError):
        _torch_forward(ref, x)
    xp = np.pad(x, [(0, 0), (0, 14), (0, 28), (0, 0)])
    expect = _torch_forward(ref, xp)[:, :50, :100]
    got = _jax_forward(ours, params, x)
    assert got.shape == (1, 50, 100, 3) and got.dtype == np.float32
    np.testing.assert_allclose(got, expect, atol=TOL, rtol=0)


def _unetr_kwargs(**kw):
    base = dict(
        img_size=32, feature_size=8, hidden_size=96, mlp_dim=192, num_heads=4, qkv_bias=True
    )
    base.update(kw)
    return base


def test_unetr_3d_matches_monai():
    torch.manual_seed(4)
    kw = _unetr_kwargs()
    ref = TorchUNETR(in_channels=2, out_channels=3, spatial_dims=3, **kw)
    ours = build_model("unetr", dims=3, in_channels=2, num_classes=3, **kw)
    x = _input((2, 32, 32, 32, 2), seed=4)
    np.testing.assert_allclose(
        _jax_forward(ours, from_monai(ref.state_dict(), ours), x),
        _torch_forward(ref, x),
        atol=TOL,
        rtol=0,
    )


def test_unetr_2d_perceptron_basic_blocks_inferred_and_matches_monai():
    """The other UNETR options (perceptron patches, conv_block=False, res_block=False), with
    the architecture inferred from the weights by load_monai."""
    torch.manual_seed(5)
    kw = _unetr_kwargs(proj_type="perceptron", conv_block=False, res_block=False, qkv_bias=False)
    ref = TorchUNETR(in_channels=1, out_channels=2, spatial_dims=2, **kw)
    ours, params = load_monai({"state_dict": ref.state_dict()}, num_heads=4)
    assert (ours.proj_type, ours.conv_block, ours.res_block, ours.img_size) == (
        "perceptron",
        False,
        False,
        32,
    )
    x = _input((2, 32, 32, 1), seed=5)
    np.testing.assert_allclose(
        _jax_forward(ours, params, x), _torch_forward(ref, x), atol=TOL, rtol=0
    )


def test_unetr_other_size_interpolates_position_embeddings_like_torch():
    """Input 40x56 with img_size 32: padded to 48x64 (patch grid 3x4, not 2x2), position
    embeddings resized bilinearly. Reference: a MONAI UNETR for img_size (48, 64) holding
    the same weights and torch's bilinear (align_corners=False) resize of the embeddings,
    run on the zero-padded input and cropped."""
    torch.manual_seed(6)
    kw = _unetr_kwargs()
    ref = TorchUNETR(in_channels=1, out_channels=2, spatial_dims=2, **kw)
    big = TorchUNETR(in_channels=1, out_channels=2, spatial_dims=2, **{**kw, "img_size": (48, 64)})
    sd = dict(ref.state_dict())
    pos = sd["vit.patch_embedding.position_embeddings"].reshape(1, 2, 2, -1).permute(0, 3, 1, 2)
    pos = torch.nn.functional.interpolate(pos, size=(3, 4), mode="bilinear", align_corners=False)
    sd["vit.patch_embedding.position_embeddings"] = pos.permute(0, 2, 3, 1).reshape(1, 12, -1)
    big.load_state_dict(sd)
    ours = build_model("unetr", dims=2, in_channels=1, num_classes=2, **kw)
    x = _input((1, 40, 56, 1), seed=6)
    expect = _torch_forward(big, np.pad(x, [(0, 0), (0, 8), (0, 8), (0, 0)]))[:, :40, :56]
    got = _jax_forward(ours, from_monai(ref.state_dict(), ours), x)
    np.testing.assert_allclose(got, expect, atol=TOL, rtol=0)


# --------------------------------------------------------------------------- layouts and errors


def _legacy(sd: dict) -> dict:
    """The research-contributions layout: {"state_dict": ...}, DataParallel's "module.",
    "swin_vit." for "swinViT." and timm's mlp.fc1/fc2 names."""
    out = {}
    for k, v in sd.items():
        k = (
            k.replace("swinViT.", "swin_vit.")
            .replace(".mlp.linear1.", ".mlp.fc1.")
            .replace(".mlp.linear2.", ".mlp.fc2.")
        )
        out["module." + k] = v
    return {"epoch": 10, "best_acc": 0.8, "state_dict": out}


def _same_tree(a, b):
    fa, fb = jax.tree_util.tree_flatten_with_path(a)[0], jax.tree_util.tree_flatten_with_path(b)[0]
    assert [p for p, _ in fa] == [p for p, _ in fb]
    for (p, x), (_, y) in zip(fa, fb):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y), err_msg=str(p))


def test_legacy_checkpoint_layout_loads_the_same_params(swin2d):
    ref, ours, params = swin2d
    legacy = _legacy(ref.state_dict())
    assert any(".mlp.fc1." in k and k.startswith("module.swin_vit.") for k in legacy["state_dict"])
    _same_tree(from_monai(legacy, ours), params)
    # numpy arrays instead of tensors, and architecture inference from the legacy layout
    name, kwargs = infer_monai_config({k: v.numpy() for k, v in legacy["state_dict"].items()})
    assert name == "swinunetr"
    assert {
        k: kwargs[k]
        for k in (
            "dims",
            "in_channels",
            "num_classes",
            "feature_size",
            "depths",
            "num_heads",
            "window_size",
            "use_v2",
            "patch_size",
        )
    } == dict(
        dims=2,
        in_channels=2,
        num_classes=3,
        feature_size=12,
        depths=(2, 2, 2, 2),
        num_heads=(3, 6, 12, 24),
        window_size=7,
        use_v2=False,
        patch_size=2,
    )


def test_encoder_only_checkpoint_needs_strict_false(swin2d):
    """A self-supervised SwinViT checkpoint (model_swinvit.pt style: module.patch_embed...,
    module.layers1.0..., mlp.fc1) fills the encoder; the rest comes from params=."""
    ref, ours, params = swin2d
    enc = {
        "module."
        + k[len("swinViT.") :]
        .replace(".mlp.linear1.", ".mlp.fc1.")
        .replace(".mlp.linear2.", ".mlp.fc2."): v
        for k, v in ref.state_dict().items()
        if k.startswith("swinViT.")
    }
    with pytest.raises(ConfigError, match=r"missing \(\d+\): decoder1"):
        from_monai({"state_dict": enc}, ours)
    zeros = jax.tree.map(jnp.zeros_like, params)
    loaded = from_monai({"state_dict": enc}, ours, params=zeros, strict=False)
    _same_tree(loaded["swinViT"], params["swinViT"])
    assert float(jnp.abs(loaded["decoder1"]["transp_conv"]["conv"]["kernel"]).max()) == 0.0


def test_mismatched_checkpoint_errors_name_the_keys(swin2d):
    ref, ours, _ = swin2d
    sd = dict(ref.state_dict())
    sd.pop("encoder1.layer.conv1.conv.weight")
    sd["decoder9.extra.weight"] = torch.zeros(3)
    with pytest.raises(ConfigError) as e:
        from_monai(sd, ours)
    msg = str(e.value)
    assert "encoder1.layer.conv1.conv.kernel" in msg and "decoder9.extra.weight" in msg
    # a model built with other settings: shape mismatches are named too
    other = build_model("swinunetr", dims=2, in_channels=2, num_classes=5, feature_size=12)
    with pytest.raises(ConfigError, match=r"out\.conv\.conv\.weight \(3, 12, 1, 1\)"):
        from_monai(ref.state_dict(), other)
    with pytest.raises(ConfigError, match="no tensors found"):
        from_monai({"epoch": 3}, ours)


def test_bad_constructor_arguments_are_config_errors():
    x = jnp.zeros((1, 32, 32, 1))
    for kwargs, match in [
        (dict(feature_size=20), "divisible by 12"),
        (dict(downsample="pool"), "downsample"),
        (dict(norm_name="batch"), "norm_name"),
        (dict(spatial_dims=3), "spatial_dims"),
    ]:
        m = build_model("swinunetr", dims=2, in_channels=1, num_classes=2, **kwargs)
        with pytest.raises(ConfigError, match=match):
            jax.eval_shape(m.init, jax.random.key(0), x)
    m = build_model("unetr", dims=2, in_channels=1, num_classes=2, img_size=40)
    with pytest.raises(ConfigError, match="img_size"):
        jax.eval_shape(m.init, jax.random.key(0), x)


# --------------------------------------------------------------------------- training paths


@pytest.mark.slow
@pytest.mark.parametrize("name", ["swinunetr", "unetr"])
def test_train_mode_with_dropouts_gives_gradients(name):
    """train=True with every dropout/drop-path on (and remat for SwinUNETR): finite loss and
    a non-zero gradient for every parameter except UNETR's unused norm_cross_attn (MONAI
    allocates it; see jaxseg/models/unetr.py)."""
    if name == "swinunetr":
        model = build_model(
            name,
            dims=2,
            in_channels=1,
            num_classes=3,
            feature_size=12,
            drop_rate=0.1,
            attn_drop_rate=0.1,
            dropout_path_rate=0.1,
            use_checkpoint=True,
            use_v2=True,
        )
    else:
        model = build_model(
            name, dims=2, in_channels=1, num_classes=3, **_unetr_kwargs(dropout_rate=0.1)
        )
    x = jnp.asarray(_input((2, 40, 48, 1)))
    labels = jnp.asarray(np.random.default_rng(0).integers(0, 3, (2, 40, 48)), jnp.int32)
    params = jax.jit(model.init)(jax.random.key(0), x)["params"]

    def loss(p):
        logits = model.apply({"params": p}, x, train=True, rngs={"dropout": jax.random.key(1)})
        return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), labels[..., None], -1))

    value, grads = jax.jit(jax.value_and_grad(loss))(params)
    assert np.isfinite(float(value))
    zero = [
        jax.tree_util.keystr(p)
        for p, g in jax.tree_util.tree_flatten_with_path(grads)[0]
        if not float(jnp.abs(g).max()) > 0 and "norm_cross_attn" not in jax.tree_util.keystr(p)
    ]
    assert not zero, zero
