"""Axial attention as a Pallas TPU kernel: attention along ONE axis of a feature map.

    out = axial_attention(q, k, v, bias=None, *, block_sizes=None, interpret=False)
    ref = axial_attention_reference(q, k, v, bias=None)   # the same in plain JAX

Layout. The kernel sees the attended axis already moved next to the channels:
`q, k, v` are `[R, H, L, D]` where `R` ("rows") folds the batch and every spatial axis
that is not attended, `H` is heads, `L` the length of the attended axis and `D` the
head dim. Moving the axis is a transpose that XLA fuses well, so the caller does it
outside the kernel (jaxseg: `jaxseg.ops.fold_axis_heads` / `unfold_axis_heads`).

Numerics. Logits are `q @ k^T` with NO scaling (callers pre-scale `q`, usually by
`D ** -0.5`), plus an optional per-axis relative bias `[H, L, L]` shared by every row
(callers gather it from a learned table of `2L-1` offsets). Inputs are bf16 or f32;
every matmul accumulates in f32 (`preferred_element_type=f32`) and the softmax runs in
f32. The output has the input dtype.

Tiling (`pallas_kernels._axial_tiling`: the block-size rule of `AxialBlockSizes`, the
per-call plan and the VMEM estimate):
- `L` is padded with zeros to a multiple of the query/key blocks (at least of 8, the
  sublane count) and padded KEYS are masked out of the softmax (logit `PAD_LOGIT`);
  padded query rows are computed and sliced off. `R` is padded to a multiple of
  `block_rows` with zero rows, whose output is sliced off and whose cotangent is
  therefore zero (so they add nothing to d(bias)).
- A grid step handles `block_rows` rows of one head and one (query block, key block)
  pair; the bias block of a head therefore stays in VMEM across consecutive row steps
  (Pallas skips the copy when a block index does not change).
- When the axis fits one key block the softmax is computed directly. When it does not,
  the key-block grid axis is innermost and "arbitrary" and the softmax is flash-style:
  running max `m`, running sum `l` and the output accumulator live in f32 VMEM scratch.

Backward (jax.custom_vjp): as in flash attention the probabilities are recomputed from
the log-sum-exp saved by the forward pass, so no `[L, L]` tensor per row is stored.
Two Pallas kernels: one produces dk, dv (query blocks innermost; it works on the
transposed logits `k q^T` so that no kernel needs an in-kernel transpose), the other dq and
d(bias) (grid: head, query block, row block, key block). d(bias) is summed over rows in
an f32 `[block_q, Lp]` VMEM accumulator that stays resident per (head, query block), so
with a bias that kernel's row axis is "arbitrary" while heads and query blocks stay
"parallel".

This module imports jax only (no jaxseg). `jaxseg.ops` is its one caller.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

from pallas_kernels._axial_tiling import AxialBlockSizes, Plan, make_plan, vmem_bytes
from pallas_kernels._common import PAD_LOGIT, attention_reference

__all__ = [
    "AxialBlockSizes",
    "axial_attention",
    "axial_attention_reference",
    "vmem_bytes",
]

MAX_BIAS_LP = 4096  # with a bias, d(bias) keeps a [block_q, Lp] f32 block resident in VMEM

# --------------------------------------------------------------------------------------
# Kernels
# --------------------------------------------------------------------------------------

_NT = (((1,), (1,)), ((), ()))  # contract the last dims: a @ b^T


def _logits(q, k, bias, key_valid):
    """f32 `[bq, bk]` logits of one row: q `[bq, D]`, k `[bk, D]`."""
    s = lax.dot_general(q, k, _NT, preferred_element_type=jnp.float32)
    if bias is not None:
        s = s + bias
    if key_valid is not None:
        s = jnp.where(key_valid, s, PAD_LOGIT)
    return s


def _key_valid(plan: Plan, k_index):
    """Bool `[bq, bk]` mask of real (unpadded) keys, or None when nothing is padded."""
    if plan.padded_len == plan.length:
        return None
    cols = k_index * plan.block_k + lax.broadcasted_iota(jnp.int32, (plan.block_q, plan.block_k), 1)
    return cols < plan.length


def _fwd_kernel(*refs, plan: Plan, has_bias: bool):
    if has_bias:
        q_ref, k_ref, v_ref, b_ref, o_ref, lse_ref, *scratch = refs
    else:
        q_ref, k_ref, v_ref, o_ref, lse_ref, *scratch = refs
        b_ref = None
    k_index = pl.program_id(3)
    # The bias tile is shared by every row of the step: load and upcast it once.
    bias = b_ref[0].astype(jnp.float32) if has_bias else None
    key_valid = _key_valid(plan, k_index)

    if plan.n_k == 1:
        # The whole axis is one key block: plain softmax, normalised after p @ v
        # ([bq, D] multiplies instead of [bq, bk]).
        def row(r, carry):
            s = _logits(q_ref[r, 0], k_ref[r, 0], bias, key_valid)
            m = jnp.max(s, axis=1, keepdims=True)
            p = jnp.exp(s - m)
            l = jnp.sum(p, axis=1, keepdims=True)
            v = v_ref[r, 0]
            o = lax.dot(p.astype(v.dtype), v, preferred_element_type=jnp.float32)
            o_ref[r, 0] = (o / l).astype(o_ref.dtype)
            lse_ref[r, 0] = m + jnp.log(l)
            return carry

        lax.fori_loop(0, plan.block_rows, row, 0)
        return

    m_ref, l_ref, acc_ref = scratch

    @pl.when(k_index == 0)
    def _init():
        m_ref[...] = jnp.full(m_ref.shape, -jnp.inf, jnp.float32)
        l_ref[...] = jnp.zeros(l_ref.shape, jnp.float32)
        acc_ref[...] = jnp.zeros(acc_ref.shape, jnp.float32)

    def row(r, carry):
        s = _logits(q_ref[r, 0], k_ref[r, 0], bias, key_valid)
        m_prev = m_ref[r]
        m_next = jnp.maximum(m_prev, jnp.max(s, axis=1, keepdims=True))
        # The first key block always holds a real key, so m_next is finite from the
        # first step on and a fully padded later block contributes exp(MASK - m) = 0.
        alpha = jnp.exp(m_prev - m_next)
        p = jnp.exp(s - m_next)
        l_ref[r] = alpha * l_ref[r] + jnp.sum(p, axis=1, keepdims=True)
        v = v_ref[r, 0]
        acc_ref[r] = alpha * acc_ref[r] + lax.dot(
            p.astype(v.dtype), v, preferred_element_type=jnp.float32
        )
        m_ref[r] = m_next
        return carry

    lax.fori_loop(0, plan.block_rows, row, 0)

    @pl.when(k_index == plan.n_k - 1)
    def _finish():
        l = l_ref[...]
        o_ref[:, 0] = (acc_ref[...] / l).astype(o_ref.dtype)
        lse_ref[:, 0] = m_ref[...] + jnp.log(l)


def _probs_and_dlogits(q, k, v, do, lse, di, bias, key_valid):
    """Recompute p = softmax row block from the saved lse and ds = p * (do v^T - di)."""
    s = _logits(q, k, bias, key_valid)
    p = jnp.exp(s - lse)
    dp = lax.dot_general(do, v, _NT, preferred_element_type=jnp.float32)
    ds = p * (dp - di)
    return p, ds


def _dkv_kernel(*refs, plan: Plan, has_bias: bool):
    """dk, dv. Works on TRANSPOSED logits `s^T = k q^T` `[bk, bq_dkv]` so that all four
    matmuls are plain (`a @ b` or `a @ b^T`) and no in-kernel transpose is needed: the
    bias arrives transposed and lse/di arrive as lane-dense rows `[1, bq_dkv]` (both
    prepared in XLA).

    grid (head, row block, key block, query block): query blocks innermost.
    """
    if has_bias:
        q_ref, k_ref, v_ref, bt_ref, lse_ref, di_ref, do_ref, dk_ref, dv_ref, *scratch = refs
    else:
        q_ref, k_ref, v_ref, lse_ref, di_ref, do_ref, dk_ref, dv_ref, *scratch = refs
        bt_ref = None
    k_index = pl.program_id(2)
    q_index = pl.program_id(3)
    bias_t = bt_ref[0].astype(jnp.float32) if has_bias else None  # [bk, bq_dkv]
    bq = plan.block_q_dkv
    key_valid = None
    if plan.padded_len != plan.length:
        # Padded keys are ROWS of s^T here.
        keys = k_index * plan.block_k + lax.broadcasted_iota(jnp.int32, (plan.block_k, bq), 0)
        key_valid = keys < plan.length

    def grads(r):
        q, k, v, do = q_ref[r, 0], k_ref[r, 0], v_ref[r, 0], do_ref[r, 0]
        s_t = _logits(k, q, bias_t, key_valid)  # [bk, bq] = (q k^T)^T
        p_t = jnp.exp(s_t - lse_ref[r, 0])  # lse row [1, bq] broadcasts
        dp_t = lax.dot_general(v, do, _NT, preferred_element_type=jnp.float32)
        ds_t = p_t * (dp_t - di_ref[r, 0])
        dv = lax.dot(p_t.astype(do.dtype), do, preferred_element_type=jnp.float32)
        dk = lax.dot(ds_t.astype(q.dtype), q, preferred_element_type=jnp.float32)
        return dk, dv

    if plan.n_q_dkv == 1:

        def row(r, carry):
            dk, dv = grads(r)
            dk_ref[r, 0] = dk.astype(dk_ref.dtype)
            dv_ref[r, 0] = dv.astype(dv_ref.dtype)
            return carry

        lax.fori_loop(0, plan.block_rows, row, 0)
        return

    dk_acc, dv_acc = scratch

    @pl.when(q_index == 0)
    def _init():
        dk_acc[...] = jnp.zeros(dk_acc.shape, jnp.float32)
        dv_acc[...] = jnp.zeros(dv_acc.shape, jnp.float32)

    def row(r, carry):
        dk, dv = grads(r)
        dk_acc[r] += dk
        dv_acc[r] += dv
        return carry

    lax.fori_loop(0, plan.block_rows, row, 0)

    @pl.when(q_index == plan.n_q_dkv - 1)
    def _finish():
        dk_ref[:, 0] = dk_acc[...].astype(dk_ref.dtype)
        dv_ref[:, 0] = dv_acc[...].astype(dv_ref.dtype)


def _dq_kernel(*refs, plan: Plan, has_bias: bool):
    # grid (head, query block, row block, key block): key blocks innermost, rows next so
    # that the [block_q, Lp] d(bias) block of (head, query block) stays resident.
    if has_bias:
        (q_ref, k_ref, v_ref, b_ref, lse_ref, di_ref, do_ref, dq_ref, db_ref, *scratch) = refs
        *scratch, db_acc = scratch
    else:
        q_ref, k_ref, v_ref, lse_ref, di_ref, do_ref, dq_ref, *scratch = refs
        b_ref = db_ref = db_acc = None
    r_index = pl.program_id(2)
    k_index = pl.program_id(3)
    bias = b_ref[0].astype(jnp.float32) if has_bias else None
    key_valid = _key_valid(plan, k_index)
    multi_k = plan.n_k > 1
    dq_acc = scratch[0] if multi_k else None

    if has_bias:
        # d(bias) rows of this query block are resident: zero them at the first step.
        @pl.when((r_index == 0) & (k_index == 0))
        def _init_db():
            db_acc[...] = jnp.zeros(db_acc.shape, jnp.float32)

    if multi_k:

        @pl.when(k_index == 0)
        def _init_dq():
            dq_acc[...] = jnp.zeros(dq_acc.shape, jnp.float32)

    def row(r, ds_sum):
        q, k, v, do = q_ref[r, 0], k_ref[r, 0], v_ref[r, 0], do_ref[r, 0]
        _, ds = _probs_and_dlogits(q, k, v, do, lse_ref[r, 0], di_ref[r, 0], bias, key_valid)
        dq = lax.dot(ds.astype(k.dtype), k, preferred_element_type=jnp.float32)
        if multi_k:
            dq_acc[r] += dq
        else:
            dq_ref[r, 0] = dq.astype(dq_ref.dtype)
        return ds_sum + ds if has_bias else ds_sum

    init = jnp.zeros((plan.block_q, plan.block_k), jnp.float32) if has_bias else 0
    ds_sum = lax.fori_loop(0, plan.block_rows, row, init)

    if has_bias:
        k_start = pl.multiple_of(k_index * plan.block_k, plan.block_k)
        db_acc[:, pl.ds(k_start, plan.block_k)] += ds_sum

        # The row-block count comes from the grid, not the plan: with a batch-polymorphic
        # export it is symbolic, which a kernel cannot hold as a constant.
        @pl.when((r_index == pl.num_programs(2) - 1) & (k_index == plan.n_k - 1))
        def _write_db():
            db_ref[0] = db_acc[...].astype(db_ref.dtype)

    if multi_k:

        @pl.when(k_index == plan.n_k - 1)
        def _write_dq():
            dq_ref[:, 0] = dq_acc[...].astype(dq_ref.dtype)


# --------------------------------------------------------------------------------------
# pallas_call wrappers (inputs already padded to [Rp, H, Lp, D] / [H, Lp, Lp])
# --------------------------------------------------------------------------------------


def _cost(plan: Plan, q, n_matmuls: int, nbytes: int) -> pl.CostEstimate | None:
    _, heads, padded, d = q.shape
    if not isinstance(plan.padded_rows, int) or not isinstance(nbytes, int):
        return None  # a symbolic (batch-polymorphic) row count: XLA gets no estimate
    flops = 2 * n_matmuls * plan.padded_rows * heads * padded * padded * d
    return pl.CostEstimate(
        flops=flops,
        transcendentals=plan.padded_rows * heads * padded * padded,
        bytes_accessed=nbytes,
    )


def _nbytes(*arrays) -> int:
    return sum(a.size * a.dtype.itemsize for a in arrays if a is not None)


def _forward(q, k, v, bias, plan: Plan):
    rp, heads, padded, d = q.shape
    br, bq, bk = plan.block_rows, plan.block_q, plan.block_k
    has_bias = bias is not None
    grid = (heads, plan.n_r, plan.n_q, plan.n_k)
    q_spec = pl.BlockSpec((br, 1, bq, d), lambda h, r, i, j: (r, h, i, 0))
    kv_spec = pl.BlockSpec((br, 1, bk, d), lambda h, r, i, j: (r, h, j, 0))
    lse_spec = pl.BlockSpec((br, 1, bq, 1), lambda h, r, i, j: (r, h, i, 0))
    in_specs = [q_spec, kv_spec, kv_spec]
    args = [q, k, v]
    if has_bias:
        in_specs.append(pl.BlockSpec((1, bq, bk), lambda h, r, i, j: (h, i, j)))
        args.append(bias)
    scratch = []
    if plan.n_k > 1:
        scratch = [
            pltpu.VMEM((br, bq, 1), jnp.float32),
            pltpu.VMEM((br, bq, 1), jnp.float32),
            pltpu.VMEM((br, bq, d), jnp.float32),
        ]
    out_shape = (
        jax.ShapeDtypeStruct(q.shape, q.dtype),
        jax.ShapeDtypeStruct((rp, heads, padded, 1), jnp.float32),
    )
    return pl.pallas_call(
        functools.partial(_fwd_kernel, plan=plan, has_bias=has_bias),
        grid_spec=pltpu.PrefetchScalarGridSpec(
            num_scalar_prefetch=0,
            grid=grid,
            in_specs=in_specs,
            out_specs=[q_spec, lse_spec],
            scratch_shapes=scratch,
        ),
        out_shape=out_shape,
        compiler_params=pltpu.CompilerParams(
            dimension_semantics=("parallel", "parallel", "parallel", "arbitrary")
        ),
        cost_estimate=_cost(plan, q, 2, _nbytes(q, k, v, bias, q, q[..., :1])),
        interpret=plan.interpret,
        name="axial_attention_fwd",
    )(*args)


def _backward_dkv(q, k, v, bias, lse, di, do, plan: Plan):
    rp, heads, padded, d = q.shape
    br, bk, bq = plan.block_rows, plan.block_k, plan.block_q_dkv
    has_bias = bias is not None
    grid = (heads, plan.n_r, plan.n_k, plan.n_q_dkv)
    q_spec = pl.BlockSpec((br, 1, bq, d), lambda h, r, j, i: (r, h, i, 0))
    kv_spec = pl.BlockSpec((br, 1, bk, d), lambda h, r, j, i: (r, h, j, 0))
    row_spec = pl.BlockSpec((br, 1, 1, bq), lambda h, r, j, i: (r, h, 0, i))
    in_specs = [q_spec, kv_spec, kv_spec]
    args = [q, k, v]
    if has_bias:
        in_specs.append(pl.BlockSpec((1, bk, bq), lambda h, r, j, i: (h, j, i)))
        args.append(jnp.swapaxes(bias, 1, 2))  # [H, key, query]
    # [R, H, Lp, 1] -> [R, H, 1, Lp] is a free reshape: queries move to the lane axis.
    in_specs += [row_spec, row_spec, q_spec]
    args += [lse.reshape(rp, heads, 1, padded), di.reshape(rp, heads, 1, padded), do]
    scratch = []
    if plan.n_q_dkv > 1:
        scratch = [pltpu.VMEM((br, bk, d), jnp.float32), pltpu.VMEM((br, bk, d), jnp.float32)]
    return pl.pallas_call(
        functools.partial(_dkv_kernel, plan=plan, has_bias=has_bias),
        grid_spec=pltpu.PrefetchScalarGridSpec(
            num_scalar_prefetch=0,
            grid=grid,
            in_specs=in_specs,
            out_specs=[kv_spec, kv_spec],
            scratch_shapes=scratch,
        ),
        out_shape=(jax.ShapeDtypeStruct(k.shape, k.dtype), jax.ShapeDtypeStruct(v.shape, v.dtype)),
        compiler_params=pltpu.CompilerParams(
            dimension_semantics=("parallel", "parallel", "parallel", "arbitrary")
        ),
        cost_estimate=_cost(plan, q, 4, _nbytes(q, k, v, bias, lse, di, do, k, v)),
        interpret=plan.interpret,
        name="axial_attention_bwd_dkv",
    )(*args)


def _backward_dq(q, k, v, bias, lse, di, do, plan: Plan):
    rp, heads, padded, d = q.shape
    br, bq, bk = plan.block_rows, plan.block_q, plan.block_k
    has_bias = bias is not None
    grid = (heads, plan.n_q, plan.n_r, plan.n_k)
    q_spec = pl.BlockSpec((br, 1, bq, d), lambda h, i, r, j: (r, h, i, 0))
    kv_spec = pl.BlockSpec((br, 1, bk, d), lambda h, i, r, j: (r, h, j, 0))
    vec_spec = pl.BlockSpec((br, 1, bq, 1), lambda h, i, r, j: (r, h, i, 0))
    in_specs = [q_spec, kv_spec, kv_spec]
    args = [q, k, v]
    if has_bias:
        in_specs.append(pl.BlockSpec((1, bq, bk), lambda h, i, r, j: (h, i, j)))
        args.append(bias)
    in_specs += [vec_spec, vec_spec, q_spec]
    args += [lse, di, do]
    out_specs = [q_spec]
    out_shape = [jax.ShapeDtypeStruct(q.shape, q.dtype)]
    scratch = []
    if plan.n_k > 1:
        scratch.append(pltpu.VMEM((br, bq, d), jnp.float32))
    if has_bias:
        # A [block_q, Lp] d(bias) block per (head, query block), resident while the
        # row and key blocks iterate; summed over rows in an f32 scratch.
        out_specs.append(pl.BlockSpec((1, bq, padded), lambda h, i, r, j: (h, i, 0)))
        out_shape.append(jax.ShapeDtypeStruct(bias.shape, bias.dtype))
        scratch.append(pltpu.VMEM((bq, padded), jnp.float32))
        # The d(bias) block is revisited across row steps, so rows are "arbitrary";
        # heads and query blocks own disjoint d(bias) blocks and may run in parallel.
        semantics = ("parallel", "parallel", "arbitrary", "arbitrary")
    else:
        semantics = ("parallel", "parallel", "parallel", "arbitrary")
    outs = pl.pallas_call(
        functools.partial(_dq_kernel, plan=plan, has_bias=has_bias),
        grid_spec=pltpu.PrefetchScalarGridSpec(
            num_scalar_prefetch=0,
            grid=grid,
            in_specs=in_specs,
            out_specs=out_specs,
            scratch_shapes=scratch,
        ),
        out_shape=tuple(out_shape),
        compiler_params=pltpu.CompilerParams(dimension_semantics=semantics),
        cost_estimate=_cost(plan, q, 3, _nbytes(q, k, v, bias, lse, di, do, q, bias)),
        interpret=plan.interpret,
        name="axial_attention_bwd_dq",
    )(*args)
    return (outs[0], outs[1]) if has_bias else (outs[0], None)


@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def _axial_padded(q, k, v, bias, plan: Plan):
    return _forward(q, k, v, bias, plan)[0]


def _axial_padded_fwd(q, k, v, bias, plan: Plan):
    o, lse = _forward(q, k, v, bias, plan)
    return o, (q, k, v, bias, o, lse)


def _axial_padded_bwd(plan: Plan, residuals, do):
    q, k, v, bias, o, lse = residuals
    # di_i = sum_d o_id * do_id = sum_j p_ij dp_ij: the softmax-backward row term.
    di = jnp.sum(o.astype(jnp.float32) * do.astype(jnp.float32), axis=-1, keepdims=True)
    do = do.astype(q.dtype)
    dk, dv = _backward_dkv(q, k, v, bias, lse, di, do, plan)
    dq, dbias = _backward_dq(q, k, v, bias, lse, di, do, plan)
    return dq, dk, dv, dbias


_axial_padded.defvjp(_axial_padded_fwd, _axial_padded_bwd)


# --------------------------------------------------------------------------------------
# Public entry point and reference
# --------------------------------------------------------------------------------------


def _check_shapes(q, k, v, bias):
    if q.ndim != 4 or k.shape != q.shape or v.shape != q.shape:
        raise ValueError(
            "axial_attention: q, k, v must all be [R, H, L, D] (rows, heads, L, head dim) with "
            f"the same shape; got q{tuple(q.shape)} k{tuple(k.shape)} v{tuple(v.shape)}."
        )
    _, heads, length, _ = q.shape
    if bias is not None and bias.shape != (heads, length, length):
        raise ValueError(
            f"axial_attention: bias must be [H, L, L] = {(heads, length, length)}; "
            f"got {tuple(bias.shape)}."
        )


def axial_attention(
    q,  # [R, H, L, D] float32 or bfloat16
    k,  # [R, H, L, D] in q's dtype
    v,  # [R, H, L, D] in q's dtype
    bias=None,  # [H, L, L] any float dtype, or None
    *,
    block_sizes: AxialBlockSizes | None = None,
    interpret: bool | Any = False,
):
    """Multi-head softmax attention along one axis, as Pallas TPU kernels.

    Args:
      q, k, v: `[R, H, L, D]` bf16 or f32 (rows, heads, attended-axis length, head
        dim). Logits are `q @ k^T` unscaled: pre-scale `q`.
      bias: optional `[H, L, L]` (any float dtype) added to the logits of every row.
        Differentiable; its gradient is summed over rows and has its dtype.
      block_sizes: `AxialBlockSizes`; default `AxialBlockSizes.get_default(R, H, L, D, dtype)`.
      interpret: False to compile for TPU (Mosaic); True or a `pltpu.InterpretParams`
        to run in the Pallas TPU interpreter (CPU). `pltpu.force_tpu_interpret_mode()`
        also works with `interpret=False`.

    Returns:
      `[R, H, L, D]` in the dtype of `q`. Differentiable in q, k, v and bias
      (`jax.custom_vjp` with Pallas backward kernels). `axial_attention_reference` is the
      same contract in plain JAX.

    Raises:
      ValueError: naming the offending shapes, dtypes or block sizes.
    """
    _check_shapes(q, k, v, bias)
    if not (q.dtype == k.dtype == v.dtype) or q.dtype not in (jnp.float32, jnp.bfloat16):
        raise ValueError(
            "axial_attention: q, k, v must share one dtype, float32 or bfloat16; got "
            f"{q.dtype}, {k.dtype}, {v.dtype}."
        )
    if bias is not None and not jnp.issubdtype(bias.dtype, jnp.floating):
        raise ValueError(f"axial_attention: bias must be floating point; got {bias.dtype}.")
    rows, heads, length, d = q.shape
    if block_sizes is None:
        block_sizes = AxialBlockSizes.get_default(
            rows, heads, length, d, q.dtype, has_bias=bias is not None
        )
    if interpret is True:
        interpret = pltpu.InterpretParams()
    plan = make_plan(rows, length, block_sizes, interpret)
    if bias is not None and plan.padded_len > MAX_BIAS_LP:
        raise ValueError(
            f"axial_attention: with a bias the axis is limited to {MAX_BIAS_LP} tokens after "
            f"padding (d(bias) keeps a [block_q, Lp] f32 block in VMEM); got L={length} -> "
            f"{plan.padded_len}. Pass bias=None or attend over a shorter axis."
        )
    pad_r = plan.padded_rows - rows
    pad_l = plan.padded_len - length
    if pad_r or pad_l:
        widths = ((0, pad_r), (0, 0), (0, pad_l), (0, 0))
        q, k, v = (jnp.pad(a, widths) for a in (q, k, v))
    if bias is not None and pad_l:
        bias = jnp.pad(bias, ((0, 0), (0, pad_l), (0, pad_l)))
    out = _axial_padded(q, k, v, bias, plan)
    if pad_r or pad_l:
        out = out[:rows, :, :length]
    return out


def axial_attention_reference(
    q,  # [R, H, L, D] any float dtype
    k,  # [R, H, L, D]
    v,  # [R, H, L, D]
    bias=None,  # [H, L, L] or None
):
    """Plain-JAX axial attention with `axial_attention`'s contract: f32 logits `q @ k^T`
    (+ bias), f32 softmax, weights cast to v's dtype, matmuls accumulated in f32, output in
    q's dtype (`_common.attention_reference` with rows as the groups). The backward is XLA
    autodiff of it (`jax.vjp`). Raises ValueError on bad shapes, as the kernel does."""
    _check_shapes(q, k, v, bias)
    return attention_reference(q, k, v, bias)
