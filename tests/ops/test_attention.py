"""window_attention against an independent numpy reference (explicit loops, np softmax)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxseg.ops import window_attention
from jaxseg.ops.attention import _resolve_impl


def _reference(q, k, v, bias, mask):
    q, k, v = (np.asarray(a, np.float64) for a in (q, k, v))
    w_count, h_count, n, _ = q.shape
    out = np.zeros_like(q)
    for w in range(w_count):
        for h in range(h_count):
            logits = q[w, h] @ k[w, h].T
            if bias is not None:
                logits = logits + np.asarray(bias, np.float64)[h]
            if mask is not None:
                logits = logits + np.asarray(mask, np.float64)[w % mask.shape[0]]
            logits = logits - logits.max(axis=-1, keepdims=True)
            p = np.exp(logits)
            p /= p.sum(axis=-1, keepdims=True)
            out[w, h] = p @ v[w, h]
    return out


def _inputs(w=6, h=2, n=16, d=8, wi=3, seed=0):
    rng = np.random.default_rng(seed)
    q, k, v = (rng.normal(size=(w, h, n, d)).astype(np.float32) for _ in range(3))
    bias = rng.normal(size=(h, n, n)).astype(np.float32)
    allowed = rng.random((wi, n, n)) < 0.6
    allowed[:, np.arange(n), np.arange(n)] = True  # every query sees itself
    mask = np.where(allowed, 0.0, -1e9).astype(np.float32)
    return q, k, v, bias, mask


@pytest.mark.parametrize("use_bias,use_mask", [(False, False), (True, False), (True, True), (False, True)])
def test_matches_reference_f32(use_bias, use_mask):
    q, k, v, bias, mask = _inputs()
    bias = bias if use_bias else None
    mask = mask if use_mask else None
    out = window_attention(jnp.asarray(q), jnp.asarray(k), jnp.asarray(v),
                           None if bias is None else jnp.asarray(bias),
                           None if mask is None else jnp.asarray(mask), impl="xla")
    assert out.shape == q.shape and out.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(out), _reference(q, k, v, bias, mask), rtol=1e-5, atol=1e-5)


def test_mask_window_count_not_dividing():
    q, k, v, bias, mask = _inputs(w=5, wi=3)
    out = window_attention(q, k, v, bias, mask, impl="auto")
    np.testing.assert_allclose(np.asarray(out), _reference(q, k, v, bias, mask), rtol=1e-5, atol=1e-5)


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
    np.testing.assert_allclose(window_attention(q, k, v, bias, mask, impl="pallas_interpret"),
                               window_attention(q, k, v, bias, mask, impl="xla"),
                               rtol=1e-5, atol=1e-5)


def test_impl_resolution_and_errors():
    assert _resolve_impl("auto") == "xla"
    assert _resolve_impl("pallas") == "pallas"
    q, k, v, _, _ = _inputs()
    with pytest.raises(ValueError, match="'auto', 'xla', 'pallas'"):
        window_attention(q, k, v, impl="cuda")
    with pytest.raises(ValueError, match="bias"):
        window_attention(q, k, v, bias=np.zeros((1, 2, 2), np.float32))
