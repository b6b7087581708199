"""TransMed: the dynamic-convolution layer and axial blocks against numpy/lax references, and
every ablation variant building and training a step (`jaxseg.ops.dynamic_conv` itself:
tests/ops/test_conv.py).

Runtime: ~30 s on 2 shared cores without the slow tests (the per-variant training steps
and the overfit test, ~20-100 s each under load, are marked slow).
"""

import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax import lax

from jaxseg.errors import ConfigError
from jaxseg.models import build_model
from jaxseg.models.transmed import AxialBlock, DynamicConv, relative_offsets
from tests.models.training_checks import assert_trains_two_steps

TINY = dict(features=(8, 16, 16), head_dim=8, max_len=8, num_experts=3)


def _x(shape, seed=0):
    return jnp.asarray(np.random.default_rng(seed).normal(size=shape), jnp.float32)


def _ref_conv(x, w):
    """Per-sample reference: an ordinary lax convolution of one sample with its own kernel."""
    d = x.ndim - 1
    spatial = "DHW"[3 - d :]
    dn = lax.conv_dimension_numbers(
        (1, *x.shape), w.shape, (f"N{spatial}C", f"{spatial}IO", f"N{spatial}C")
    )
    return np.asarray(
        lax.conv_general_dilated(
            jnp.asarray(x[None]),
            jnp.asarray(w),
            (1,) * d,
            "SAME",
            dimension_numbers=dn,
            precision="highest",
        )
    )[0]


@pytest.mark.parametrize("dims,impl", itertools.product([2, 3], ["map", "grouped"]))
def test_dynamic_conv_layer_matches_per_sample_conv_with_numpy_mixed_kernel(dims, impl):
    shape = (3, 7, 6, 5)[: dims + 1] + (4,)
    x = _x(shape)
    layer = DynamicConv(5, 3, num_experts=3, use_bias=True, impl=impl)
    p = layer.init(jax.random.key(0), x)["params"]
    p = jax.tree.map(lambda a: a + 0.1, p)  # non-zero biases, non-uniform routing
    got = np.asarray(jax.jit(layer.apply)({"params": p}, x))
    # Routing recomputed in numpy, kernels mixed in numpy, then one lax conv per sample.
    xn = np.asarray(x, np.float64)
    pooled = xn.mean(axis=tuple(range(1, dims + 1)))
    h = np.asarray(
        jax.nn.gelu(jnp.asarray(pooled @ p["route1"]["kernel"] + p["route1"]["bias"])), np.float64
    )
    logits = h @ p["route2"]["kernel"] + p["route2"]["bias"]
    a = np.exp(logits - logits.max(-1, keepdims=True))
    a = a / a.sum(-1, keepdims=True)
    experts = np.asarray(p["experts"], np.float64)
    for b in range(shape[0]):
        w = np.tensordot(a[b], experts, axes=1).astype(np.float32)
        want = _ref_conv(np.asarray(x[b]), w) + a[b] @ np.asarray(p["bias"])
        np.testing.assert_allclose(got[b], want, rtol=1e-4, atol=1e-4)


def test_relative_offsets_clip():
    r = relative_offsets(5, 3)
    assert r.shape == (5, 5) and r[0, 0] == 2 and r[4, 0] == 4 and r[0, 4] == 0 and r[1, 0] == 3


@pytest.mark.parametrize("shape", [(1, 3, 5, 8), (1, 3, 4, 2, 8)])
def test_axial_block_matches_numpy(shape):
    """The axial block recomputed with full per-pair attention in numpy: along the axis being
    attended, every pair on a line, with the relative bias indexed by offset."""
    c, heads = shape[-1], 2
    x = _x(shape, seed=2)
    blk = AxialBlock(c, heads, mlp_ratio=1.0, max_len=3)  # max_len 3 < L=5: clipping exercised
    p = blk.init(jax.random.key(0), x)["params"]
    p = jax.tree.map(lambda a: a + 0.05 * np.random.default_rng(0).normal(size=a.shape), p)
    got = np.asarray(jax.jit(blk.apply)({"params": p}, x))

    def ln(t, q):
        mu = t.mean(-1, keepdims=True)
        return (t - mu) / np.sqrt(((t - mu) ** 2).mean(-1, keepdims=True) + 1e-5) * q["scale"] + q[
            "bias"
        ]

    y = np.asarray(x, np.float64)[0]
    s = y.shape[:-1]
    hd = c // heads
    for axis in range(1, len(shape) - 1):
        ap = p[f"attn_axis{axis}"]
        h = ln(y, p[f"norm_axis{axis}"])
        qkv = h @ ap["qkv"]["kernel"] + ap["qkv"]["bias"]
        table = np.asarray(ap["relative_position_bias_table"])
        out = np.zeros(s + (c,))
        for pos in itertools.product(*[range(n) for n in s]):
            for hh in range(heads):
                q = qkv[pos][hh * hd : (hh + 1) * hd] * hd**-0.5
                line = [
                    tuple(j if a == axis - 1 else pos[a] for a in range(len(s)))
                    for j in range(s[axis - 1])
                ]
                ks = np.stack([qkv[t][c + hh * hd : c + (hh + 1) * hd] for t in line])
                vs = np.stack([qkv[t][2 * c + hh * hd : 2 * c + (hh + 1) * hd] for t in line])
                i = pos[axis - 1]
                bias = np.array([table[np.clip(i - j, -2, 2) + 2, hh] for j in range(len(line))])
                lg = ks @ q + bias
                e = np.exp(lg - lg.max())
                out[pos][hh * hd : (hh + 1) * hd] = (e / e.sum()) @ vs
        y = y + out @ ap["proj"]["kernel"] + ap["proj"]["bias"]
    m = ln(y, p["norm_mlp"]) @ p["fc1"]["kernel"] + p["fc1"]["bias"]
    m = np.asarray(jax.nn.gelu(jnp.asarray(m)), np.float64)
    want = y + m @ p["fc2"]["kernel"] + p["fc2"]["bias"]
    np.testing.assert_allclose(got[0], want, rtol=1e-4, atol=1e-4)


