"""LightSeg's switchable mechanisms, each against an independent reference.

Runtime: ~60 s on 2 shared cores without the slow tests (the all-switches training steps).
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxseg.errors import ConfigError
from jaxseg.models import build_model
from jaxseg.models.lightseg import (
    LightBlock,
    LightSeg,
    LowRankDense,
    WindowExchange,
    low_rank_params,
    window_pool_weights,
)
from tests.models.training_checks import assert_trains_two_steps

# A small 2-stage model: stride 8, stage maps 40x56/4 = 10x14 -> windows 4 (padded to 12x16,
# shifted), then 5x7 -> window 4 (padded 8x8, shifted): masks and padding are exercised.
SMALL = dict(embed_dims=(16, 32), depths=(2, 2), num_heads=(2, 4), window_sizes=(4, 4), stem_dims=(8, 8),
             mlp_ratio=2.0)


def _count(tree):
    return sum(math.prod(x.shape) for x in jax.tree.leaves(tree))


def _init(model, x):
    return jax.jit(model.init)(jax.random.key(0), x)["params"]


def _shapes(model, x):
    """Param shapes without compiling anything (for the tests that only count)."""
    return jax.eval_shape(model.init, jax.random.key(0), x)["params"]


def _x(shape, seed=0):
    return jnp.asarray(np.random.default_rng(seed).normal(size=shape), jnp.float32)


# --------------------------------------------------------------------------- low rank


def test_low_rank_dense_matches_numpy_and_formula():
    x = _x((3, 5, 12))
    for rank, names in [(None, {"kernel", "bias"}), (4, {"kernel_down", "kernel_up", "bias"}),
                        (12, {"kernel", "bias"})]:  # rank >= min(d_in, d_out): a full matrix
        layer = LowRankDense(20, rank)
        p = layer.init(jax.random.key(1), x)["params"]
        assert set(p) == names
        assert _count(p) == low_rank_params(12, 20, rank)
        want = np.asarray(x) @ (np.asarray(p["kernel"]) if "kernel" in p
                                else np.asarray(p["kernel_down"]) @ np.asarray(p["kernel_up"])) + np.asarray(p["bias"])
        np.testing.assert_allclose(np.asarray(layer.apply({"params": p}, x)), want, rtol=1e-5, atol=1e-5)


def test_low_rank_model_param_count_by_formula():
    x = _x((1, 32, 32, 1))
    full = _shapes(LightSeg(2, 1, 3, **SMALL), x)
    low = _shapes(LightSeg(2, 1, 3, **SMALL, rank=4), x)
    # Every block has qkv, proj, fc1, fc2 and every exchange qkv, proj: count the saving by formula.
    saving = 0
    for c, depth in zip(SMALL["embed_dims"], SMALL["depths"]):
        h = int(c * SMALL["mlp_ratio"])
        per = [(c, 3 * c), (c, c), (c, h), (h, c)]
        saving += depth * sum(low_rank_params(i, o, None) - low_rank_params(i, o, 4) for i, o in per)
        saving += sum(low_rank_params(i, o, None) - low_rank_params(i, o, 4) for i, o in [(c, 3 * c), (c, c)])
    assert _count(full) - _count(low) == saving
    assert set(low["stage1_block0"]["fc1"]) == {"kernel_down", "kernel_up", "bias"}
    assert low["stage1_block0"]["fc1"]["kernel_down"].shape == (32, 4)


# --------------------------------------------------------------------------- parameter sharing


def test_share_params_is_one_block_called_repeatedly():
    x = _x((2, 40, 56, 1))
    shared_model = LightSeg(2, 1, 3, **SMALL, share_params=True)
    plain_model = LightSeg(2, 1, 3, **SMALL)
    shared = _init(shared_model, x)
    plain = _init(plain_model, x)
    assert "stage0_block" in shared and "stage0_block0" not in shared and "stage0_block1" not in shared
    block = _count(plain["stage0_block0"])
    assert _count(plain) - _count(shared) == sum(
        _count(plain[f"stage{i}_block0"]) * (d - 1) for i, d in enumerate(SMALL["depths"]))
    assert _count(shared["stage0_block"]) == block
    # Independent check: the unshared model (separate instances, shift alternation as usual)
    # with every block of a stage given the shared weights computes the same function.
    tied = dict(shared)
    for i, d in enumerate(SMALL["depths"]):
        blk = tied.pop(f"stage{i}_block")
        for j in range(d):
            tied[f"stage{i}_block{j}"] = blk
    assert jax.tree.structure(tied) == jax.tree.structure(plain)
    a = jax.jit(shared_model.apply)({"params": shared}, x)
    b = jax.jit(plain_model.apply)({"params": tied}, x)
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-5)


# --------------------------------------------------------------------------- top-k sparse attention


def test_topk_at_window_size_is_dense_and_smaller_topk_changes_output():
    x = _x((1, 40, 56, 1))
    dense_model = LightSeg(2, 1, 3, **SMALL)
    params = _init(dense_model, x)
    dense = jax.jit(dense_model.apply)({"params": params}, x)
    full_k = jax.jit(LightSeg(2, 1, 3, **SMALL, topk=16).apply)({"params": params}, x)  # 4x4 windows
    np.testing.assert_allclose(np.asarray(full_k), np.asarray(dense), rtol=1e-5, atol=1e-5)
    sparse = jax.jit(LightSeg(2, 1, 3, **SMALL, topk=3).apply)({"params": params}, x)
    assert np.abs(np.asarray(sparse) - np.asarray(dense)).max() > 1e-4


def test_light_block_topk_matches_numpy_masked_attention():
    """One block with window = the whole 4x4 map (no padding, no shift): the attention part
    recomputed in numpy with an explicit per-query top-k selection."""
    c, heads, k = 8, 2, 5
    x = _x((1, 4, 4, c), seed=3)
    blk = LightBlock(c, heads, (4, 4), mlp_ratio=1.0, topk=k)
    p = blk.init(jax.random.key(2), x, None, (0, 0))["params"]
    got = np.asarray(blk.apply({"params": p}, x, None, (0, 0)))

    def ln(t, s, b):
        mu = t.mean(-1, keepdims=True)
        var = ((t - mu) ** 2).mean(-1, keepdims=True)
        return (t - mu) / np.sqrt(var + 1e-5) * s + b

    t = np.asarray(x, np.float64).reshape(16, c)
    h = ln(t, p["norm1"]["scale"], p["norm1"]["bias"])
    qkv = h @ p["qkv"]["kernel"] + p["qkv"]["bias"]
    q, kk, v = (qkv[:, i * c:(i + 1) * c].reshape(16, heads, c // heads) for i in range(3))
    coords = np.stack(np.meshgrid(np.arange(4), np.arange(4), indexing="ij"), -1).reshape(16, 2)
    rel = coords[:, None] - coords[None]
    idx = (rel[..., 0] + 3) * 7 + rel[..., 1] + 3
    table = np.asarray(p["relative_position_bias_table"])
    out = np.zeros((16, heads, c // heads))
    for hh in range(heads):
        logits = (q[:, hh] * (c // heads) ** -0.5) @ kk[:, hh].T + table[idx, hh]
        for r in range(16):
            keep = np.argsort(-logits[r])[:k]
            row = np.full(16, -np.inf)
            row[keep] = logits[r, keep]
            e = np.exp(row - row.max())
            out[r, hh] = e / e.sum() @ v[:, hh]
    o = out.reshape(16, c) @ p["proj"]["kernel"] + p["proj"]["bias"]
    y = t + o
    m = ln(y, p["norm2"]["scale"], p["norm2"]["bias"])
    m = m @ p["fc1"]["kernel"] + p["fc1"]["bias"]
    m = np.asarray(jax.nn.gelu(jnp.asarray(m)), np.float64)
    want = y + m @ p["fc2"]["kernel"] + p["fc2"]["bias"]
    np.testing.assert_allclose(got.reshape(16, c), want, rtol=2e-4, atol=2e-4)


# --------------------------------------------------------------------------- cross-window exchange


def test_window_exchange_matches_hand_computation():
    """A 4x6 map padded from 3x5 with 2x2 windows (6 windows, some partly padding), 2 global
    tokens, 2 heads: pooled means over valid tokens only, attention over G + nW tokens,
    and each window's result added to all of its tokens."""
    c, heads, g = 4, 2, 2
    rng = np.random.default_rng(5)
    x = rng.normal(size=(2, 4, 6, c)).astype(np.float32)
    weights = window_pool_weights((4, 6), (3, 5), (2, 2))
    mod = WindowExchange(c, heads, (2, 2), global_tokens=g)
    p = mod.init(jax.random.key(0), jnp.asarray(x), weights)["params"]
    got = np.asarray(mod.apply({"params": p}, jnp.asarray(x), weights))

    want = np.array(x, np.float64)
    for b in range(2):
        t = x[b].astype(np.float64)
        mu = t.mean(-1, keepdims=True)
        h = (t - mu) / np.sqrt(((t - mu) ** 2).mean(-1, keepdims=True) + 1e-5) * p["norm"]["scale"] + p["norm"]["bias"]
        pooled = []
        for wi in range(2):
            for wj in range(3):
                rows = [r for r in (2 * wi, 2 * wi + 1) if r < 3]
                cols = [cc for cc in (2 * wj, 2 * wj + 1) if cc < 5]
                pooled.append(h[np.ix_(rows, cols)].reshape(-1, c).mean(0))
        tok = np.concatenate([np.asarray(p["global_tokens"]), np.stack(pooled)], 0)  # [g + 6, c]
        qkv = tok @ p["qkv"]["kernel"] + p["qkv"]["bias"]
        out = np.zeros((g + 6, c))
        hd = c // heads
        for hh in range(heads):
            q = qkv[:, hh * hd:(hh + 1) * hd] * hd**-0.5
            k = qkv[:, c + hh * hd:c + (hh + 1) * hd]
            v = qkv[:, 2 * c + hh * hd:2 * c + (hh + 1) * hd]
            lg = q @ k.T
            e = np.exp(lg - lg.max(-1, keepdims=True))
            out[:, hh * hd:(hh + 1) * hd] = (e / e.sum(-1, keepdims=True)) @ v
        res = out[g:] @ p["proj"]["kernel"] + p["proj"]["bias"]
        for n, (wi, wj) in enumerate([(a, bb) for a in range(2) for bb in range(3)]):
            want[b, 2 * wi:2 * wi + 2, 2 * wj:2 * wj + 2] += res[n]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_cross_window_layers_switch():
    x = _x((1, 32, 32, 1))
    default = _shapes(LightSeg(2, 1, 3, **SMALL), x)
    assert {k for k in default if "exchange" in k} == {"stage0_exchange1", "stage1_exchange1"}
    assert "global_tokens" in default["stage0_exchange1"]
    off = _shapes(LightSeg(2, 1, 3, **SMALL, cross_window_layers=()), x)
    assert not [k for k in off if "exchange" in k]
    chosen = _shapes(LightSeg(2, 1, 3, **SMALL, cross_window_layers=(0, 2), global_tokens=0), x)
    assert {k for k in chosen if "exchange" in k} == {"stage0_exchange0", "stage1_exchange0"}
    assert "global_tokens" not in chosen["stage0_exchange0"]
    with pytest.raises(ConfigError, match="cross_window_layers"):
        jax.eval_shape(LightSeg(2, 1, 3, **SMALL, cross_window_layers=(4,)).init, jax.random.key(0), x)


