"""Model summary: parameter counts against hand formulas and MONAI's torch models, XLA flop
counts against the textbook convolution/matmul formulas, --model-arg parsing, and the CLI.

Runtime: ~10 s on 2 idle cores (each case compiles one small function).
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import pytest
from jax import lax

from jaxseg import cli
from jaxseg.errors import ConfigError
from jaxseg.models import build_model, registry
from jaxseg.models.__main__ import main as models_main
from jaxseg.models.summary import (
    compiled_flops,
    count_params,
    input_shape,
    parse_model_args,
    summarize_model,
)

DIMENSION_NUMBERS = {2: ("NHWC", "HWIO", "NHWC"), 3: ("NDHWC", "DHWIO", "NDHWC")}


# --------------------------------------------------------------------------- parameters


def unet_params(dims, in_channels, num_classes, features, norm):
    """Hand count for jaxseg's UNet: 3^d convs without bias followed by a norm with scale and
    bias per channel (or with a bias and no norm when norm="none"), 2^d transposed convs
    with bias, a 1x1 head with bias."""
    k = 3**dims

    def conv(cin, cout):
        return k * cin * cout + (cout if norm == "none" else 2 * cout)

    total, c = 0, in_channels
    for f in features:  # encoder: (strided) conv + conv per level
        total += conv(c, f) + conv(f, f)
        c = f
    for f in reversed(features[:-1]):  # decoder: up-conv, concat skip, two convs
        total += 2**dims * c * f + f
        total += conv(2 * f, f) + conv(f, f)
        c = f
    return total + c * num_classes + num_classes


@pytest.mark.parametrize(
    "dims,norm,features", [(2, "instance", (4, 8, 16)), (3, "none", (4, 8)), (2, "group", (8, 16))]
)
def test_unet_params_match_hand_formula(dims, norm, features):
    model_args = {"features": features, "norm": norm}
    result = summarize_model("unet", dims, 16, in_channels=2, num_classes=3, model_args=model_args)
    assert result["params"] == unet_params(dims, 2, 3, features, norm)
    assert result["input_shape"] == [1, *(16,) * dims, 2]


def test_count_params_agrees_with_a_real_init():
    model = build_model("unet", dims=2, in_channels=1, num_classes=4, features=(4, 8))
    count, abstract = count_params(model, (1, 24, 24, 1))
    key = jax.random.key(0, impl="unsafe_rbg")  # compiles much faster than threefry
    real = jax.jit(model.init)(key, jnp.zeros((1, 24, 24, 1)))["params"]
    assert count == sum(p.size for p in jax.tree_util.tree_leaves(real))
    assert jax.tree_util.tree_map(lambda a: (a.shape, a.dtype), abstract) == jax.tree_util.tree_map(
        lambda a: (a.shape, a.dtype), real
    )


@pytest.mark.parametrize("dims,feature_size,use_v2", [(2, 24, False), (3, 12, True)])
def test_count_params_of_swinunetr_equals_monai(dims, feature_size, use_v2):
    """A ported model against its reference: MONAI's torch SwinUNETR, counted by torch."""
    pytest.importorskip("torch")
    nets = pytest.importorskip("monai.networks.nets")
    ref = nets.SwinUNETR(
        in_channels=1, out_channels=3, feature_size=feature_size, spatial_dims=dims, use_v2=use_v2
    )
    model = build_model(
        "swinunetr",
        dims=dims,
        in_channels=1,
        num_classes=3,
        feature_size=feature_size,
        use_v2=use_v2,
    )
    count, _ = count_params(model, (1, *(32,) * dims, 1))
    assert count == sum(p.numel() for p in ref.parameters())


class _Inline(nn.Module):
    @nn.compact
    def __call__(self, x, *, train=False):  # the model contract's signature
        x = nn.Conv(5, (3, 3))(x)  # 3*3*2*5 + 5
        x = nn.LayerNorm()(x)  # 5 + 5
        return nn.Dense(7, use_bias=False)(x)  # 5*7


def test_count_params_of_an_inline_model():
    count, _ = count_params(_Inline(), (1, 8, 8, 2))
    assert count == 3 * 3 * 2 * 5 + 5 + 10 + 35


# --------------------------------------------------------------------------- XLA flops


def test_matmul_flops_are_two_per_multiply_add():
    a = jax.ShapeDtypeStruct((64, 48), jnp.float32)
    b = jax.ShapeDtypeStruct((48, 32), jnp.float32)
    assert compiled_flops(jnp.dot, a, b) == 2 * 64 * 48 * 32


@pytest.mark.parametrize("dims,size,cin,cout", [(2, 20, 3, 8), (3, 10, 2, 4)])
def test_valid_conv_flops_match_textbook_formula(dims, size, cin, cout):
    k = 3
    x = jax.ShapeDtypeStruct((1, *(size,) * dims, cin), jnp.float32)
    w = jax.ShapeDtypeStruct((*(k,) * dims, cin, cout), jnp.float32)
    f = lambda x, w: lax.conv_general_dilated(
        x, w, (1,) * dims, "VALID", dimension_numbers=DIMENSION_NUMBERS[dims]
    )
    assert compiled_flops(f, x, w) == 2 * k**dims * cin * cout * (size - k + 1) ** dims


