"""LightSeg's switchable mechanisms, each against an independent reference.

Runtime: ~60 s on 2 quiet cores without the slow tests (the all-switches training steps),
~4 min on the heavily loaded shared machine; each halo / routing test takes 1-12 s there.
"""

import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxseg.errors import ConfigError
from jaxseg.models import build_model
from jaxseg.models.layers import halo_partition_heads, window_key_mask
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
SMALL = dict(
    embed_dims=(16, 32),
    depths=(2, 2),
    num_heads=(2, 4),
    window_sizes=(4, 4),
    stem_dims=(8, 8),
    mlp_ratio=2.0,
)


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
    for rank, names in [
        (None, {"kernel", "bias"}),
        (4, {"kernel_down", "kernel_up", "bias"}),
        (12, {"kernel", "bias"}),
    ]:  # rank >= min(d_in, d_out): a full matrix
        layer = LowRankDense(20, rank)
        p = layer.init(jax.random.key(1), x)["params"]
        assert set(p) == names
        assert _count(p) == low_rank_params(12, 20, rank)
        want = np.asarray(x) @ (
            np.asarray(p["kernel"])
            if "kernel" in p
            else np.asarray(p["kernel_down"]) @ np.asarray(p["kernel_up"])
        ) + np.asarray(p["bias"])
        np.testing.assert_allclose(
            np.asarray(layer.apply({"params": p}, x)), want, rtol=1e-5, atol=1e-5
        )


def test_low_rank_model_param_count_by_formula():
    x = _x((1, 32, 32, 1))
    full = _shapes(LightSeg(2, 1, 3, **SMALL), x)
    low = _shapes(LightSeg(2, 1, 3, **SMALL, rank=4), x)
    # Every block has qkv, proj, fc1, fc2 and every exchange qkv, proj: count the saving by formula.
    saving = 0
    for c, depth in zip(SMALL["embed_dims"], SMALL["depths"]):
        h = int(c * SMALL["mlp_ratio"])
        per = [(c, 3 * c), (c, c), (c, h), (h, c)]
        saving += depth * sum(
            low_rank_params(i, o, None) - low_rank_params(i, o, 4) for i, o in per
        )
        saving += sum(
            low_rank_params(i, o, None) - low_rank_params(i, o, 4) for i, o in [(c, 3 * c), (c, c)]
        )
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
    assert (
        "stage0_block" in shared and "stage0_block0" not in shared and "stage0_block1" not in shared
    )
    block = _count(plain["stage0_block0"])
    assert _count(plain) - _count(shared) == sum(
        _count(plain[f"stage{i}_block0"]) * (d - 1) for i, d in enumerate(SMALL["depths"])
    )
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
    full_k = jax.jit(LightSeg(2, 1, 3, **SMALL, topk=16).apply)(
        {"params": params}, x
    )  # 4x4 windows
    np.testing.assert_allclose(np.asarray(full_k), np.asarray(dense), rtol=1e-5, atol=1e-5)
    sparse = jax.jit(LightSeg(2, 1, 3, **SMALL, topk=3).apply)({"params": params}, x)
    assert np.abs(np.asarray(sparse) - np.asarray(dense)).max() > 1e-4


def _ln(t, p):
    mu = t.mean(-1, keepdims=True)
    return (t - mu) / np.sqrt(((t - mu) ** 2).mean(-1, keepdims=True) + 1e-5) * p["scale"] + p[
        "bias"
    ]


def _numpy_block(params, x, heads, attend):
    """LightBlock (no shift, full rank) in float64 numpy on x `[1, *S, C]`. The attention is
    `attend(q, k, v, table)`: q (scaled), k, v maps `[*S, H, hd]` and the bias table ->
    `[*S, H, hd]`."""
    p = jax.tree.map(lambda a: np.asarray(a, np.float64), params)
    x = np.asarray(x, np.float64)[0]
    s, c = x.shape[:-1], x.shape[-1]
    hd = c // heads
    qkv = _ln(x, p["norm1"]) @ p["qkv"]["kernel"] + p["qkv"]["bias"]
    q, k, v = (qkv[..., i * c : (i + 1) * c].reshape(*s, heads, hd) for i in range(3))
    o = attend(q * hd**-0.5, k, v, p["relative_position_bias_table"]).reshape(*s, c)
    y = x + o @ p["proj"]["kernel"] + p["proj"]["bias"]
    m = _ln(y, p["norm2"]) @ p["fc1"]["kernel"] + p["fc1"]["bias"]
    m = np.asarray(jax.nn.gelu(jnp.asarray(m)), np.float64)
    return (y + m @ p["fc2"]["kernel"] + p["fc2"]["bias"])[None]