def test_shift_windows_switch_keeps_params_and_changes_output():
    x = _x((1, 40, 56, 1))
    on, off = LightSeg(2, 1, 3, **SMALL), LightSeg(2, 1, 3, **SMALL, shift_windows=False)
    params = _init(on, x)
    assert jax.tree.structure(params) == jax.tree.structure(_init(off, x))
    a, b = jax.jit(on.apply)({"params": params}, x), jax.jit(off.apply)({"params": params}, x)
    assert np.abs(np.asarray(a) - np.asarray(b)).max() > 1e-4


@pytest.mark.parametrize("kw", [dict(topk=0), dict(rank=0), dict(global_tokens=-1),
                                dict(decoder_refine_kernel=(3, 3))])
def test_bad_switch_values_raise(kw):
    with pytest.raises(ConfigError, match=next(iter(kw))):
        jax.eval_shape(LightSeg(2, 1, 3, **SMALL, **kw).init, jax.random.key(0), _x((1, 32, 32, 1)))


# --------------------------------------------------------------------------- everything on, odd shapes


@pytest.mark.slow  # 35-55 s each on the shared 2 cores
@pytest.mark.parametrize("dims,shape", [(2, (2, 37, 53, 2)), (3, (1, 19, 13, 22, 2))])
def test_all_switches_odd_shape_gradients_and_training(dims, shape):
    kw = dict(SMALL, window_sizes=(4, 2) if dims == 2 else (2, 2))
    model = LightSeg(dims, 2, 3, **kw, topk=5 if dims == 2 else 3, share_params=True, rank=6,
                     cross_window_layers=(0, 3), global_tokens=2, drop_path=0.1)
    x = _x(shape)
    labels = jnp.asarray(np.random.default_rng(1).integers(0, 3, size=shape[:-1]), jnp.int32)
    params = _init(model, x)

    assert_trains_two_steps(model, params, x, labels, 3, rngs={"dropout": jax.random.key(3)})