def _param_names(params):
    return [jax.tree_util.keystr(k) for k, _ in jax.tree_util.tree_leaves_with_path(params)]


# Compiling a training step takes ~20-100 s on the shared 2 cores (measured under load): slow.
@pytest.mark.slow
@pytest.mark.parametrize(
    "variant,dims", [(v, d) for d in (2, 3) for v in ("unet", "axial", "dynamic", "full")]
)
def test_variant_builds_and_trains_one_step(variant, dims):
    shape = (2, 21, 18, 2) if dims == 2 else (2, 13, 10, 11, 2)  # odd sizes: padded to 4s, cropped
    model = build_model(
        "transmed", dims=dims, in_channels=2, num_classes=3, variant=variant, **TINY
    )
    x = _x(shape)
    labels = jnp.asarray(np.random.default_rng(1).integers(0, 3, size=shape[:-1]), jnp.int32)
    params = jax.jit(model.init)(jax.random.key(0), x)["params"]
    names = _param_names(params)
    assert any("axial" in n for n in names) == (variant in ("axial", "full"))
    assert any("dynconv" in n for n in names) == (variant in ("dynamic", "full"))

    assert_trains_two_steps(model, params, x, labels, 3, rngs=None)


@pytest.mark.slow  # ~50 s under load
def test_full_variant_overfits_one_batch():
    model = build_model("transmed", dims=2, in_channels=1, num_classes=2, variant="full", **TINY)
    yy, xx = np.mgrid[:24, :24]
    labels = np.stack(
        [((yy - 10) ** 2 + (xx - 12) ** 2 < 30), ((yy - 15) ** 2 + (xx - 8) ** 2 < 40)]
    ).astype(np.int32)
    x = jnp.asarray(
        labels[..., None] * 0.8 + 0.3 * np.random.default_rng(0).normal(size=labels.shape + (1,)),
        jnp.float32,
    )
    labels = jnp.asarray(labels)
    params = jax.jit(model.init)(jax.random.key(0), x)["params"]
    opt = optax.adam(3e-3)
    state = opt.init(params)

    @jax.jit
    def step(p, s):
        loss, g = jax.value_and_grad(
            lambda q: optax.softmax_cross_entropy_with_integer_labels(
                model.apply({"params": q}, x), labels
            ).mean()
        )(p)
        u, s = opt.update(g, s, p)
        return optax.apply_updates(p, u), s, loss

    losses = []
    for _ in range(25):
        params, state, loss = step(params, state)
        losses.append(float(loss))
    assert losses[-1] < 0.3 * losses[0], losses


def test_param_counts_follow_the_variants():
    x = jnp.zeros((1, 16, 16, 1))
    counts = {}
    for v in ("unet", "axial", "dynamic", "full"):
        m = build_model("transmed", dims=2, in_channels=1, num_classes=2, variant=v, **TINY)
        counts[v] = sum(
            math.prod(a.shape)
            for a in jax.tree.leaves(jax.eval_shape(m.init, jax.random.key(0), x))
        )
    # Axial blocks and dynamic convs add disjoint parameters: full = unet + both increments.
    assert counts["full"] - counts["unet"] == (counts["axial"] - counts["unet"]) + (
        counts["dynamic"] - counts["unet"]
    )
    assert counts["unet"] < counts["axial"] and counts["unet"] < counts["dynamic"]


@pytest.mark.parametrize(
    "kw,key",
    [
        (dict(variant="vit"), "variant"),
        (dict(axial_levels=(5,)), "axial_levels"),
        (dict(dynamic_levels=(-1,), variant="dynamic"), "dynamic_levels"),
        (dict(dynamic_impl="fft"), "dynamic_impl"),
    ],
)
def test_bad_config_raises(kw, key):
    m = build_model("transmed", dims=2, in_channels=1, num_classes=2, **{**TINY, **kw})
    with pytest.raises(ConfigError, match=key):
        jax.eval_shape(m.init, jax.random.key(0), jnp.zeros((1, 16, 16, 1)))
