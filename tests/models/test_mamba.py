"""Mamba models: the bidirectional block against its maths written out with the sequential
reference scan; shapes of every umamba / hcmamba variant and mixer; the ablation's params;
errors; a short training check."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxseg.errors import ConfigError
from jaxseg.models import build_model
from jaxseg.models.mamba import MambaBlock, _a_log_init
from jaxseg.ops import selective_scan_reference
from tests.models.training_checks import assert_trains_two_steps

# Tiny sizes: the properties do not depend on width, and compiling is these tests' cost.
TINY = dict(features=(8, 16, 16), state_size=4, chunk=8)
SHAPES = {2: (1, 12, 10, 1), 3: (1, 8, 4, 6, 1)}


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def _reference_block(p, x, dt_rank, state):
    """MambaBlock's maths in numpy (float64) around `selective_scan_reference`."""
    p = jax.tree.map(lambda a: np.asarray(a, np.float64), p)
    x = np.asarray(x, np.float64)
    b, c = x.shape[0], x.shape[-1]
    seq = x.reshape(b, -1, c)
    mu, var = seq.mean(-1, keepdims=True), seq.var(-1, keepdims=True)
    h = (seq - mu) / np.sqrt(var + 1e-5) * p["norm"]["scale"] + p["norm"]["bias"]
    xi, z = np.split(h @ p["in_proj"]["kernel"], 2, axis=-1)

    def direction(q, xs):
        k = q["conv_kernel"]  # [K, E]; tap K - 1 is the current token (causal)
        conv = np.zeros_like(xs) + q["conv_bias"]
        for t in range(xs.shape[1]):
            for j in range(k.shape[0]):
                if t - (k.shape[0] - 1) + j >= 0:
                    conv[:, t] += k[j] * xs[:, t - (k.shape[0] - 1) + j]
        xs = conv * _sigmoid(conv)
        dbc = xs @ q["x_proj"]["kernel"]
        dt, bb, cc = dbc[..., :dt_rank], dbc[..., dt_rank : dt_rank + state], dbc[..., -state:]
        delta = np.log1p(np.exp(dt @ q["dt_proj"]["kernel"] + q["dt_proj"]["bias"]))
        args = (xs, delta, -np.exp(q["A_log"]), bb, cc, q["D"])
        return np.asarray(selective_scan_reference(*(jnp.asarray(a, jnp.float32) for a in args)))

    y_fwd = direction(p["forward"], xi)
    y_bwd = direction(p["backward"], xi[:, ::-1])[:, ::-1]
    y = 0.5 * (y_fwd + y_bwd) * (z * _sigmoid(z))
    return x + (y @ p["out_proj"]["kernel"]).reshape(x.shape)


# One scan implementation suffices here (each is checked against the reference in
# tests/ops/test_selective_scan.py); "sequential" compiles fastest.
@pytest.mark.parametrize("impl", ["sequential"])
def test_bidirectional_block_is_forward_plus_reversed_scan(impl):
    x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 3, 5, 8)), jnp.float32)
    block = MambaBlock(state_size=4, chunk=4, scan_impl=impl)
    params = jax.jit(block.init)(jax.random.key(0), x)["params"]
    # Perturb every parameter so the zero / one initialisations cannot hide a wrong term.
    leaves, tree = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.key(1), len(leaves))
    params = tree.unflatten([a + 0.3 * jax.random.normal(k, a.shape) for a, k in zip(leaves, keys)])
    got = jax.jit(block.apply)({"params": params}, x)
    want = _reference_block(params, x, dt_rank=1, state=4)  # dt_rank = ceil(8 / 16)
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-4, atol=1e-4)
    # And the reversed direction matters: flipping the tokens is not a symmetry of the block.
    assert not np.allclose(np.asarray(got), _reference_block(params, x[:, ::-1], 1, 4)[:, ::-1])


