"""Mamba's selective scan (S6) with zero-order-hold discretisation, in three formulations.

The recurrence, per batch b, channel d and state n (`A` diagonal, `[D, N]`):

    h_t = exp(delta_t * A) * h_{t-1} + delta_t * B_t * u_t        h_{-1} = 0
    y_t = sum_n C_t[n] * h_t[:, n] + D * u_t

(Mamba's simplified ZOH: dB u = delta B u.) Every implementation computes in float32 and
returns `u.dtype`; they differ in how much of `[B, L, D, N]` they materialise.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax

from jaxseg.ops._impl import IMPL_AUTO, resolve_impl

SCAN_IMPLS = ("chunked", "associative", "sequential")
DEFAULT_CHUNK = 16


def _check(u, delta, A, B, C, D):
    if u.ndim != 3 or delta.shape != u.shape:
        raise ValueError(
            f"selective_scan: u and delta must both be [B, L, D]; got u{u.shape} delta{delta.shape}."
        )
    b, l, d = u.shape
    if A.ndim != 2 or A.shape[0] != d:
        raise ValueError(f"selective_scan: A must be [D={d}, N]; got {A.shape}.")
    n = A.shape[1]
    for name, x in (("B", B), ("C", C)):
        if x.shape != (b, l, n):
            raise ValueError(
                f"selective_scan: {name} must be [B, L, N] = {(b, l, n)}; got {x.shape}."
            )
    if D.shape != (d,):
        raise ValueError(f"selective_scan: D must be [D] = ({d},); got {D.shape}.")


def _f32(*xs):
    return [x.astype(jnp.float32) for x in xs]


def selective_scan_reference(u, delta, A, B, C, D):
    """The recurrence as a sequential `lax.scan` over L (float32), the independent reference.

    Shapes as `selective_scan`. Memory: forward `B*D*N` state; autodiff saves every step's
    state, `B*L*D*N` floats.
    """
    _check(u, delta, A, B, C, D)
    uf, df, Af, Bf, Cf, Df = _f32(u, delta, A, B, C, D)

    def step(h, xs):
        u_t, d_t, b_t, c_t = xs  # [B, D], [B, D], [B, N], [B, N]
        h = jnp.exp(d_t[..., None] * Af) * h + (d_t * u_t)[..., None] * b_t[:, None, :]
        return h, jnp.einsum("bdn,bn->bd", h, c_t)

    h0 = jnp.zeros((u.shape[0], *A.shape), jnp.float32)
    xs = tuple(jnp.moveaxis(x, 1, 0) for x in (uf, df, Bf, Cf))
    _, ys = lax.scan(step, h0, xs)
    return (jnp.moveaxis(ys, 0, 1) + Df * uf).astype(u.dtype)


def _associative(u, delta, A, B, C, D):
    uf, df, Af, Bf, Cf, Df = _f32(u, delta, A, B, C, D)
    dA = jnp.exp(df[..., None] * Af)  # [B, L, D, N]
    dBu = (df * uf)[..., None] * Bf[:, :, None, :]

    def combine(x, y):  # (a1, b1) then (a2, b2): h -> a2 (a1 h + b1) + b2
        return x[0] * y[0], y[0] * x[1] + y[1]

    _, h = lax.associative_scan(combine, (dA, dBu), axis=1)
    return (jnp.einsum("bldn,bln->bld", h, Cf) + Df * uf).astype(u.dtype)


def _segsum(x):
    """`[B, T, D] -> [B, T, T, D]`: out[t, s] = sum_{r=s+1}^{t} x_r for s <= t, else 0.

    Summed directly (a cumsum of the masked rows), not as cumsum_t - cumsum_s: the
    difference of two large cumulative sums loses the small segments to cancellation."""
    t = x.shape[1]
    strict = jnp.tril(jnp.ones((t, t), bool), -1)[None, :, :, None]  # r > s
    rows = jnp.where(strict, x[:, :, None, :], 0.0)  # [B, r, s, D]
    return jnp.cumsum(rows, axis=1)


def _chunk_step(A, h, xs):
    """One chunk: state `h` `[B, D, N]` in, (state out, y `[B, T, D]` without the D term)."""
    uc, dc, bc, cc = xs  # [B, T, D], [B, T, D], [B, T, N], [B, T, N]
    t = uc.shape[1]
    x = dc * uc
    seg = _segsum(dc)  # [B, T, T, D], >= 0 for softplus deltas
    causal = jnp.tril(jnp.ones((t, t), bool))[None, :, :, None, None]
    # Log-space decays exp(A * segment sum): every exponent is a sum over the segment itself,
    # so a large delta * |A| underflows to 0 instead of forming exp(+big) / exp(+big).
    decay = jnp.exp(jnp.where(causal, seg[..., None] * A, -jnp.inf))  # [B, T, T, D, N]
    cb = jnp.einsum("btn,bsn->btsn", cc, bc)
    y = jnp.einsum("btsd,bsd->btd", jnp.einsum("btsn,btsdn->btsd", cb, decay), x)
    cum = seg[:, :, 0] + dc[:, :1]  # [B, T, D]: sum_{r<=t} delta_r
    y = y + jnp.einsum("btn,btdn,bdn->btd", cc, jnp.exp(cum[..., None] * A), h)
    to_end = decay[:, -1]  # [B, T, D, N]: exp(A * sum_{r=s+1}^{T-1} delta_r)
    h = jnp.exp(cum[:, -1, :, None] * A) * h + jnp.einsum("bsdn,bsn,bsd->bdn", to_end, bc, x)
    return h, y


def _time_major_chunks(x, t):
    """`[B, L, K]` -> `[L/T, T, B, K]`, zero-padded at the end to whole chunks of T: a
    padded step has delta = u = 0, so it leaves the state alone and its output is dropped."""
    b, l, k = x.shape
    nc = -(-l // t)
    x = jnp.pad(x, ((0, 0), (0, nc * t - l), (0, 0)))
    return x.reshape(b, nc, t, k).transpose(1, 2, 0, 3)


def _sequential(u, delta, A, B, C, D, chunk):
    b, l, d = u.shape
    uf, df, Af, Bf, Cf, Df = _f32(u, delta, A, B, C, D)
    t = min(chunk, l)

    def step(h, xs):
        u_t, d_t, b_t, c_t = xs
        h = jnp.exp(d_t[..., None] * Af) * h + (d_t * u_t)[..., None] * b_t[:, None, :]
        # a dot, not (h * c).sum(-1): XLA:CPU runs that minor-axis reduce ~5x slower
        return h, jnp.einsum("bdn,bn->bd", h, c_t)

    # A scan of chunk scans, each chunk rematerialised in the backward pass: autodiff saves
    # the [B, D, N] state once per chunk instead of once per step.
    @functools.partial(jax.checkpoint, prevent_cse=False)  # inside a scan CSE cannot undo it
    def chunk_scan(h, xs):
        return lax.scan(step, h, xs)

    h0 = jnp.zeros((b, *A.shape), jnp.float32)
    _, ys = lax.scan(chunk_scan, h0, tuple(_time_major_chunks(x, t) for x in (uf, df, Bf, Cf)))
    y = ys.reshape(-1, b, d)[:l].transpose(1, 0, 2)
    return (y + Df * uf).astype(u.dtype)


def _chunked(u, delta, A, B, C, D, chunk):
    b, l, d = u.shape
    uf, df, Af, Bf, Cf, Df = _f32(u, delta, A, B, C, D)
    t = min(chunk, l)
    chunks = lambda x: _time_major_chunks(x, t).transpose(0, 2, 1, 3)  # [L/T, B, T, K]
    # Rematerialise each chunk in the backward pass: autodiff of the scan then saves only
    # the [B, D, N] carry per chunk, not the chunk's [B, T, T, D, N] decays.
    step = jax.checkpoint(lambda h, xs: _chunk_step(Af, h, xs), prevent_cse=False)
    h0 = jnp.zeros((b, *A.shape), jnp.float32)
    _, ys = lax.scan(step, h0, tuple(chunks(x) for x in (uf, df, Bf, Cf)))
    y = jnp.moveaxis(ys, 0, 1).reshape(b, -1, d)[:, :l]
    return (y + Df * uf).astype(u.dtype)


def selective_scan(u, delta, A, B, C, D, *, impl: str = "auto", chunk: int = DEFAULT_CHUNK):
    """Mamba's selective scan, ZOH-discretised (see the module docstring for the recurrence).

    Args:
      u: `[B, L, D]` inputs (batch, sequence, channels).
      delta: `[B, L, D]` step sizes (Mamba: softplus of a projection, so > 0).
      A: `[D, N]` continuous state matrix, diagonal per channel (Mamba: -exp(A_log) < 0).
      B, C: `[B, L, N]` input and output projections of the state, per position.
      D: `[D]` skip connection.
      impl: "auto" (`jaxseg.ops.platform_choices(...)["scan_impl"]`: "chunked" on TPU,
        "sequential" elsewhere, the fastest measured on XLA:CPU: docs/kernels.md),
        "chunked", "associative" or "sequential".
      chunk: T, static: the chunk length of "chunked", the checkpoint interval of
        "sequential" (L need not be a multiple; the tail chunk is zero-padded).

    Returns:
      y `[B, L, D]` in `u.dtype`; computed in float32.

    Peak temporary memory, in float32 words beyond inputs and output (forward; forward +
    backward in brackets); the constants are XLA:CPU's measured temp buffers:
      - "associative": `jax.lax.associative_scan` over the pairs (exp(delta A), delta B u),
        each `[B, L, D, N]`: ~`5 B L D N` [~`13 B L D N`: every level's residuals].
      - "chunked" (the Mamba-2 / SSD form): per chunk, intra-chunk outputs from log-space
        segment sums `[B, T, T, D]` and decays exp(A * segsum) `[B, T, T, D, N]`, the
        carried-in state's contribution, and the state passed on; a `lax.scan` carries the
        `[B, D, N]` state between chunks: ~`1-3 B T^2 D N` + a few `B L D`, bounded by T,
        not L. [Each chunk
        is recomputed in the backward pass (`jax.checkpoint`): + `B (L/T) D N` saved
        states.] Work ~`3 B L T D N` multiply-adds, T times the recurrence's: with Mamba-1's
        per-(channel, state) A the decays are not shared across N, so they are elementwise
        work, not the matmuls of Mamba-2's scalar A.
      - "sequential": a `lax.scan` over L, in chunks of T steps each rematerialised in the
        backward pass: `B D N` [+ `B (L/T) D N` saved states + `B T D N` per chunk]; L
        serial steps.
    """
    _check(u, delta, A, B, C, D)
    if not isinstance(chunk, int) or isinstance(chunk, bool) or chunk < 1:
        raise ValueError(f"selective_scan: chunk must be a positive int; got {chunk!r}.")
    impl = resolve_impl("selective_scan", impl, SCAN_IMPLS, IMPL_AUTO["scan_impl"])
    if impl == "chunked":
        return _chunked(u, delta, A, B, C, D, chunk)
    if impl == "associative":
        return _associative(u, delta, A, B, C, D)
    return _sequential(u, delta, A, B, C, D, chunk)
