"""jaxseg.ops.axial_attention, the fold/unfold helpers and window_attention_topk, against numpy.

Runtime: ~5 s on 2 shared cores.
"""

import itertools

import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from jaxseg import ops


def _softmax(z):
    z = z - z.max(-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(-1, keepdims=True)


def _np_attention_along_lines(q, k, v, axis, bias=None):
    """Full attention over all positions of each image, where a pair (p, p') is allowed only
    if p and p' differ along `axis` alone (i.e. lie on one line): a reference that knows
    nothing about folding. q, k, v `[B, *S, H, D]` -> `[B, *S, H, D]`; bias `[H, L, L]`."""
    b, *s, h, d = q.shape
    n = int(np.prod(s))
    coords = np.stack(np.meshgrid(*[np.arange(m) for m in s], indexing="ij"), -1).reshape(n, len(s))
    others = [a for a in range(len(s)) if a != axis - 1]
    same_line = (coords[:, None, others] == coords[None, :, others]).all(-1)  # [n, n]
    out = np.zeros((b, n, h, d))
    qf, kf, vf = (t.reshape(b, n, h, d).astype(np.float64) for t in (q, k, v))
    for bi, hi in itertools.product(range(b), range(h)):
        logits = qf[bi, :, hi] @ kf[bi, :, hi].T
        if bias is not None:
            pos = coords[:, axis - 1]
            logits = logits + bias[hi][pos[:, None], pos[None, :]]
        logits = np.where(same_line, logits, -np.inf)
        out[bi, :, hi] = _softmax(logits) @ vf[bi, :, hi]
    return out.reshape(b, *s, h, d)


@pytest.mark.parametrize(
    "shape,axis",
    [
        ((2, 5, 7), 1),
        ((2, 5, 7), 2),
        ((1, 3, 4, 5), 1),
        ((1, 3, 4, 5), 2),
        ((1, 3, 4, 5), 3),
        ((1, 3, 4, 5), -2),
    ],
)
def test_axial_attention_matches_full_attention_on_lines(shape, axis):
    rng = np.random.default_rng(0)
    heads, hd = 2, 3
    q, k, v = (rng.normal(size=(*shape, heads, hd)).astype(np.float32) for _ in range(3))
    ax = axis % (len(shape) + 1)
    length = shape[ax]
    bias = rng.normal(size=(heads, length, length)).astype(np.float32)
    qkv = jnp.asarray(np.concatenate([t.reshape(*shape, heads * hd) for t in (q, k, v)], -1))
    fq, fk, fv = ops.fold_axis_heads(qkv, axis, 3, heads)
    assert fq.shape == (int(np.prod(shape)) // length, heads, length, hd)
    out = ops.axial_attention(fq, fk, fv, jnp.asarray(bias), impl="xla")
    got = np.asarray(ops.unfold_axis_heads(out, axis, shape[1:]))
    want = _np_attention_along_lines(q, k, v, ax, bias).reshape(*shape, heads * hd)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "shape,axis",
    [((2, 3, 4, 5, 12), 1), ((2, 3, 4, 5, 12), 2), ((2, 3, 4, 5, 12), -2), ((2, 7, 3, 8), 1)],
)
def test_fold_axis_heads_row_order(shape, axis):
    """Row r of `fold_axis_heads` is (batch, other spatial index) in row-major order, and its
    [H, L, D] block is that line's channels split as (group, head, head dim): checked by
    explicit numpy indexing, exactly."""
    groups, heads = 2, 3 if shape[-1] == 12 else 2
    x = np.random.default_rng(0).normal(size=shape).astype(np.float32)
    folded = np.asarray(ops.fold_axis_heads(jnp.asarray(x), axis, groups, heads))
    ax = axis % len(shape)  # negative axes count from the channel axis, as in ops
    others = [i for i in range(1, len(shape) - 1) if i != ax]
    hd = shape[-1] // (groups * heads)
    assert folded.shape == (groups, x.size // (shape[ax] * shape[-1]), heads, shape[ax], hd)
    lines = itertools.product(range(shape[0]), *(range(shape[i]) for i in others))
    for r, idx in enumerate(lines):
        sel = [slice(None)] * len(shape)
        sel[0] = idx[0]
        for i, j in zip(others, idx[1:]):
            sel[i] = j
        line = x[tuple(sel)].reshape(shape[ax], groups, heads, hd)  # [L, G, H, D]
        np.testing.assert_array_equal(folded[:, r], line.transpose(1, 2, 0, 3))
        np.testing.assert_array_equal(
            np.asarray(ops.unfold_axis_heads(jnp.asarray(folded[0]), axis, shape[1:-1]))[
                tuple(sel)
            ],
            line[:, 0].reshape(shape[ax], heads * hd),
        )


def test_fold_unfold_roundtrip_and_auto_impl():
    x = jnp.arange(2 * 3 * 4 * 5 * 6, dtype=jnp.float32).reshape(2, 3, 4, 5, 6)
    for axis in (1, 2, 3):
        (rows,) = ops.fold_axis_heads(x, axis, 1, 2)
        np.testing.assert_array_equal(ops.unfold_axis_heads(rows, axis, (3, 4, 5)), x)
    q = jnp.ones((4, 2, 5, 3))
    np.testing.assert_allclose(
        ops.axial_attention(q, q, q), ops.axial_attention(q, q, q, impl="xla")
    )


def test_axial_pallas_impl_in_the_interpreter_matches_xla():
    rng = np.random.default_rng(0)
    q, k, v = (jnp.asarray(rng.normal(size=(6, 2, 9, 16)), jnp.float32) for _ in range(3))
    bias = jnp.asarray(rng.normal(size=(2, 9, 9)), jnp.float32)
    np.testing.assert_allclose(
        ops.axial_attention(q, k, v, bias, impl="pallas_interpret"),
        ops.axial_attention(q, k, v, bias, impl="xla"),
        rtol=1e-5,
        atol=1e-5,
    )


def test_axial_attention_errors():
    q = jnp.ones((4, 2, 5, 3))
    with pytest.raises(ValueError, match="'pallas_interpret'"):
        ops.axial_attention(q, q, q, impl="mosaic")
    with pytest.raises(ValueError, match=r"\[H, L, L\]"):
        ops.axial_attention(q, q, q, jnp.zeros((2, 4, 4)))
    with pytest.raises(ValueError, match="same shape"):
        ops.axial_attention(q, q[:, :, :4], q)
    with pytest.raises(ValueError, match="unknown impl"):
        ops.axial_attention(q, q, q, impl="cuda")


def test_axial_attention_gradient_matches_numerical():
    rng = np.random.default_rng(1)
    q, k, v = (jnp.asarray(rng.normal(size=(3, 2, 4, 2)), jnp.float32) for _ in range(3))
    bias = jnp.asarray(rng.normal(size=(2, 4, 4)), jnp.float32)
    check_grads(
        lambda *a: ops.axial_attention(*a),
        (q, k, v, bias),
        order=1,
        modes=("rev",),
        atol=1e-2,
        rtol=1e-2,
    )


def _np_topk_attention(q, k, v, bias, mask, topk):
    w, h, n, _ = q.shape
    out = np.zeros(q.shape, np.float64)
    for wi, hi in itertools.product(range(w), range(h)):
        logits = q[wi, hi].astype(np.float64) @ k[wi, hi].T.astype(np.float64)
        logits = logits + bias[hi] + mask[wi % mask.shape[0]]
        for r in range(n):
            keep = np.argsort(-logits[r], kind="stable")[:topk]  # explicit selection
            row = np.full(n, -np.inf)
            row[keep] = logits[r, keep]
            out[wi, hi, r] = _softmax(row) @ v[wi, hi]
    return out


@pytest.mark.parametrize("topk", [1, 3, 8, 20])
def test_window_attention_topk_matches_numpy(topk):
    rng = np.random.default_rng(2)
    w, h, n, d = 4, 2, 8, 4
    q, k, v = (rng.normal(size=(w, h, n, d)).astype(np.float32) for _ in range(3))
    bias = rng.normal(size=(h, n, n)).astype(np.float32)
    mask = np.zeros((2, n, n), np.float32)
    mask[1, :, 5:] = -1e9  # padded keys in every second window: never selected
    got = ops.window_attention_topk(*map(jnp.asarray, (q, k, v, bias, mask)), topk=topk, impl="xla")
    want = _np_topk_attention(q, k, v, bias, mask, min(topk, n))
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-5)
    if topk >= n:  # dense: identical to window_attention
        dense = ops.window_attention(*map(jnp.asarray, (q, k, v, bias, mask)))
        np.testing.assert_allclose(np.asarray(got), np.asarray(dense), rtol=1e-6, atol=1e-6)


def test_window_attention_topk_rejects_bad_k():
    q = jnp.ones((1, 1, 4, 2))
    with pytest.raises(ValueError, match="topk"):
        ops.window_attention_topk(q, q, q, topk=0)