def _softmax_rows(logits, v):
    """`[Q, K]` logits (-inf: dropped key) and v `[K, hd]` -> `[Q, hd]`."""
    e = np.exp(logits - logits.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True) @ v


def _bias_index(query_pos, key_pos, extent):
    """Table row of each (query, key) pair: offsets in [-(t-1), t-1] per axis, t = extent."""
    rel = query_pos[:, None, :] - key_pos[None, :, :] + np.asarray(extent) - 1
    return np.ravel_multi_index(tuple(np.moveaxis(rel, -1, 0)), tuple(2 * np.asarray(extent) - 1))


def _positions(lo, hi):
    """All integer positions of the box [lo, hi) in row-major order, `[P, d]`."""
    return np.stack(
        np.meshgrid(*[np.arange(a, b) for a, b in zip(lo, hi)], indexing="ij"), -1
    ).reshape(-1, len(lo))


def test_light_block_topk_matches_numpy_masked_attention():
    """One block with window = the whole 4x4 map (no padding, no shift): the attention part
    recomputed in numpy with an explicit per-query top-k selection."""
    c, heads, k = 8, 2, 5
    x = _x((1, 4, 4, c), seed=3)
    blk = LightBlock(c, heads, (4, 4), mlp_ratio=1.0, topk=k)
    p = blk.init(jax.random.key(2), x, None, (0, 0))["params"]
    got = np.asarray(blk.apply({"params": p}, x, None, (0, 0)))

    def attend(q, kk, v, table):
        pos = _positions((0, 0), (4, 4))
        q, kk, v = (a.reshape(16, heads, -1) for a in (q, kk, v))
        out = np.zeros_like(q)
        for hh in range(heads):
            logits = q[:, hh] @ kk[:, hh].T + table[_bias_index(pos, pos, (4, 4)), hh]
            for r in range(16):
                row = np.full(16, -np.inf)
                keep = np.argsort(-logits[r])[:k]
                row[keep] = logits[r, keep]
                out[r, hh] = _softmax_rows(row[None], v[:, hh])[0]
        return out

    np.testing.assert_allclose(got, _numpy_block(p, x, heads, attend), rtol=2e-4, atol=2e-4)


# --------------------------------------------------------------------------- halo keys


