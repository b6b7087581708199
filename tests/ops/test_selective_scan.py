"""selective_scan: every implementation against the sequential lax.scan reference, which is
itself checked against a float64 numpy loop of the recurrence."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxseg.ops import selective_scan, selective_scan_reference
from jaxseg.ops.scan import SCAN_IMPLS

# Error = max|got - want| / max(1, max|want|), forward and every gradient.
# f32: measured <= 2e-7 forward, <= 4e-7 backward (large delta*|A| included). bf16 inputs:
# every impl computes in f32 from the same bf16 inputs and rounds its results to bf16, so
# they may differ by an ulp of bf16 (2^-8 relative): tolerance 1e-2; measured <= 4e-7
# (the roundings agreed).
TOL = {jnp.float32: 1e-5, jnp.bfloat16: 1e-2}


def _inputs(b, l, d, n, *, seed=0, delta_scale=1.0, dtype=jnp.float32):
    rng = np.random.default_rng(seed)
    u = rng.normal(size=(b, l, d))
    delta = delta_scale * np.log1p(np.exp(rng.normal(size=(b, l, d))))  # softplus: > 0
    a = -np.exp(rng.normal(size=(d, n)))
    bb, cc = rng.normal(size=(b, l, n)), rng.normal(size=(b, l, n))
    dd = rng.normal(size=(d,))
    return [jnp.asarray(x, dtype) for x in (u, delta, a, bb, cc, dd)]


def _err(got, want):
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    return np.abs(got - want).max() / max(1.0, np.abs(want).max())


def _numpy_scan(u, delta, a, b, c, d):
    u, delta, a, b, c, d = (np.asarray(x, np.float64) for x in (u, delta, a, b, c, d))
    h = np.zeros((u.shape[0], *a.shape))
    ys = []
    for t in range(u.shape[1]):
        h = (
            np.exp(delta[:, t, :, None] * a) * h
            + (delta[:, t] * u[:, t])[..., None] * b[:, t, None]
        )
        ys.append((h * c[:, t, None]).sum(-1) + d * u[:, t])
    return np.stack(ys, 1)


def test_reference_is_the_recurrence():
    args = _inputs(2, 13, 3, 4)
    assert _err(selective_scan_reference(*args), _numpy_scan(*args)) < 1e-6


def _loss(fn, cot):
    return lambda *a: (fn(*a).astype(jnp.float32) * cot).sum()


@functools.cache
def _case(shape, seed=0, delta_scale=1.0, dtype=jnp.float32):
    """Inputs, cotangent and the reference's output and gradients, once per case (each
    implementation is checked against the same ones)."""
    args = _inputs(*shape, seed=seed, delta_scale=delta_scale, dtype=dtype)
    cot = jnp.asarray(np.random.default_rng(9).normal(size=shape[:3]), jnp.float32)
    grads = jax.jit(jax.grad(_loss(selective_scan_reference, cot), argnums=range(6)))(*args)
    return args, cot, selective_scan_reference(*args), grads


def _check(impl, case, tol, chunk=8):
    args, cot, out_want, grads_want = case
    fn = lambda *a: selective_scan(*a, impl=impl, chunk=chunk)
    out = jax.jit(fn)(*args)
    assert out.dtype == args[0].dtype and out.shape == args[0].shape
    assert _err(out, out_want) < tol
    grads = jax.jit(jax.grad(_loss(fn, cot), argnums=range(6)))(*args)
    for name, g, w in zip(("u", "delta", "A", "B", "C", "D"), grads, grads_want):
        assert np.isfinite(np.asarray(g, np.float32)).all(), name
        assert _err(g, w) < tol, (name, _err(g, w))


@pytest.mark.parametrize("impl", SCAN_IMPLS)
@pytest.mark.parametrize(
    "shape,chunk",
    [((2, 37, 5, 4), 8), ((2, 5, 4, 16), 32)],
    ids=["L37-not-a-multiple-of-8", "L5-below-the-chunk"],
)
def test_forward_and_backward_f32(impl, shape, chunk):
    _check(impl, _case(shape), TOL[jnp.float32], chunk)


# "sequential" is the reference's recurrence: the f32 cases cover it.
REFORMULATED = [i for i in SCAN_IMPLS if i != "sequential"]


@pytest.mark.parametrize("impl", REFORMULATED)
def test_forward_and_backward_bf16(impl):
    _check(impl, _case((2, 29, 4, 8), 1, dtype=jnp.bfloat16), TOL[jnp.bfloat16])


@pytest.mark.parametrize("impl", REFORMULATED)
def test_large_delta_times_a_stays_finite(impl):
    """delta * |A| up to ~1e3: exp(delta A) underflows to 0; a chunked form that divided
    exp(A cumsum) factors would overflow to inf / nan here."""
    _check(impl, _case((2, 40, 4, 8), 2, 80.0), TOL[jnp.float32])


def test_bad_shapes_and_impl_raise():
    args = _inputs(1, 4, 3, 2)
    with pytest.raises(ValueError, match=r"A must be \[D=3, N\]"):
        selective_scan(args[0], args[1], args[2].T, *args[3:])
    with pytest.raises(ValueError, match="B must be"):
        selective_scan(*args[:3], args[3][:, :2], *args[4:])
    with pytest.raises(ValueError, match="chunk"):
        selective_scan(*args, chunk=0)
    with pytest.raises(ValueError, match="unknown impl"):
        selective_scan(*args, impl="cuda")
