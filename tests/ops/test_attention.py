"""window_attention (N queries, M keys), its top-k and routed forms against independent
numpy references (explicit loops, np softmax, argsort selection)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxseg.ops import window_attention, window_attention_routed, window_attention_topk
from jaxseg.ops.attention import _resolve_impl


def _reference_logits(q, k, bias, mask):
    """float64 `[W, H, N, M]` = q k^T + bias + mask[w % Wi], window by window."""
    q, k = (np.asarray(a, np.float64) for a in (q, k))
    logits = np.zeros(q.shape[:3] + k.shape[2:3])
    for w in range(q.shape[0]):
        for h in range(q.shape[1]):
            logits[w, h] = q[w, h] @ k[w, h].T
            if bias is not None:
                logits[w, h] += np.asarray(bias, np.float64)[h]
            if mask is not None:
                logits[w, h] += np.asarray(mask, np.float64)[w % mask.shape[0]]
    return logits


def _attend(logits, v):
    """softmax over the last axis of `[W, H, N, M]` logits (-inf drops a key), times v."""
    p = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return np.einsum(
        "whnm,whmd->whnd", p / p.sum(axis=-1, keepdims=True), np.asarray(v, np.float64)
    )


def _reference(q, k, v, bias, mask):
    return _attend(_reference_logits(q, k, bias, mask), v)


def _inputs(w=6, h=2, n=16, d=8, wi=3, seed=0):
    rng = np.random.default_rng(seed)
    q, k, v = (rng.normal(size=(w, h, n, d)).astype(np.float32) for _ in range(3))
    bias = rng.normal(size=(h, n, n)).astype(np.float32)
    allowed = rng.random((wi, n, n)) < 0.6
    allowed[:, np.arange(n), np.arange(n)] = True  # every query sees itself
    mask = np.where(allowed, 0.0, -1e9).astype(np.float32)
    return q, k, v, bias, mask


@pytest.mark.parametrize(
    "use_bias,use_mask", [(False, False), (True, False), (True, True), (False, True)]
)
def test_matches_reference_f32(use_bias, use_mask):
    q, k, v, bias, mask = _inputs()
    bias = bias if use_bias else None
    mask = mask if use_mask else None
    out = window_attention(
        jnp.asarray(q),
        jnp.asarray(k),
        jnp.asarray(v),
        None if bias is None else jnp.asarray(bias),
        None if mask is None else jnp.asarray(mask),
        impl="xla",
    )
    assert out.shape == q.shape and out.dtype == jnp.float32
    np.testing.assert_allclose(
        np.asarray(out), _reference(q, k, v, bias, mask), rtol=1e-5, atol=1e-5
    )


def test_mask_window_count_not_dividing():
    q, k, v, bias, mask = _inputs(w=5, wi=3)
    out = window_attention(q, k, v, bias, mask, impl="auto")
    np.testing.assert_allclose(
        np.asarray(out), _reference(q, k, v, bias, mask), rtol=1e-5, atol=1e-5
    )


def test_matches_reference_bf16():
    q, k, v, bias, mask = _inputs(seed=1)
    qb, kb, vb = (jnp.asarray(a, jnp.bfloat16) for a in (q, k, v))
    out = window_attention(qb, kb, vb, jnp.asarray(bias), jnp.asarray(mask), impl="xla")
    assert out.dtype == jnp.bfloat16
    ref = _reference(*(np.asarray(a.astype(jnp.float32)) for a in (qb, kb, vb)), bias, mask)
    np.testing.assert_allclose(np.asarray(out.astype(jnp.float32)), ref, rtol=5e-2, atol=5e-2)


def test_jit_and_grad_finite():
    q, k, v, bias, mask = _inputs()
    f = jax.jit(lambda q, k, v: window_attention(q, k, v, bias, mask).sum())
    grads = jax.grad(f, argnums=(0, 1, 2))(q, k, v)
    assert all(np.isfinite(np.asarray(g)).all() for g in grads)


def test_pallas_impl_in_the_interpreter_matches_xla():
    q, k, v, bias, mask = _inputs()
    np.testing.assert_allclose(
        window_attention(q, k, v, bias, mask, impl="pallas_interpret"),
        window_attention(q, k, v, bias, mask, impl="xla"),
        rtol=1e-5,
        atol=1e-5,
    )


def test_impl_resolution_and_errors():
    assert _resolve_impl("auto") == "xla"
    assert _resolve_impl("pallas") == "pallas"
    q, k, v, _, _ = _inputs()
    with pytest.raises(ValueError, match="'auto', 'xla', 'pallas'"):
        window_attention(q, k, v, impl="cuda")
    with pytest.raises(ValueError, match="bias"):
        window_attention(q, k, v, bias=np.zeros((1, 2, 2), np.float32))
    # Top-k selection has one implementation (XLA), which every attention impl selects, so a
    # model's single attention_impl (e.g. "pallas" in a TPU export) serves it too.
    np.testing.assert_array_equal(
        window_attention_topk(q, k, v, topk=3, impl="pallas"),
        window_attention_topk(q, k, v, topk=3, impl="xla"),
    )
    with pytest.raises(ValueError, match=r"window_attention_topk: unknown impl='cuda'"):
        window_attention_topk(q, k, v, topk=3, impl="cuda")
    with pytest.raises(ValueError, match="weights_fn has no Pallas kernel"):
        window_attention(q, k, v, impl="pallas_interpret", weights_fn=lambda p: p)


def test_weights_fn_maps_the_softmax_weights():
    """weights_fn sees the f32 softmax weights: identity is plain attention, and halving
    them halves the output (numpy reference, f32: 1e-5)."""
    q, k, v, bias, mask = _inputs()
    want = _reference(q, k, v, bias, mask)
    for fn, scale in ((lambda p: p, 1.0), (lambda p: 0.5 * p, 0.5)):
        got = window_attention(q, k, v, bias, mask, weights_fn=fn)
        np.testing.assert_allclose(np.asarray(got), scale * want, rtol=1e-5, atol=1e-5)


# --------------------------------------------------------------------------- M != N keys


def _keys_inputs(w=6, h=2, n=12, m=30, d=8, wi=3, seed=2):
    """q `[w, h, n, d]`; k, v `[w, h, m, d]`; bias `[h, n, m]`; mask `[wi, n, m]` (>= 1 key per row)."""
    rng = np.random.default_rng(seed)
    q = rng.normal(size=(w, h, n, d)).astype(np.float32)
    k, v = (rng.normal(size=(w, h, m, d)).astype(np.float32) for _ in range(2))
    bias = rng.normal(size=(h, n, m)).astype(np.float32)
    allowed = rng.random((wi, n, m)) < 0.6
    allowed[:, :, 0] = True
    return q, k, v, bias, np.where(allowed, 0.0, -1e9).astype(np.float32)


@pytest.mark.parametrize("w,wi", [(6, 3), (5, 3)])  # the mask broadcast and the mask gather
def test_more_keys_than_queries_matches_reference(w, wi):
    q, k, v, bias, mask = _keys_inputs(w=w, wi=wi)
    out = window_attention(q, k, v, bias, mask, impl="xla")
    assert out.shape == q.shape
    np.testing.assert_allclose(
        np.asarray(out), _reference(q, k, v, bias, mask), rtol=1e-5, atol=1e-5
    )
    few = _keys_inputs(m=5)  # fewer keys than queries
    np.testing.assert_allclose(
        np.asarray(window_attention(*few, impl="xla")), _reference(*few), rtol=1e-5, atol=1e-5
    )


def test_topk_with_more_keys_than_queries():
    q, k, v, bias, mask = _keys_inputs()
    dense = window_attention(q, k, v, bias, mask, impl="xla")
    np.testing.assert_allclose(
        np.asarray(window_attention_topk(q, k, v, bias, mask, topk=30)),
        np.asarray(dense),
        rtol=1e-6,
        atol=1e-6,
    )
    # topk=20 > N=12: the clamp is to M, so selection still happens.
    sparse = np.asarray(window_attention_topk(q, k, v, bias, mask, topk=20))
    logits = _reference_logits(q, k, bias, mask)
    kth = np.sort(logits, -1)[..., -20:-19]
    assert np.abs(sparse - np.asarray(dense)).max() > 1e-4
    np.testing.assert_allclose(
        sparse, _attend(np.where(logits >= kth, logits, -np.inf), v), rtol=1e-5, atol=1e-5
    )


def test_shape_errors_name_the_layout():
    q, k, v, bias, mask = _keys_inputs()
    with pytest.raises(ValueError, match=r"k, v \[W, H, M, D\]"):
        window_attention(q, k[:, :, :, :4], v, impl="xla")
    with pytest.raises(ValueError, match=r"k, v \[W, H, M, D\]"):
        window_attention(q, k, v[:, :, :20], impl="xla")
    with pytest.raises(ValueError, match=r"bias must be \[H, N, M\] = \(2, 12, 30\)"):
        window_attention(q, k, v, bias[:, :, :12], impl="xla")
    with pytest.raises(ValueError, match=r"mask must be \[Wi, N, M\] = \[Wi, 12, 30\]"):
        window_attention(q, k, v, bias, mask[:, :, :12], impl="xla")


# --------------------------------------------------------------------------- window routing


def _routing_inputs(b=2, nw=6, h=2, n=8, d=4, seed=3, padded=True):
    """q, k, v `[b * nw, h, n, d]`, bias `[h, n, n]`, key_mask `[nw, n]` (windows 4, 5 partly padding)."""
    rng = np.random.default_rng(seed)
    q, k, v = (rng.normal(size=(b * nw, h, n, d)).astype(np.float32) for _ in range(3))
    bias = rng.normal(size=(h, n, n)).astype(np.float32)
    key_mask = np.zeros((nw, n), np.float32)
    if padded:
        key_mask[4:, n // 2 :] = -1e9
    return q, k, v, bias, key_mask


def _routed_reference(q, k, v, bias, key_mask, nw, kw, topk=None):
    """Numpy: window affinities of the valid-token means, own window + argsort top kw - 1."""
    q, k, v = (np.asarray(a, np.float64) for a in (q, k, v))
    w, h, n, d = q.shape
    valid = key_mask == 0
    out = np.zeros_like(q)
    for b in range(w // nw):
        win = slice(b * nw, (b + 1) * nw)
        qm = np.stack(
            [q[win][i][:, valid[i]].mean(1).reshape(-1) for i in range(nw)]
        )  # [nw, h * d]
        km = np.stack([k[win][i][:, valid[i]].mean(1).reshape(-1) for i in range(nw)])
        affinity = qm @ km.T
        for i in range(nw):
            others = [j for j in np.argsort(-affinity[i], kind="stable") if j != i]
            sel = [i] + others[: kw - 1]
            keys = np.concatenate([k[win][j] for j in sel], axis=1)  # [h, kw * n, d]
            vals = np.concatenate([v[win][j] for j in sel], axis=1)
            ok = np.concatenate([valid[j] for j in sel])
            for hh in range(h):
                logits = q[win][i, hh] @ keys[hh].T
                logits[:, :n] += bias[hh]  # the own window only
                logits[:, ~ok] = -np.inf
                if topk is not None:
                    kth = np.sort(logits, -1)[:, -topk][:, None]
                    logits = np.where(logits >= kth, logits, -np.inf)
                e = np.exp(logits - logits.max(-1, keepdims=True))
                out[b * nw + i, hh] = e / e.sum(-1, keepdims=True) @ vals[hh]
    return out


@pytest.mark.parametrize("kw,padded,topk", [(2, True, None), (3, False, None), (3, True, 5)])
def test_routed_matches_numpy_reference(kw, padded, topk):
    q, k, v, bias, key_mask = _routing_inputs(padded=padded)
    out = window_attention_routed(
        q,
        k,
        v,
        bias,
        key_mask if padded else None,
        windows_per_image=6,
        topk_windows=kw,
        topk=topk,
        impl="xla",
    )
    want = _routed_reference(q, k, v, bias, key_mask, 6, kw, topk)
    np.testing.assert_allclose(np.asarray(out), want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kw", [6, 9])
def test_routed_all_windows_is_global_attention(kw):
    """topk_windows >= nW: every query attends to every valid token of its image (the bias on
    its own window's keys only), written here without any routing."""
    q, k, v, bias, key_mask = _routing_inputs()
    out = np.asarray(
        window_attention_routed(q, k, v, bias, key_mask, windows_per_image=6, topk_windows=kw)
    )
    b, nw, h, n, d = 2, 6, 2, 8, 4
    valid = (key_mask == 0).reshape(-1)
    img = lambda a, i: (
        np.asarray(a, np.float64)[i * nw : (i + 1) * nw].transpose(1, 0, 2, 3).reshape(h, nw * n, d)
    )
    for i in range(b):
        qi, ki, vi = img(q, i), img(k, i), img(v, i)
        logits = qi @ ki.transpose(0, 2, 1)  # [h, nw * n, nw * n]
        for wdx in range(nw):
            logits[:, wdx * n : (wdx + 1) * n, wdx * n : (wdx + 1) * n] += bias
        logits[:, :, ~valid] = -np.inf
        e = np.exp(logits - logits.max(-1, keepdims=True))
        want = (e / e.sum(-1, keepdims=True)) @ vi  # [h, nw * n, d]
        got = out[i * nw : (i + 1) * nw].transpose(1, 0, 2, 3).reshape(h, nw * n, d)
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_routed_one_window_is_window_attention():
    q, k, v, bias, key_mask = _routing_inputs()
    mask = np.broadcast_to(key_mask[:, None, :], (6, 8, 8))
    np.testing.assert_allclose(
        np.asarray(
            window_attention_routed(q, k, v, bias, key_mask, windows_per_image=6, topk_windows=1)
        ),
        np.asarray(window_attention(q, k, v, bias, mask)),
        rtol=1e-6,
        atol=1e-6,
    )


def test_routed_gradients_skip_the_selection():
    """Gradients equal those of the same attention with the routing indices frozen as
    constants: the selection contributes none, the gathered k and v do."""
    q, k, v, bias, key_mask = (jnp.asarray(a) for a in _routing_inputs())
    b, nw, h, n, d, kw = 2, 6, 2, 8, 4, 3
    routed = lambda q, k, v, bias: window_attention_routed(
        q, k, v, bias, key_mask, windows_per_image=nw, topk_windows=kw
    ).sum()
    # Recover the selection from the numpy reference's rule and freeze it.
    qm = np.asarray(q).reshape(b, nw, h, n, d)
    km = np.asarray(k).reshape(b, nw, h, n, d)
    wts = np.asarray(key_mask == 0, np.float64)
    wts = wts / wts.sum(-1, keepdims=True)
    aff = np.einsum(
        "biC,bjC->bij",
        np.einsum("bwhnd,wn->bwhd", qm, wts).reshape(b, nw, -1),
        np.einsum("bwhnd,wn->bwhd", km, wts).reshape(b, nw, -1),
    )
    aff[:, np.arange(nw), np.arange(nw)] = -np.inf
    idx = np.concatenate(
        [
            np.broadcast_to(np.arange(nw)[None, :, None], (b, nw, 1)),
            np.argsort(-aff, -1)[..., : kw - 1],
        ],
        -1,
    )  # [b, nw, kw]

    def frozen(q, k, v, bias):
        gather = lambda x: (
            x.reshape(b, nw, h, n, d)[np.arange(b)[:, None, None], idx]
            .transpose(0, 1, 3, 2, 4, 5)
            .reshape(b * nw, h, kw * n, d)
        )
        mask = jnp.asarray(np.asarray(key_mask)[idx].reshape(b * nw, 1, kw * n))
        full_bias = jnp.concatenate([bias, jnp.zeros((h, n, (kw - 1) * n))], -1)
        logits = jnp.einsum("whnd,whmd->whnm", q, gather(k)) + full_bias[None] + mask[:, None]
        return jnp.einsum("whnm,whmd->whnd", jax.nn.softmax(logits, -1), gather(v)).sum()

    got = jax.grad(routed, argnums=(0, 1, 2, 3))(q, k, v, bias)
    want = jax.grad(frozen, argnums=(0, 1, 2, 3))(q, k, v, bias)
    for g, wg in zip(got, want):
        np.testing.assert_allclose(np.asarray(g), np.asarray(wg), rtol=1e-5, atol=1e-6)
    assert np.abs(np.asarray(got[1])).max() > 0


def test_routed_pallas_interpret_matches_xla():
    """The routed keys (M = kw * N) through the Pallas kernel in the TPU interpreter."""
    q, k, v, bias, key_mask = _routing_inputs(b=1)
    kw = dict(windows_per_image=6, topk_windows=2)
    np.testing.assert_allclose(
        np.asarray(window_attention_routed(q, k, v, bias, key_mask, **kw, impl="pallas_interpret")),
        np.asarray(window_attention_routed(q, k, v, bias, key_mask, **kw, impl="xla")),
        rtol=1e-5,
        atol=1e-5,
    )


def test_routed_argument_errors():
    q, k, v, bias, key_mask = _routing_inputs()
    with pytest.raises(ValueError, match="topk_windows must be a positive int"):
        window_attention_routed(q, k, v, windows_per_image=6, topk_windows=0)
    with pytest.raises(ValueError, match="windows_per_image = 5"):
        window_attention_routed(q, k, v, windows_per_image=5, topk_windows=2)
    with pytest.raises(ValueError, match=r"key_mask must be \[nW, N\] = \(6, 8\)"):
        window_attention_routed(q, k, v, bias, key_mask[:, :4], windows_per_image=6, topk_windows=2)
    with pytest.raises(ValueError, match=r"unknown impl='cuda'"):
        window_attention_routed(q, k, v, windows_per_image=6, topk_windows=2, topk=3, impl="cuda")