# --------------------------------------------------------------------------- sizes

# MONAI SwinUNETR, feature_size=48, in_channels=1, out_channels=14 (v1): 62,187,296 params in 3D
# (the BTCV model); in 2D (out_channels=4) 25,138,078, counted with jaxseg's MONAI-equivalent
# swinunetr (MONAI itself is not installed here).
SWINUNETR48_PARAMS = {2: 25_138_078, 3: 62_187_296}


@pytest.mark.parametrize("dims", [2, 3])
def test_size_ladder_and_small_is_a_quarter_of_swinunetr(dims):
    x = jnp.zeros((1,) + (64,) * dims + (1,))
    counts = {}
    for size in ("tiny", "small", "base"):
        m = build_model(f"lightseg_{size}", dims=dims, in_channels=1, num_classes=14)
        counts[size] = _count(jax.eval_shape(m.init, jax.random.key(0), x)["params"])
    assert counts["tiny"] < counts["small"] < counts["base"]
    assert counts["small"] <= 0.25 * SWINUNETR48_PARAMS[dims], counts


def test_decoder_refine_default_skips_full_resolution_only_in_3d():
    assert LightSeg(2, 1, 3, **SMALL).refine_kernels() == (3, 3, 3)
    assert LightSeg(3, 1, 3, **SMALL).refine_kernels() == (0, 3, 3)
    assert LightSeg(3, 1, 3, **SMALL, decoder_refine_kernel=3).refine_kernels() == (3, 3, 3)
    p = jax.eval_shape(LightSeg(3, 1, 3, **SMALL).init, jax.random.key(0), jnp.zeros((1, 16, 16, 16, 1)))["params"]
    assert "refine" not in p["fuse0"] and "refine" in p["fuse1"]