def _halo_attend(valid, window, halo):
    """Brute-force halo attention on maps `[*S, H, hd]` (S a multiple of window): for each
    query window, slice the key block [g w - h, g w + w + h) out of the zero-padded map, mask
    the keys outside the valid map `valid`, add the bias for the query-key offsets."""
    window, halo = np.asarray(window), np.asarray(halo)

    def attend(q, k, v, table):
        s, heads = q.shape[:-2], q.shape[-2]
        pad = [(h, h) for h in halo] + [(0, 0), (0, 0)]
        kp, vp = np.pad(k, pad), np.pad(v, pad)
        inside = np.pad(
            (_positions((0,) * len(s), s) < np.asarray(valid)).all(-1).reshape(s),
            [(h, h) for h in halo],
        )
        out = np.zeros_like(q)
        for g in itertools.product(*[range(n // w) for n, w in zip(s, window)]):
            lo = np.asarray(g) * window
            q_sl = tuple(slice(a, a + w) for a, w in zip(lo, window))
            k_sl = tuple(
                slice(a, a + w + 2 * h) for a, w, h in zip(lo, window, halo)
            )  # padded coords
            qw = q[q_sl].reshape(-1, heads, q.shape[-1])
            kw, vw = (a[k_sl].reshape(-1, heads, q.shape[-1]) for a in (kp, vp))
            key_ok = inside[k_sl].reshape(-1)
            index = _bias_index(
                _positions(lo, lo + window),
                _positions(lo - halo, lo + window + halo),
                window + halo,
            )
            o = np.zeros_like(qw)
            for hh in range(heads):
                logits = qw[:, hh] @ kw[:, hh].T + table[index, hh]
                o[:, hh] = _softmax_rows(np.where(key_ok[None], logits, -np.inf), vw[:, hh])
            out[q_sl] = o.reshape(out[q_sl].shape)
        return out

    return attend


@pytest.mark.parametrize(
    "padded,valid,window,halo",
    [
        ((8, 12), (7, 10), (4, 4), (1, 2)),  # non-square, not divisible by the window
        ((8, 6), (8, 5), (4, 2), (3, 0)),  # halo wider than half the window; none on one axis
        ((6, 4, 8), (5, 3, 6), (2, 2, 4), (1, 2, 1)),
    ],
)
def test_light_block_halo_matches_brute_force(padded, valid, window, halo):
    """LightBlock with halo keys on a map padded (with random values, as after a block) up to
    a multiple of the window, against `_halo_attend`."""
    c, heads = 8, 2
    x = _x((1, *padded, c), seed=4)
    mask = window_key_mask(padded, valid, window, halo)
    blk = LightBlock(c, heads, window, mlp_ratio=1.0, halo=halo)
    no_shift = (0,) * len(window)
    p = blk.init(jax.random.key(1), x, mask, no_shift)["params"]
    table = p["relative_position_bias_table"]
    assert table.shape == (math.prod(2 * (w + h) - 1 for w, h in zip(window, halo)), heads)
    p["relative_position_bias_table"] = jax.random.normal(
        jax.random.key(3), table.shape
    )  # make the bias matter
    got = np.asarray(blk.apply({"params": p}, x, mask, no_shift))
    want = _numpy_block(p, x, heads, _halo_attend(valid, window, halo))
    np.testing.assert_allclose(got, want, rtol=2e-4, atol=2e-4)


def test_halo_key_blocks_and_mask_by_geometry():
    """`halo_partition_heads` holds each window grown by the halo (zeros outside), and
    `window_key_mask` masks exactly the keys outside the valid map."""
    x = np.random.default_rng(0).normal(size=(2, 6, 9, 2 * 3)).astype(np.float32)  # G=2, H=1, D=3
    window, halo = (3, 3), (2, 1)
    blocks = np.asarray(
        halo_partition_heads(jnp.asarray(x), window, halo, 2, 1)
    )  # [2, 2 * 6, 1, 7 * 5, 3]
    xp = np.pad(x, [(0, 0), (2, 2), (1, 1), (0, 0)])
    for b, gi, gj in itertools.product(range(2), range(2), range(3)):
        want = xp[b, 3 * gi : 3 * gi + 7, 3 * gj : 3 * gj + 5].reshape(35, 2, 3).transpose(1, 0, 2)
        np.testing.assert_array_equal(blocks[:, b * 6 + gi * 3 + gj, 0], want)
    mask = window_key_mask((6, 9), (5, 7), window, halo)
    pos = (
        np.arange(2)[:, None, None, None] * 3 - 2 + np.arange(7)[None, None, :, None],
        np.arange(3)[None, :, None, None] * 3 - 1 + np.arange(5)[None, None, None, :],
    )
    ok = (pos[0] >= 0) & (pos[0] < 5) & (pos[1] >= 0) & (pos[1] < 7)  # [2, 3, 7, 5]
    np.testing.assert_array_equal(mask == 0, ok.reshape(6, 35))
    assert window_key_mask((6, 9), (6, 9), window, (0, 0)) is None


# --------------------------------------------------------------------------- window routing


def test_light_block_routing_all_windows_is_global_attention():
    """topk_windows >= the number of windows: every query attends to every valid token of the
    map, with the relative position bias on its own window's keys only."""
    c, heads, padded, valid, window = 8, 2, (8, 12), (7, 10), (4, 4)
    x = _x((1, *padded, c), seed=6)
    mask = window_key_mask(padded, valid, window)
    assert mask.shape == (6, 16)
    blk = LightBlock(c, heads, window, mlp_ratio=1.0, topk_windows=64)
    p = blk.init(jax.random.key(1), x, mask, (0, 0))["params"]
    p["relative_position_bias_table"] = jax.random.normal(
        jax.random.key(3), p["relative_position_bias_table"].shape
    )
    got = np.asarray(blk.apply({"params": p}, x, mask, (0, 0)))

    def attend(q, k, v, table):
        pos = _positions((0, 0), padded)
        same_window = ((pos[:, None] // window) == (pos[None] // window)).all(-1)
        index = _bias_index(pos % window, pos % window, window)
        key_ok = (pos < valid).all(-1)
        q, k, v = (a.reshape(len(pos), heads, -1) for a in (q, k, v))
        out = np.zeros_like(q)
        for hh in range(heads):
            logits = q[:, hh] @ k[:, hh].T + np.where(same_window, table[index, hh], 0.0)
            out[:, hh] = _softmax_rows(np.where(key_ok[None], logits, -np.inf), v[:, hh])
        return out.reshape(*padded, heads, -1)

    np.testing.assert_allclose(got, _numpy_block(p, x, heads, attend), rtol=2e-4, atol=2e-4)


# --------------------------------------------------------------------------- halo / routing in the model


def test_halo_and_routing_parameters():
    """A halo only grows the bias tables ((2(w+h)-1)^d rows); routing adds no parameters; both
    are off by default."""
    x = _x((1, 32, 32, 1))
    base = _shapes(LightSeg(2, 1, 3, **SMALL), x)
    halo = _shapes(LightSeg(2, 1, 3, **SMALL, halo=(2, 1)), x)
    routed = _shapes(LightSeg(2, 1, 3, **SMALL, topk_windows=2), x)
    assert jax.tree.map(lambda a: a.shape, routed) == jax.tree.map(lambda a: a.shape, base)
    extra = sum(
        depth * heads * (11 * 9 - 7 * 7)
        for depth, heads in zip(SMALL["depths"], SMALL["num_heads"])
    )
    assert _count(halo) - _count(base) == extra
    # Stage 1 (4x4 map = one window) drops the halo, but its table keeps the configured size.
    assert halo["stage1_block0"]["relative_position_bias_table"].shape == (11 * 9, 4)
    m = LightSeg(2, 1, 3)
    assert m.halo == 0 and m.topk_windows is None and m.shifts_windows()
    assert (
        not LightSeg(2, 1, 3, halo=1).shifts_windows()
        and not LightSeg(2, 1, 3, topk_windows=2).shifts_windows()
    )


# One stage, one block: the smallest model with padding to the window and several windows.
# Compile time is what the model-level tests below cost; a 1x1 "depthwise" stem halves it
# (the 3^d shifted multiply-adds dominate the compile, and they are not under test here).
TINY = dict(
    embed_dims=(8,),
    depths=(1,),
    num_heads=(1,),
    stem_dims=(4, 4),
    mlp_ratio=1.0,
    decoder_refine_kernel=0,
    depthwise_kernel=1,
)


def _random_params(model, x, seed=0):
    """Params of the model's shapes drawn from N(0, 0.3^2) in numpy: no init compile."""
    rng = np.random.default_rng(seed)
    return jax.tree.map(
        lambda a: jnp.asarray(rng.normal(size=a.shape) * 0.3, jnp.float32), _shapes(model, x)
    )


def test_routing_of_one_window_is_plain_window_attention():
    """topk_windows=1 keeps only the own window: the model equals the unshifted plain model
    (the [nW, N] key mask does what the [nW, N, N] window mask does); topk_windows=2 differs."""
    x = _x((1, 40, 56, 1))  # stage map 10x14, window 4 -> padded 12x16, 12 windows
    plain = LightSeg(2, 1, 3, **TINY, window_sizes=(4,), shift_windows=False)
    params = _random_params(plain, x)
    ref = np.asarray(jax.jit(plain.apply)({"params": params}, x))
    own = jax.jit(LightSeg(2, 1, 3, **TINY, window_sizes=(4,), topk_windows=1).apply)(
        {"params": params}, x
    )
    np.testing.assert_allclose(np.asarray(own), ref, rtol=1e-5, atol=1e-5)
    routed = jax.jit(LightSeg(2, 1, 3, **TINY, window_sizes=(4,), topk_windows=2).apply)(
        {"params": params}, x
    )
    assert np.abs(np.asarray(routed) - ref).max() > 1e-4


@pytest.mark.parametrize(
    "kw,match",
    [
        (dict(halo=-1), "halo must be an int >= 0 or 2 ints"),
        (dict(halo=(1, 2, 3)), "halo must be an int >= 0 or 2 ints"),
        (dict(topk_windows=0), "topk_windows must be None"),
        (dict(halo=2, shift_windows=True), "shift_windows=True does not combine with halo=2"),
        (
            dict(topk_windows=4, shift_windows=True),
            "shift_windows=True does not combine with topk_windows=4",
        ),
        (dict(halo=1, topk_windows=4), "halo=1 and topk_windows=4 do not combine"),
    ],
)
def test_halo_and_routing_bad_values_raise(kw, match):
    with pytest.raises(ConfigError, match=match):
        jax.eval_shape(LightSeg(2, 1, 3, **SMALL, **kw).init, jax.random.key(0), _x((1, 32, 32, 1)))


@pytest.mark.parametrize("switch", [dict(halo=1), dict(topk_windows=2)], ids=["halo", "routing"])
@pytest.mark.parametrize(
    "dims,shape,window", [(2, (2, 19, 27, 1), 4), (3, (1, 11, 9, 13, 1), 2)], ids=["2d", "3d"]
)
def test_halo_and_routing_train(switch, dims, shape, window):
    """Odd input shapes (stage maps 5x7 and 3x3x4, not multiples of the window: 4 and 8
    windows): logits shape and dtype, a finite loss, a non-zero gradient for every parameter,
    and a finite second step. The all-switches training tests (slow) cover deeper models."""
    model = LightSeg(dims, 1, 3, **TINY, window_sizes=(window,), **switch)
    x = _x(shape)
    labels = jnp.asarray(np.random.default_rng(1).integers(0, 3, size=shape[:-1]), jnp.int32)
    assert_trains_two_steps(model, _random_params(model, x), x, labels, 3)


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
        h = (t - mu) / np.sqrt(((t - mu) ** 2).mean(-1, keepdims=True) + 1e-5) * p["norm"][
            "scale"
        ] + p["norm"]["bias"]
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
            q = qkv[:, hh * hd : (hh + 1) * hd] * hd**-0.5
            k = qkv[:, c + hh * hd : c + (hh + 1) * hd]
            v = qkv[:, 2 * c + hh * hd : 2 * c + (hh + 1) * hd]
            lg = q @ k.T
            e = np.exp(lg - lg.max(-1, keepdims=True))
            out[:, hh * hd : (hh + 1) * hd] = (e / e.sum(-1, keepdims=True)) @ v
        res = out[g:] @ p["proj"]["kernel"] + p["proj"]["bias"]
        for n, (wi, wj) in enumerate([(a, bb) for a in range(2) for bb in range(3)]):
            want[b, 2 * wi : 2 * wi + 2, 2 * wj : 2 * wj + 2] += res[n]
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
        jax.eval_shape(
            LightSeg(2, 1, 3, **SMALL, cross_window_layers=(4,)).init, jax.random.key(0), x
        )


def test_shift_windows_switch_keeps_params_and_changes_output():
    x = _x((1, 40, 56, 1))
    on, off = LightSeg(2, 1, 3, **SMALL), LightSeg(2, 1, 3, **SMALL, shift_windows=False)
    params = _init(on, x)
    assert jax.tree.structure(params) == jax.tree.structure(_init(off, x))
    a, b = jax.jit(on.apply)({"params": params}, x), jax.jit(off.apply)({"params": params}, x)
    assert np.abs(np.asarray(a) - np.asarray(b)).max() > 1e-4


@pytest.mark.parametrize(
    "kw", [dict(topk=0), dict(rank=0), dict(global_tokens=-1), dict(decoder_refine_kernel=(3, 3))]
)
def test_bad_switch_values_raise(kw):
    with pytest.raises(ConfigError, match=next(iter(kw))):
        jax.eval_shape(LightSeg(2, 1, 3, **SMALL, **kw).init, jax.random.key(0), _x((1, 32, 32, 1)))


# --------------------------------------------------------------------------- everything on, odd shapes


@pytest.mark.slow  # 35-55 s each on the shared 2 cores
@pytest.mark.parametrize(
    "overlap",
    [dict(), dict(halo=1, shift_windows=False), dict(topk_windows=2)],
    ids=["shift", "halo", "routing"],
)
@pytest.mark.parametrize("dims,shape", [(2, (2, 37, 53, 2)), (3, (1, 19, 13, 22, 2))])
def test_all_switches_odd_shape_gradients_and_training(dims, shape, overlap):
    kw = dict(SMALL, window_sizes=(4, 2) if dims == 2 else (2, 2))
    model = LightSeg(
        dims,
        2,
        3,
        **kw,
        topk=5 if dims == 2 else 3,
        share_params=True,
        rank=6,
        cross_window_layers=(0, 3),
        global_tokens=2,
        drop_path=0.1,
        **overlap,
    )
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
    p = jax.eval_shape(
        LightSeg(3, 1, 3, **SMALL).init, jax.random.key(0), jnp.zeros((1, 16, 16, 16, 1))
    )["params"]
    assert "refine" not in p["fuse0"] and "refine" in p["fuse1"]
