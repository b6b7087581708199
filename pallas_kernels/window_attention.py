"""Fused multi-head window self-attention as a Pallas TPU kernel, forward and backward.

    out = window_attention(q, k, v, bias=None, mask=None, *, block_sizes=None, interpret=False)
    ref = window_attention_reference(q, k, v, bias=None, mask=None)   # the same in plain JAX

Shapes (W windows, H heads, N query and M key tokens per window, D head dim; channels-last
inside a window; M = N for plain windows, M > N for halo key blocks or routed key windows;
any M >= 1 works):
  q        `[W, H, N, D]`, float32 or bfloat16
  k, v     `[W, H, M, D]`, q's dtype
  bias     `[H, N, M]` or None: added to the logits of every window (relative position bias)
  mask     `[Wi, N, M]` or None: additive (0 / large negative); window w uses `mask[w % Wi]`
  out      `[W, H, N, D]` in q's dtype

The logits are `q @ k^T` UNSCALED (jaxseg's contract: the caller scales q by `D**-0.5`).
Softmax is computed in float32 in VMEM; every matmul accumulates in float32
(`preferred_element_type=float32`); in bf16 the probabilities are rounded to bf16 before the
`p @ v` matmul (the same rounding as jaxseg's XLA path).

Layout and tiling (see docs/kernels.md for the numbers):
  * N and M are padded to Np and Mp, multiples of the sublane tile (8 rows for f32, 16 for
    bf16), so every block's last two axes are whole (sublane, lane) tiles or the full array
    extent. The padded keys get logit `PAD_LOGIT` (more negative than any user mask, so they
    never get weight even in a row the user mask empties); padded query rows are sliced off.
    The key axis is the lane axis of the logits `[Np, Mp]` and is NOT padded to 128 in HBM:
    Mosaic pads values to whole vregs internally anyway, so HBM padding would only add
    traffic.
  * Grid `(H, W / bw)`, heads outermost: `bw` windows per grid step (a `fori_loop` over them
    inside the kernel). The bias BlockSpec's index map ignores the window index, so
    consecutive steps ask for the same bias block and the pipeline fetches it once per head,
    never per window. The mask block holds `bw` consecutive windows; the mask is tiled in
    XLA to `lcm(Wi, bw)` windows (usually no copy: Wi is a multiple of bw) so the block
    index is `j % (lcm / bw)`.
  * M != N changes only block shapes: q/o/dq `(bw, 1, Np, D)`, k/v/dk/dv `(bw, 1, Mp, D)`,
    bias and d(bias) `(1, Np, Mp)`, mask `(bw, Np, Mp)`. Routed-window masks differ per
    window (Wi = W), so every step fetches its own mask block.
  * Forward: both grid axes "parallel".
  * Backward: ONE fused kernel recomputes the softmax of each window (it fits in VMEM whole,
    so no log-sum-exp residual is needed) and writes dq, dk, dv; `delta = rowsum(p * dp)`
    (= rowsum(do * o)) is formed in f32 in-kernel, so no forward output is saved either.
    d(bias) is summed over windows IN the kernel: its output block index ignores the window
    index, so it stays resident in VMEM while the window axis (innermost) walks, and is
    written back once per head. That makes the window axis "arbitrary" (sequential) in the
    backward when a bias is given; heads stay "parallel" (megacore splits heads). Chosen over
    per-block partials summed in XLA, which would write `W/bw * H * Np * Mp` f32 to HBM.
  * The mask is a constant: gradients do not flow into it (`lax.stop_gradient`).

`interpret`: False (compile for TPU), True (the Pallas TPU interpreter with default
`pltpu.InterpretParams()`), or a `pltpu.InterpretParams(...)` instance (e.g.
`detect_races=True`). On a machine without a TPU only the interpreter runs.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

from pallas_kernels._common import (
    PAD_LOGIT,
    VMEM_BUDGET_BYTES,
    attention_reference,
    fit_block,
    round_up,
    sublane_tile,
    vmem_bytes,
)

__all__ = [
    "BlockSizes",
    "window_attention",
    "window_attention_reference",
    "padded_tokens",
    "vmem_bytes_per_step",
]

# Block-size rule constants (documented in BlockSizes.get_default).
TARGET_ROWS_PER_STEP = 1024  # tokens per grid step: amortises the ~0.35 us fixed step cost
MAX_BLOCK_WINDOWS = 32  # bound on the unrolled in-kernel window loop
VMEM_TARGET_BYTES = VMEM_BUDGET_BYTES // 2  # half the 16 MiB budget: headroom for Mosaic scratch

_TRANS_B = (((1,), (1,)), ((), ()))  # contract the last axis of both: a @ b^T


def padded_tokens(n: int, dtype) -> int:
    """Np: N rounded up to the sublane tile of `dtype` (8 for f32, 16 for bf16)."""
    return round_up(n, sublane_tile(dtype))


def vmem_bytes_per_step(
    bw: int,
    np_: int,
    d: int,
    dtype,
    *,
    backward: bool,
    has_bias: bool = True,
    has_mask: bool = True,
    bias_dtype=jnp.float32,
    mask_dtype=jnp.float32,
    mp: int | None = None,
) -> int:
    """Estimated VMEM bytes of one grid step with `bw` windows of `np_` padded query and `mp`
    (default `np_`) padded key tokens.

    Counts the pipeline's double-buffered blocks (q, k, v, o; or q, k, v, do, dq, dk, dv),
    the bias/mask blocks, the dbias accumulator, and the f32 per-window temporaries
    (s, p; plus dp, ds, the dbias carry and the transposes p^T, ds^T in the backward).
    Temporaries are counted once because the in-kernel loop handles one window at a time."""
    mp = np_ if mp is None else mp
    tile_q, tile_k = vmem_bytes((np_, d), dtype), vmem_bytes((mp, d), dtype)
    nm_f32 = vmem_bytes((np_, mp), jnp.float32)
    # fwd: q, o and k, v; bwd: q, do, dq and k, v, dk, dv.
    total = 2 * bw * ((3 * tile_q + 4 * tile_k) if backward else (2 * tile_q + 2 * tile_k))
    if has_bias:
        total += 2 * vmem_bytes((np_, mp), bias_dtype)
        if backward:
            total += 2 * nm_f32  # the resident dbias output block
    if has_mask:
        total += 2 * bw * vmem_bytes((np_, mp), mask_dtype)
    if backward:
        total += 5 * nm_f32 + 2 * vmem_bytes((mp, np_), jnp.float32)
    else:
        total += 2 * nm_f32
    return total


@dataclasses.dataclass(frozen=True)
class BlockSizes:
    """Windows per grid step of the forward and of the backward kernel.

    Numerics do not depend on these (each window is computed whole); speed and VMEM do.
    Both must be powers of two (so W is padded to one common multiple).
    """

    block_windows: int
    block_windows_bwd: int

    def __post_init__(self):
        for name in ("block_windows", "block_windows_bwd"):
            b = getattr(self, name)
            if not isinstance(b, int) or b < 1 or b & (b - 1):
                raise ValueError(f"BlockSizes.{name} must be a positive power of two; got {b!r}.")

    @classmethod
    def get_default(
        cls,
        num_windows: int,
        heads: int,
        n: int,
        head_dim: int,
        dtype,
        *,
        has_bias: bool = True,
        has_mask: bool = True,
        windows_per_image: int = 1,
        vmem_target: int = VMEM_TARGET_BYTES,
        m: int | None = None,
    ) -> BlockSizes:
        """The documented rule, applied separately to forward and backward (`m`: key tokens
        per window, default `n`):

        1. start from the smallest power of two `bw` with `bw * Np >= 1024` query tokens per
           step (the fixed cost of a grid step, ~0.35 us, is then small against its work),
           at most 32 (the in-kernel window loop is unrolled);
        2. halve `bw` while the step's VMEM estimate (`vmem_bytes_per_step`) exceeds 8 MiB,
           half of the 16 MiB scoped-VMEM budget (headroom for Mosaic's internal scratch);
        3. cap `bw` at the largest power of two <= num_windows so a small call does not pad
           many empty windows.
        `heads`, `windows_per_image` are accepted for future rules (e.g. keeping >= 2 parallel
        steps per core); the mask is tiled to lcm(Wi, bw) windows, which is free when Wi is a
        multiple of bw, as it is for every power-of-two window grid.
        """
        del heads, windows_per_image
        np_ = padded_tokens(n, dtype)
        mp = padded_tokens(n if m is None else m, dtype)

        def pick(backward):
            bw = min(
                MAX_BLOCK_WINDOWS, 1 << max(0, math.ceil(math.log2(TARGET_ROWS_PER_STEP / np_)))
            )
            while (
                bw > 1
                and vmem_bytes_per_step(
                    bw,
                    np_,
                    head_dim,
                    dtype,
                    backward=backward,
                    has_bias=has_bias,
                    has_mask=has_mask,
                    mp=mp,
                )
                > vmem_target
            ):
                bw //= 2
            return fit_block(bw, num_windows, power_of_two=True)

        return cls(block_windows=pick(False), block_windows_bwd=pick(True))


# ----------------------------------------------------------------------------- kernels
def _softmax_parts(q, k, bias, mask_w, m_valid):
    """Logits of one window, f32 [Np, Mp]: their exp (unnormalised p) and row sums."""
    s = lax.dot_general(q, k, _TRANS_B, preferred_element_type=jnp.float32)
    if bias is not None:
        s = s + bias
    if mask_w is not None:
        s = s + mask_w
    if m_valid < s.shape[-1]:
        col = lax.broadcasted_iota(jnp.int32, s.shape, 1)
        s = jnp.where(col < m_valid, s, PAD_LOGIT)
    m = jnp.max(s, axis=-1, keepdims=True)
    e = jnp.exp(s - m)
    return e, jnp.sum(e, axis=-1, keepdims=True)


def _unpack(refs, has_bias, has_mask):
    q_ref, k_ref, v_ref, *rest = refs
    bias_ref = rest.pop(0) if has_bias else None
    mask_ref = rest.pop(0) if has_mask else None
    return q_ref, k_ref, v_ref, bias_ref, mask_ref, rest


def _fwd_kernel(*refs, has_bias, has_mask, m_valid):
    q_ref, k_ref, v_ref, bias_ref, mask_ref, (o_ref,) = _unpack(refs, has_bias, has_mask)
    bw = q_ref.shape[0]
    # The head's bias block is read from VMEM once per step and reused by all bw windows.
    bias = bias_ref[0].astype(jnp.float32) if has_bias else None

    def body(i, carry):
        mask_w = mask_ref[i].astype(jnp.float32) if has_mask else None
        v = v_ref[i, 0]
        e, l = _softmax_parts(q_ref[i, 0], k_ref[i, 0], bias, mask_w, m_valid)
        p = e / l  # normalise before the cast, as the reference does
        o = jnp.dot(p.astype(v.dtype), v, preferred_element_type=jnp.float32)
        o_ref[i, 0] = o.astype(o_ref.dtype)
        return carry

    lax.fori_loop(0, bw, body, 0, unroll=True)


def _bwd_kernel(*refs, has_bias, has_mask, m_valid):
    q_ref, k_ref, v_ref, bias_ref, mask_ref, rest = _unpack(refs, has_bias, has_mask)
    do_ref, dq_ref, dk_ref, dv_ref, *dbias_ref = rest
    bw = q_ref.shape[0]
    bias = bias_ref[0].astype(jnp.float32) if has_bias else None

    if has_bias:
        # dbias's block index ignores the window axis: it stays in VMEM across the window
        # steps of one head (window axis "arbitrary") and is zeroed when a head starts.
        @pl.when(pl.program_id(1) == 0)
        def _init():
            dbias_ref[0][...] = jnp.zeros(dbias_ref[0].shape, jnp.float32)

    def body(i, dbias_acc):
        q, k, v, do = q_ref[i, 0], k_ref[i, 0], v_ref[i, 0], do_ref[i, 0]
        mask_w = mask_ref[i].astype(jnp.float32) if has_mask else None
        e, l = _softmax_parts(q, k, bias, mask_w, m_valid)
        p = e / l  # [Np, Mp] f32
        pt = p.T  # transpose in f32 (32-bit transposes are the native XLU case)
        dv = jnp.dot(pt.astype(do.dtype), do, preferred_element_type=jnp.float32)
        dp = lax.dot_general(do, v, _TRANS_B, preferred_element_type=jnp.float32)
        delta = jnp.sum(p * dp, axis=-1, keepdims=True)  # = rowsum(do * o), in f32
        ds = p * (dp - delta)  # d(logits); padded keys have p == 0 so ds == 0 there
        dq = jnp.dot(ds.astype(k.dtype), k, preferred_element_type=jnp.float32)
        dk = jnp.dot(ds.T.astype(q.dtype), q, preferred_element_type=jnp.float32)
        dq_ref[i, 0] = dq.astype(dq_ref.dtype)
        dk_ref[i, 0] = dk.astype(dk_ref.dtype)
        dv_ref[i, 0] = dv.astype(dv_ref.dtype)
        return dbias_acc + ds if has_bias else dbias_acc

    init = jnp.zeros((q_ref.shape[2], k_ref.shape[2]), jnp.float32) if has_bias else 0
    acc = lax.fori_loop(0, bw, body, init, unroll=True)
    if has_bias:
        dbias_ref[0][0] += acc


# ----------------------------------------------------------------------------- pallas calls
def _interpret_arg(interpret):
    if interpret is True:
        return pltpu.InterpretParams()
    return interpret


def _specs(q_shape, mp, bw, has_bias, has_mask, mask_blocks):
    """BlockSpecs on grid (head h, window block j): q-like `[bw, 1, Np, D]`, k-like
    `[bw, 1, Mp, D]`, bias `[1, Np, Mp]` and mask `[bw, Np, Mp]`; returns (in specs of q, k,
    v[, bias][, mask]), the q-like spec and the k-like spec."""
    _, _, np_, d = q_shape
    q_spec = pl.BlockSpec((bw, 1, np_, d), lambda h, j: (j, h, 0, 0))
    k_spec = pl.BlockSpec((bw, 1, mp, d), lambda h, j: (j, h, 0, 0))
    specs = [q_spec, k_spec, k_spec]
    if has_bias:
        specs.append(pl.BlockSpec((1, np_, mp), lambda h, j: (h, 0, 0)))  # once per head
    if has_mask:
        specs.append(pl.BlockSpec((bw, np_, mp), lambda h, j: (j % mask_blocks, 0, 0)))
    return specs, q_spec, k_spec


def _tile_mask(mask, bw):
    """Tile mask [Wi, Np, Mp] to lcm(Wi, bw) windows; returns (tiled, number of bw-blocks)."""
    wi = mask.shape[0]
    L = math.lcm(wi, bw)
    if L != wi:
        mask = jnp.tile(mask, (L // wi, 1, 1))
    return mask, L // bw


def _cost(q, flops_per_window_head, transcendentals, arrays):
    w, h = q.shape[:2]
    if not isinstance(w, int):
        return None  # a symbolic (batch-polymorphic) window count: XLA gets no estimate
    return pl.CostEstimate(
        flops=int(w * h * flops_per_window_head),
        transcendentals=int(w * h * transcendentals),
        bytes_accessed=int(sum(a.size * a.dtype.itemsize for a in arrays)),
    )


def _inputs(q, k, v, bias, mask, bw):
    """The kernel's operands (q, k, v[, bias][, mask tiled to whole blocks]) and their specs."""
    has_bias, has_mask = bias is not None, mask is not None
    args = [q, k, v]
    mask_blocks = 1
    if has_bias:
        args.append(bias)
    if has_mask:
        mask, mask_blocks = _tile_mask(mask, bw)
        args.append(mask)
    return (args, *_specs(q.shape, k.shape[2], bw, has_bias, has_mask, mask_blocks))


def _fwd_call(q, k, v, bias, mask, m_valid, bw, interpret):
    w, h, np_, d = q.shape
    mp = k.shape[2]
    args, in_specs, q_spec, _ = _inputs(q, k, v, bias, mask, bw)
    kernel = functools.partial(
        _fwd_kernel, has_bias=bias is not None, has_mask=mask is not None, m_valid=m_valid
    )
    return pl.pallas_call(
        kernel,
        grid=(h, w // bw),
        in_specs=in_specs,
        out_specs=q_spec,
        out_shape=jax.ShapeDtypeStruct(q.shape, q.dtype),
        compiler_params=pltpu.CompilerParams(dimension_semantics=("parallel", "parallel")),
        cost_estimate=_cost(q, 4 * np_ * mp * d, np_ * mp, args + [q]),
        interpret=_interpret_arg(interpret),
        name="window_attention_fwd",
    )(*args)


def _bwd_call(q, k, v, bias, mask, do, m_valid, bw, interpret):
    w, h, np_, d = q.shape
    mp = k.shape[2]
    has_bias = bias is not None
    args, in_specs, q_spec, k_spec = _inputs(q, k, v, bias, mask, bw)
    args.append(do)
    in_specs.append(q_spec)
    out_specs = [q_spec, k_spec, k_spec]
    out_shape = [
        jax.ShapeDtypeStruct(q.shape, q.dtype),
        jax.ShapeDtypeStruct(k.shape, k.dtype),
        jax.ShapeDtypeStruct(v.shape, v.dtype),
    ]
    if has_bias:
        out_specs.append(pl.BlockSpec((1, np_, mp), lambda h_, j: (h_, 0, 0)))
        out_shape.append(jax.ShapeDtypeStruct((h, np_, mp), jnp.float32))
    kernel = functools.partial(
        _bwd_kernel, has_bias=has_bias, has_mask=mask is not None, m_valid=m_valid
    )
    outs = pl.pallas_call(
        kernel,
        grid=(h, w // bw),
        in_specs=in_specs,
        out_specs=out_specs,
        out_shape=out_shape,
        compiler_params=pltpu.CompilerParams(
            dimension_semantics=("parallel", "arbitrary" if has_bias else "parallel")
        ),
        cost_estimate=_cost(q, 10 * np_ * mp * d, np_ * mp, args + [q, k, v]),
        interpret=_interpret_arg(interpret),
        name="window_attention_bwd",
    )(*args)
    dq, dk, dv, *dbias = outs
    return dq, dk, dv, (dbias[0] if has_bias else None)


@functools.partial(jax.custom_vjp, nondiff_argnums=(5, 6, 7))
def _attention(q, k, v, bias, mask, m_valid, block_sizes, interpret):
    return _fwd_call(q, k, v, bias, mask, m_valid, block_sizes.block_windows, interpret)


def _attention_fwd(q, k, v, bias, mask, m_valid, block_sizes, interpret):
    o = _fwd_call(q, k, v, bias, mask, m_valid, block_sizes.block_windows, interpret)
    return o, (q, k, v, bias, mask)


def _attention_bwd(m_valid, block_sizes, interpret, res, do):
    q, k, v, bias, mask = res
    dq, dk, dv, dbias = _bwd_call(
        q, k, v, bias, mask, do.astype(q.dtype), m_valid, block_sizes.block_windows_bwd, interpret
    )
    if bias is not None:
        dbias = dbias.astype(bias.dtype)
    # The mask is stop_gradient'ed by the public wrapper; its cotangent is zero.
    dmask = None if mask is None else jnp.zeros_like(mask)
    return dq, dk, dv, dbias, dmask


_attention.defvjp(_attention_fwd, _attention_bwd)


# ----------------------------------------------------------------------------- public API
def _check_shapes(q, k, v, bias, mask):
    if (
        q.ndim != 4
        or k.ndim != 4
        or v.shape != k.shape
        or k.shape[:2] + k.shape[3:] != q.shape[:2] + q.shape[3:]
    ):
        raise ValueError(
            "window_attention: q must be [W, H, N, D] and k, v [W, H, M, D] (same W, H, D); "
            f"got q{q.shape} k{k.shape} v{v.shape}."
        )
    _, h, n, _ = q.shape
    m = k.shape[2]
    if bias is not None and bias.shape != (h, n, m):
        raise ValueError(
            f"window_attention: bias must be [H, N, M] = {(h, n, m)}; got {bias.shape}."
        )
    if mask is not None and (mask.ndim != 3 or mask.shape[1:] != (n, m) or mask.shape[0] < 1):
        raise ValueError(
            f"window_attention: mask must be [Wi, N, M] = [Wi, {n}, {m}] with Wi >= 1; "
            f"got {mask.shape}."
        )


def window_attention(
    q,  # [W, H, N, D] float32 or bfloat16
    k,  # [W, H, M, D] in q's dtype
    v,  # [W, H, M, D] in q's dtype
    bias=None,  # [H, N, M] any float dtype, or None
    mask=None,  # [Wi, N, M] additive, or None
    *,
    block_sizes: BlockSizes | None = None,
    interpret: Any = False,
):
    """Multi-head attention inside windows, fused in one Pallas TPU kernel.

    Args:
      q: `[W, H, N, D]` float32 or bfloat16; k, v: `[W, H, M, D]` in q's dtype (M keys per
        window: M = N for self-attention in a window, M != N for halo or routed keys).
        Logits are `q @ k^T` unscaled.
      bias: optional `[H, N, M]` (any float dtype), added to every window's logits;
        differentiable (d(bias) is summed over windows in the backward kernel).
      mask: optional `[Wi, N, M]` additive mask; window w uses `mask[w % Wi]`. Constant:
        no gradient flows into it.
      block_sizes: `BlockSizes`; None -> `BlockSizes.get_default(...)`.
      interpret: False (TPU), True or a `pltpu.InterpretParams` (the TPU interpreter).

    Returns:
      `[W, H, N, D]` in q's dtype.

    Raises:
      ValueError: naming the offending shapes or dtypes.

    Differentiable w.r.t. q, k, v and bias through `jax.custom_vjp` with a Pallas backward.
    `window_attention_reference` is the same contract in plain JAX.
    """
    _check_shapes(q, k, v, bias, mask)
    if q.dtype not in (jnp.float32, jnp.bfloat16) or k.dtype != q.dtype or v.dtype != q.dtype:
        raise ValueError(
            "window_attention: q, k, v must share one dtype, float32 or bfloat16; "
            f"got {q.dtype}, {k.dtype}, {v.dtype}."
        )
    w, h, n, d = q.shape
    m = k.shape[2]
    if block_sizes is None:
        block_sizes = BlockSizes.get_default(
            w,
            h,
            n,
            d,
            q.dtype,
            has_bias=bias is not None,
            has_mask=mask is not None,
            windows_per_image=1 if mask is None else mask.shape[0],
            m=m,
        )
    np_, mp = padded_tokens(n, q.dtype), padded_tokens(m, q.dtype)
    wp = round_up(w, max(block_sizes.block_windows, block_sizes.block_windows_bwd))
    # Padding happens outside the custom_vjp, so autodiff of pad/slice routes the cotangents:
    # padded rows of `do` are zero and the padded part of dbias is sliced away.
    q = jnp.pad(q, ((0, wp - w), (0, 0), (0, np_ - n), (0, 0)))
    k, v = (jnp.pad(a, ((0, wp - w), (0, 0), (0, mp - m), (0, 0))) for a in (k, v))
    if bias is not None:
        bias = jnp.pad(bias, ((0, 0), (0, np_ - n), (0, mp - m)))
    if mask is not None:
        # A mask per window (Wi = W, e.g. routed windows) is padded with the windows, so that
        # it stays a multiple of the block instead of being tiled to lcm(W, bw).
        wi_pad = wp - w if mask.shape[0] == w else 0
        mask = jnp.pad(lax.stop_gradient(mask), ((0, wi_pad), (0, np_ - n), (0, mp - m)))
    out = _attention(q, k, v, bias, mask, m, block_sizes, interpret)
    return out[:w, :, :n]


def window_attention_reference(
    q,  # [W, H, N, D] any float dtype
    k,  # [W, H, M, D]
    v,  # [W, H, M, D]
    bias=None,  # [H, N, M] or None
    mask=None,  # [Wi, N, M] additive, or None
    *,
    logits_fn=None,
    weights_fn=None,
):
    """Plain-JAX window attention with `window_attention`'s contract: f32 logits (+ bias,
    + `mask[w % Wi]`), f32 softmax, weights cast to v's dtype, matmuls accumulated in f32,
    output in q's dtype. Gradients by XLA autodiff (the mask gets one too, unlike the kernel).

    `logits_fn` / `weights_fn`: optional maps of the f32 logits `[W, H, N, M]` before the
    softmax and of the f32 weights before `p @ v` (see `_common.attention_reference`); the
    kernel has no such hooks. Raises ValueError on bad shapes, as the kernel does.
    """
    _check_shapes(q, k, v, bias, mask)
    return attention_reference(q, k, v, bias, mask, logits_fn=logits_fn, weights_fn=weights_fn)