@pytest.mark.parametrize("dims,size", [(2, 64), (3, 16)])
def test_same_conv_flops_skip_padding_taps(dims, size):
    """XLA counts only taps that land inside the image: per axis 3S-2 of the 3S taps."""
    cin, cout = 4, 8
    x = jax.ShapeDtypeStruct((1, *(size,) * dims, cin), jnp.float32)
    w = jax.ShapeDtypeStruct((*(3,) * dims, cin, cout), jnp.float32)
    f = lambda x, w: lax.conv_general_dilated(
        x, w, (1,) * dims, "SAME", dimension_numbers=DIMENSION_NUMBERS[dims]
    )
    flops = compiled_flops(f, x, w)
    assert flops == 2 * cin * cout * (3 * size - 2) ** dims
    textbook = 2 * 3**dims * cin * cout * size**dims
    assert flops == pytest.approx(textbook, rel=3 * 2 / (3 * size))  # within (2/3S) per axis


class _OneConv(nn.Module):
    dims: int
    in_channels: int
    num_classes: int

    @nn.compact
    def __call__(self, x, *, train=False):
        return nn.Conv(self.num_classes, (3,) * self.dims, padding="VALID", use_bias=False)(x)


class _Looped(nn.Module):
    dims: int
    in_channels: int
    num_classes: int

    @nn.compact
    def __call__(self, x, *, train=False):
        w = self.param("w", nn.initializers.ones, (self.in_channels, self.num_classes))
        return lax.fori_loop(0, 4, lambda i, y: y * 1.5, x @ w)


@pytest.fixture
def extra_models(monkeypatch):
    # Registered for this test only: other tests iterate over the registry.
    monkeypatch.setitem(registry._REGISTRY, "_one_conv", registry.model_factory(_OneConv))
    monkeypatch.setitem(registry._REGISTRY, "_looped", registry.model_factory(_Looped))


@pytest.mark.parametrize("dims", [2, 3])
def test_summary_of_a_single_conv_model(extra_models, dims):
    size, cin, cout = 12, 3, 5
    result = summarize_model("_one_conv", dims, size, in_channels=cin, num_classes=cout)
    assert result["params"] == 3**dims * cin * cout
    expected = 2 * 3**dims * cin * cout * (size - 2) ** dims
    assert result["gflops"] * 1e9 == pytest.approx(expected, rel=1e-9)
    assert result["has_loops"] is False


def test_summary_flags_loops(extra_models):
    assert summarize_model("_looped", 2, 8, in_channels=2, num_classes=3)["has_loops"] is True


def test_default_sizes():
    assert input_shape(2, None, 1) == (1, 128, 128, 1)
    assert input_shape(3, None, 4) == (1, 96, 96, 96, 4)
    assert input_shape(2, (40, 56), 1) == (1, 40, 56, 1)
    with pytest.raises(ConfigError, match="size"):
        input_shape(3, (40, 56), 1)


# --------------------------------------------------------------------------- --model-arg


def test_parse_model_args():
    parsed = parse_model_args(
        [
            "feature_size=48",
            "embed_dims=(32,64)",
            "norm=group",
            "depths=[2, 2]",
            "drop_path=0.1",
            "use_v2=True",
        ]
    )
    assert parsed == {
        "feature_size": 48,
        "embed_dims": (32, 64),
        "norm": "group",
        "depths": (2, 2),
        "drop_path": 0.1,
        "use_v2": True,
    }
    with pytest.raises(ConfigError, match="no '='"):
        parse_model_args(["feature_size"])
    with pytest.raises(ConfigError, match="twice"):
        parse_model_args(["a=1", "a=2"])
    with pytest.raises(ConfigError, match="not a valid argument name"):
        parse_model_args(["a-b=1"])


def test_unknown_model_argument_is_the_registry_error():
    with pytest.raises(ConfigError, match="unknown model argument.*feature_sise"):
        summarize_model("unet", 2, 16, model_args={"feature_sise": 48})


# --------------------------------------------------------------------------- CLI


def _run(argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.run(models_main, argv)
    out = capsys.readouterr()
    return exit_info.value.code, out.out, out.err


def test_cli_list(capsys):
    code, out, _ = _run(["--list"], capsys)
    assert code == 0 and "unet" in out.split()


def test_cli_summary(capsys):
    code, out, _ = _run(
        [
            "--summary",
            "unet",
            "--dims",
            "2",
            "--size",
            "16",
            "--num-classes",
            "3",
            "--model-arg",
            "features=(4,8,16)",
        ],
        capsys,
    )
    assert code == 0
    assert f"{unet_params(2, 1, 3, (4, 8, 16), 'instance'):,}" in out
    assert "GFLOPs" in out and "[1x16x16x1]" in out


@pytest.mark.parametrize(
    "argv,needle",
    [
        (["--summary", "unetz", "--dims", "2"], "registered models are"),
        (["--summary", "unet", "--dims", "2", "--model-arg", "featurez=(4,8)"], "featurez"),
        (["--summary", "unet", "--dims", "2", "--model-arg", "features"], "no '='"),
    ],
)
def test_cli_bad_input_exits_2(capsys, argv, needle):
    code, _, err = _run(argv, capsys)
    assert code == 2 and needle in err and "Traceback" not in err


def test_cli_summary_needs_dims(capsys):
    code, _, err = _run(["--summary", "unet"], capsys)
    assert code == 2 and "--dims" in err