def test_mamba_defaults_follow_the_paper():
    x = jnp.zeros((1, 4, 4, 40))
    shapes = jax.eval_shape(MambaBlock().init, jax.random.key(0), x)["params"]
    assert shapes["in_proj"]["kernel"].shape == (40, 160)  # expand 2: x and gate z of 80
    assert shapes["forward"]["A_log"].shape == (80, 16)  # N = 16
    assert shapes["forward"]["x_proj"]["kernel"].shape == (80, 3 + 32)  # dt_rank ceil(40/16)
    a_log = _a_log_init(None, (80, 16))  # S4D-real: A = -(1, ..., N) for every channel
    np.testing.assert_allclose(np.exp(a_log), np.tile(np.arange(1, 17), (80, 1)), rtol=1e-6)


CASES = [
    *(
        ("umamba", dict(variant=v, mixer=m), 2)
        for v, m in itertools.product(["bot", "enc"], ["mamba", "identity", "conv"])
    ),
    ("umamba", dict(variant="bot"), 3),
    ("umamba", dict(variant="enc", mixer="conv"), 3),
    ("hcmamba", {}, 2),
    ("hcmamba", {}, 3),
]


def _shapes(name, dims, **kw):
    model = build_model(name, dims=dims, in_channels=1, num_classes=3, **{**TINY, **kw})
    x = jax.ShapeDtypeStruct(SHAPES[dims], jnp.float32)
    params = jax.eval_shape(model.init, jax.random.key(0), x)
    return params["params"], jax.eval_shape(model.apply, params, x)


@pytest.mark.parametrize("name,kw,dims", CASES)
def test_output_shapes(name, kw, dims):
    params, out = _shapes(name, dims, **kw)
    assert out.shape == SHAPES[dims][:-1] + (3,) and out.dtype == jnp.float32


def test_mixer_ablation_parameters():
    mamba = {k for k in _shapes("umamba", 2, variant="enc")[0] if k.startswith("mamba")}
    assert mamba == {"mamba1", "mamba2"}  # enc skips the full-resolution level 0
    assert [k for k in _shapes("umamba", 2)[0] if k.startswith("mamba")] == ["mamba2"]
    identity = _shapes("umamba", 2, variant="enc", mixer="identity")[0]
    flat = jax.tree_util.tree_leaves_with_path(identity)
    assert not [p for p, _ in flat if any(s in jax.tree_util.keystr(p) for s in ("A_log", "mamba"))]
    conv = _shapes("umamba", 2, variant="enc", mixer="conv")[0]
    assert {k for k in conv if k.startswith("mixer_conv")} == {"mixer_conv1", "mixer_conv2"}
    # The identity ablation is the conv U-Net the mixers sit in: its params are a subset.
    assert set(identity) < set(_shapes("umamba", 2, variant="enc")[0])


@pytest.mark.parametrize(
    "name,kw,match",
    [
        ("umamba", dict(variant="top"), "variant"),
        ("umamba", dict(mixer="attention"), "mixer"),
        ("umamba", dict(state_size=0), "state_size"),
        ("umamba", dict(enc_first_level=3), "enc_first_level"),
        ("umamba", dict(scan_impl="cuda"), "scan_impl"),
        ("hcmamba", dict(features=(8, 15)), "even"),
        ("hcmamba", dict(hc_first_level=0), "hc_first_level"),
    ],
)
def test_bad_config_raises(name, kw, match):
    with pytest.raises(ConfigError, match=match):
        _shapes(name, 2, **kw)


@pytest.mark.slow  # ~15 s of compilation on 2 quiet cores (49 s contended)
def test_umamba_trains_two_steps():
    model = build_model(
        "umamba", dims=2, in_channels=1, num_classes=3, **{**TINY, "features": (8, 16)}
    )
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(2, 8, 8, 1)), jnp.float32)
    labels = jnp.asarray(rng.integers(0, 3, size=(2, 8, 8)), jnp.int32)
    params = jax.jit(model.init)(jax.random.key(0), x)["params"]
    assert_trains_two_steps(model, params, x, labels, 3)
