"""Axial attention as a Pallas TPU kernel: attention along ONE axis of a feature map.

Layout. The kernel sees the attended axis already moved next to the channels:
`q, k, v` are `[R, H, L, D]` where `R` ("rows") folds the batch and every spatial axis
that is not attended, `H` is heads, `L` the length of the attended axis and `D` the
head dim. Moving the axis is a transpose that XLA fuses well, so it is done outside the
kernel by `to_rows` / `from_rows` (pure JAX, below).

Numerics. Logits are `q @ k^T` with NO scaling (callers pre-scale `q`, usually by
`D ** -0.5`), plus an optional per-axis relative bias `[H, L, L]` shared by every row
(callers gather it from a learned table of `2L-1` offsets). Inputs are bf16 or f32;
every matmul accumulates in f32 (`preferred_element_type=f32`) and the softmax runs in
f32. The output has the input dtype.

Tiling (see `AxialBlockSizes` for the rule that picks the defaults):
- `L` is padded with zeros to a multiple of the query/key blocks (at least of 8, the
  sublane count) and padded KEYS are masked out of the softmax; padded query rows are
  computed and sliced off. `R` is padded to a multiple of `block_rows` with zero rows,
  whose output is sliced off and whose cotangent is therefore zero (so they add
  nothing to d(bias)).
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

import dataclasses
import functools
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

from pallas_kernels._common import fit_block

__all__ = [
    "AxialBlockSizes",
    "axial_attention",
    "to_rows",
    "from_rows",
    "vmem_bytes",
    "useful_mac_fraction",
    "report_rows",
]

# TPU vreg tile: 8 sublanes x 128 lanes of 32-bit words.
_SUBLANES = 8
_LANES = 128
# Large finite negative used for masked (padded) keys: exp(MASK - m) is exactly 0 and,
# unlike -inf, it never produces inf - inf = NaN. Same choice as jax's flash attention.
_MASK_VALUE = -0.7 * float(np.finfo(np.float32).max)

# Defaults of the block-size rule (documented in AxialBlockSizes).
_MAX_SINGLE_BLOCK = 512  # axes up to this (padded to 8) use one key block
_LONG_BLOCK_Q = 256  # query block for longer axes
_LONG_BLOCK_KS = (512, 256, 128)  # key-block candidates for longer axes
_TARGET_QUERY_TOKENS = 1024  # query tokens per grid step to amortise ~0.35 us/step
_MAX_BLOCK_ROWS = 64
_VMEM_BUDGET = 12 * 2**20  # keep every kernel under this; TPU scoped VMEM default is 16 MiB
_MAX_BIAS_LP = 4096  # d(bias) keeps a [block_q, Lp] f32 block resident in VMEM


def _round_up(x: int, m: int) -> int:
    return -(-x // m) * m


# --------------------------------------------------------------------------------------
# Block sizes
# --------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class AxialBlockSizes:
    """Tile sizes of the axial-attention kernels (forward and both backward kernels).

    Attributes:
      block_rows: rows (independent sequences) per grid step.
      block_q: query tokens per grid step; a multiple of 8. Larger than the (padded)
        axis means "the whole axis".
      block_k: key tokens per grid step. If it covers the axis (>= L rounded up to 8)
        there is one key block and no online softmax; otherwise it must be a multiple
        of 128 (the lane count: it is the last dim of the bias tile) and the softmax
        runs flash-style over `ceil(L / block_k)` key blocks.

    The default rule (`AxialBlockSizes.default`), applied in this order:
      1. Axes with `round_up(L, 8) <= 512` use ONE query and ONE key block covering the
         axis: the f32 logits tile is at most 512x512x4 = 1 MiB and the rescaling work
         of an online softmax is avoided. Longer axes use the key block among
         512, 256, 128 that pads L least (the larger on ties) and
         `block_q = min(256, block_k)`: multiples of 128, so MXU-aligned on v4/v5
         (128x128) and, for 256/512, on v6e (256x256).
      2. `block_rows` is the largest power of two with `block_rows * block_q <= 1024`
         query tokens (a grid step costs ~0.35 us of fixed overhead; short axes such as
         L=24 need ~32 rows per step to amortise it), at most 64, at most the number of
         rows, and such that the largest of the three kernels' per-step VMEM footprints
         (double-buffered blocks + scratch, with (8,128) tile padding; see
         `vmem_bytes`) stays under 12 MiB, which leaves headroom under the 16 MiB
         default scoped-VMEM limit of v4/v5e.
    """

    block_rows: int
    block_q: int
    block_k: int

    def __post_init__(self):
        for name in ("block_rows", "block_q", "block_k"):
            value = getattr(self, name)
            if not isinstance(value, (int, np.integer)) or value < 1:
                raise ValueError(f"AxialBlockSizes.{name} must be a positive int; got {value!r}.")
        if self.block_q % _SUBLANES:
            raise ValueError(
                f"AxialBlockSizes.block_q={self.block_q} must be a multiple of {_SUBLANES} "
                "(the TPU sublane count)."
            )

    @classmethod
    def default(
        cls,
        rows: int,
        heads: int,
        length: int,
        head_dim: int,
        dtype: Any = jnp.float32,
        *,
        has_bias: bool = True,
    ) -> AxialBlockSizes:
        """Block sizes chosen by the documented rule (see the class docstring)."""
        del heads  # the head axis is a grid axis; it does not change the per-step tiles
        l8 = _round_up(max(length, 1), _SUBLANES)
        if l8 <= _MAX_SINGLE_BLOCK:
            block_q = block_k = l8
        else:
            # The key block (a multiple of 128) that pads the axis least, larger on ties.
            block_k = min(_LONG_BLOCK_KS, key=lambda b: (_round_up(length, b), -b))
            block_q = min(_LONG_BLOCK_Q, block_k)
        block_rows = 1
        candidate = 1
        while candidate <= _MAX_BLOCK_ROWS and candidate * min(block_q, l8) <= _TARGET_QUERY_TOKENS:
            bs = cls(candidate, block_q, block_k)
            if vmem_bytes(bs, length, head_dim, dtype, has_bias=has_bias) > _VMEM_BUDGET:
                break
            block_rows = candidate
            candidate *= 2
        return cls(fit_block(block_rows, rows), block_q, block_k)


@dataclasses.dataclass(frozen=True)
class _Plan:
    """Static tiling of one call: padded sizes and the effective blocks."""

    rows: int  # R
    length: int  # L
    padded_rows: int  # Rp, a multiple of block_rows
    padded_len: int  # Lp, a multiple of block_q and block_k
    block_rows: int
    block_q: int
    block_k: int
    interpret: Any  # False or a pltpu.InterpretParams (hashable: a frozen dataclass)

    @property
    def n_q(self) -> int:
        return self.padded_len // self.block_q

    @property
    def n_k(self) -> int:
        return self.padded_len // self.block_k

    @property
    def block_q_dkv(self) -> int:
        return _dkv_block_q(self.padded_len, self.block_k)

    @property
    def n_q_dkv(self) -> int:
        return self.padded_len // self.block_q_dkv

    @property
    def n_r(self) -> int:
        return self.padded_rows // self.block_rows


def _tiles(length: int, bs: AxialBlockSizes) -> tuple[int, int, int]:
    """Effective (Lp, block_q, block_k) for an axis of `length` under `bs`."""
    l8 = _round_up(max(length, 1), _SUBLANES)
    block_q = min(bs.block_q, l8)
    if bs.block_k >= l8:
        # One key block covering the axis: the key block equals the full padded axis,
        # which is always a legal block shape. Queries may still be split.
        padded = _round_up(l8, block_q)
        return padded, block_q, padded
    if bs.block_k % _LANES:
        raise ValueError(
            f"AxialBlockSizes.block_k={bs.block_k} splits an axis of length {length} into "
            f"several key blocks, so it must be a multiple of {_LANES} (it is the lane dim "
            f"of the bias tile); use a multiple of {_LANES} or >= {l8} (the whole axis)."
        )
    padded = _round_up(length, bs.block_k)
    block_q = min(bs.block_q, padded)
    if padded % block_q:
        # Unusual combination (e.g. block_q=96, block_k=128): pad to a common multiple.
        padded = _round_up(length, math.lcm(block_q, bs.block_k))
    return padded, block_q, bs.block_k


def _dkv_block_q(padded_len: int, block_k: int) -> int:
    """Query block of the dk/dv kernel. There queries sit on the LANE axis (transposed
    logits, lse/di as rows), so the block must be a multiple of 128 or the whole axis:
    the whole axis with one key block, else block_k (a multiple of 128 dividing Lp)."""
    return padded_len if block_k == padded_len else block_k


def _plan(rows: int, length: int, bs: AxialBlockSizes, interpret) -> _Plan:
    padded_len, block_q, block_k = _tiles(length, bs)
    block_rows = fit_block(bs.block_rows, rows)
    return _Plan(
        rows,
        length,
        _round_up(rows, block_rows),
        padded_len,
        block_rows,
        block_q,
        block_k,
        interpret,
    )


# --------------------------------------------------------------------------------------
# VMEM accounting and the MXU model (used by the block-size rule and by the report)
# --------------------------------------------------------------------------------------


def _tile_bytes(shape: tuple[int, ...], dtype) -> int:
    """Bytes a VMEM buffer of `shape` occupies: the last two dims are padded to the
    vreg tile (8 sublanes x 128 lanes of 32-bit; 16 sublanes for 16-bit types, which
    pack two values per sublane)."""
    itemsize = jnp.dtype(dtype).itemsize
    sublanes = _SUBLANES * max(1, 4 // itemsize)
    *lead, a, b = (1, *shape) if len(shape) == 1 else shape
    return math.prod(lead) * _round_up(a, sublanes) * _round_up(b, _LANES) * itemsize


def vmem_bytes(
    block_sizes: AxialBlockSizes,
    length: int,
    head_dim: int,
    dtype=jnp.float32,
    *,
    has_bias: bool = True,
    kernel: str = "max",
) -> int:
    """Per-grid-step VMEM footprint in bytes of one kernel (or the max of the three).

    Counts every input/output block twice (Pallas double-buffers them to overlap the
    copy of step i+1 with the compute of step i), the f32 scratch once, and one row's
    f32 `[block_q, block_k]` logits/probability temporaries (x3: s, p and ds live
    together in the backward), all with (8,128) tile padding.

    Args:
      kernel: "fwd", "dq" (dq and d(bias)), "dkv" or "max".
    """
    padded, bq, bk = _tiles(length, block_sizes)
    br = block_sizes.block_rows
    d = head_dim
    f32 = jnp.float32
    qblk = _tile_bytes((br, bq, d), dtype)
    kblk = _tile_bytes((br, bk, d), dtype)
    vec = _tile_bytes((br, bq, 1), f32)  # lse / di / m / l: one f32 per query
    bias = _tile_bytes((bq, bk), f32) if has_bias else 0
    temps = 3 * _tile_bytes((bq, bk), f32)
    multi_k = bk < padded
    fwd = 2 * (2 * qblk + 2 * kblk + vec + bias) + temps
    if multi_k:
        fwd += 2 * vec + _tile_bytes((br, bq, d), f32)
    dq = 2 * (3 * qblk + 2 * kblk + 2 * vec + bias) + temps
    if multi_k:
        dq += _tile_bytes((br, bq, d), f32)
    if has_bias:
        dq += 3 * _tile_bytes((bq, padded), f32)  # resident d(bias) out (x2) + f32 acc
    bqd = _dkv_block_q(padded, bk)
    dkv = 2 * (
        2 * _tile_bytes((br, bqd, d), dtype)
        + 4 * kblk
        + 2 * _tile_bytes((br, 1, bqd), f32)
        + (_tile_bytes((bk, bqd), f32) if has_bias else 0)
    ) + 3 * _tile_bytes((bk, bqd), f32)
    if bqd < padded:
        dkv += 2 * _tile_bytes((br, bk, d), f32)
    sizes = {"fwd": fwd, "dq": dq, "dkv": dkv}
    if kernel == "max":
        return max(sizes.values())
    if kernel not in sizes:
        raise ValueError(f"vmem_bytes: kernel must be one of fwd, dq, dkv, max; got {kernel!r}.")
    return sizes[kernel]


def useful_mac_fraction(
    length: int, head_dim: int, block_sizes: AxialBlockSizes, mxu: int = 128
) -> float:
    """Fraction of MXU multiply-accumulates doing useful work in the forward kernel.

    Model: a matmul `[M, K] @ [K, N]` on an `mxu x mxu` systolic array loads the
    `[K, N]` operand in `mxu x mxu` weight tiles (K and N padded to multiples of `mxu`)
    and streams M rows through it (M padded to the 8-row sublane tile). Per row and
    head the kernel runs, per (query block, key block): `q k^T` with (M, K, N) =
    (block_q, D, block_k) and `p v` with (block_q, block_k, D). Useful MACs are those
    of the unpadded problem, `2 * L * L * D`. The backward's four matmuls have the same
    (K, N) pairs up to order, so the fraction is the same.
    """
    padded, bq, bk = _tiles(length, block_sizes)
    n_blocks = (padded // bq) * (padded // bk)
    m = _round_up(bq, _SUBLANES)
    executed = n_blocks * 2 * m * _round_up(head_dim, mxu) * _round_up(bk, mxu)
    useful = 2 * length * length * head_dim
    return useful / executed


# Default TransMed-like configurations for the MXU report: (name, rows, heads, L, D).
# rows = batch 2 x the product of the non-attended axes.
_REPORT_CONFIGS = (
    ("3d 24^3 fmap, D=32", 2 * 24 * 24, 4, 24, 32),
    ("3d 24^3 fmap, D=64", 2 * 24 * 24, 4, 24, 64),
    ("3d 12^3 fmap, D=32", 2 * 12 * 12, 8, 12, 32),
    ("3d 12^3 fmap, D=64", 2 * 12 * 12, 8, 12, 64),
    ("2d 64x64 fmap, D=32", 2 * 64, 4, 64, 32),
    ("2d 64x64 fmap, D=64", 2 * 64, 4, 64, 64),
    ("2d 128x128 fmap, D=64", 2 * 128, 4, 128, 64),
)


def report_rows(dtype=jnp.bfloat16) -> list[dict]:
    """Rows of the MXU report (`python -m pallas_kernels.report`) for the defaults.

    Each dict: kernel, config, block_shapes, useful_mac_fraction_128,
    useful_mac_fraction_256, vmem_bytes (max over the fwd/dq/dkv kernels, with bias),
    note.
    """
    out = []
    for name, rows, heads, length, d in _REPORT_CONFIGS:
        bs = AxialBlockSizes.default(rows, heads, length, d, dtype, has_bias=True)
        padded, bq, bk = _tiles(length, bs)
        f128 = useful_mac_fraction(length, d, bs, 128)
        f256 = useful_mac_fraction(length, d, bs, 256)
        note = (
            f"L={length} padded to {padded}; {padded // bk} key block(s); "
            f"grid (H={heads}, row steps={-(-rows // bs.block_rows)}, q blocks={padded // bq}, "
            f"k blocks={padded // bk})."
        )
        if f128 < 0.75:
            note += (
                f" Below the 75% MXU goal: both matmuls have one MXU dim set by L={length} "
                f"and the other by D={d}, so utilisation is bounded by "
                f"(L/{_round_up(length, 128)})*(D/{_round_up(d, 128)}) no matter how rows are "
                "packed (packing rows makes the product block-diagonal). Here the kernel's gain "
                "is fusion (no [L, L] logits in HBM), not MXU use; MXU-shaped alternatives are "
                "attending over a plane (L = 24*24 = 576) or window attention with 128 tokens."
            )
        out.append(
            {
                "kernel": "axial_attention",
                "config": f"{name}, H={heads}, rows={rows}",
                "block_shapes": (
                    f"q/o ({bs.block_rows},1,{bq},{d}) k/v ({bs.block_rows},1,{bk},{d}) "
                    f"bias (1,{bq},{bk})"
                ),
                "useful_mac_fraction_128": f128,
                "useful_mac_fraction_256": f256,
                "vmem_bytes": vmem_bytes(bs, length, d, dtype, has_bias=True),
                "note": note,
            }
        )
    return out


# --------------------------------------------------------------------------------------
# Layout helpers (pure JAX)
# --------------------------------------------------------------------------------------


def _rows_perm(ndim: int, axis: int) -> tuple[int, list[int]]:
    if ndim < 4:
        raise ValueError(
            f"to_rows/from_rows: x must be [B, *S, heads, D] with at least one spatial axis; "
            f"got a {ndim}-d array."
        )
    n_spatial = ndim - 3
    ax = axis + ndim if axis < 0 else axis
    if not 1 <= ax <= n_spatial:
        raise ValueError(
            f"to_rows/from_rows: axis={axis} is not a spatial axis of a [B, *S, heads, D] "
            f"array with {n_spatial} spatial axes (use 1..{n_spatial}, or {-2 - n_spatial}..-3)."
        )
    others = [i for i in range(1, n_spatial + 1) if i != ax]
    # [B, *other spatial, heads, attended, D]: rows are batch-major, then the other
    # spatial axes in their original order.
    return ax, [0, *others, ndim - 2, ax, ndim - 1]


def to_rows(x: jax.Array, axis: int) -> jax.Array:
    """`[B, *S, heads, D]` -> `[R, heads, L, D]` with `L = x.shape[axis]`.

    `axis` is an axis of `x` and must be spatial (1..len(S), or negative counting from
    the end: -3 is the last spatial axis). `R = B * prod(other spatial axes)`, ordered
    batch-major then row-major over the other spatial axes. One transpose + reshape in XLA.
    """
    ax, perm = _rows_perm(x.ndim, axis)
    heads, d, length = x.shape[-2], x.shape[-1], x.shape[ax]
    return jnp.transpose(x, perm).reshape(-1, heads, length, d)


def from_rows(rows: jax.Array, axis: int, shape: tuple[int, ...]) -> jax.Array:
    """Inverse of `to_rows`: `[R, heads, L, D]` -> `[B, *S, heads, D]` of `shape`."""
    shape = tuple(shape)
    ax, perm = _rows_perm(len(shape), axis)
    permuted_shape = tuple(shape[i] for i in perm)
    if rows.size != math.prod(shape) or rows.shape[1:] != permuted_shape[-3:]:
        raise ValueError(
            f"from_rows: rows {rows.shape} do not match shape {shape} along axis {axis} "
            f"(expected [R, {shape[-2]}, {shape[ax]}, {shape[-1]}] with R*... = prod(shape))."
        )
    inverse = np.argsort(perm)
    return jnp.transpose(rows.reshape(permuted_shape), inverse)


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
        s = jnp.where(key_valid, s, _MASK_VALUE)
    return s


def _key_valid(plan: _Plan, k_index):
    """Bool `[bq, bk]` mask of real (unpadded) keys, or None when nothing is padded."""
    if plan.padded_len == plan.length:
        return None
    cols = k_index * plan.block_k + lax.broadcasted_iota(jnp.int32, (plan.block_q, plan.block_k), 1)
    return cols < plan.length


def _fwd_kernel(*refs, plan: _Plan, has_bias: bool):
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


def _dkv_kernel(*refs, plan: _Plan, has_bias: bool):
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


def _dq_kernel(*refs, plan: _Plan, has_bias: bool):
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


def _cost(plan: _Plan, q, n_matmuls: int, nbytes: int) -> pl.CostEstimate | None:
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


def _forward(q, k, v, bias, plan: _Plan):
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


def _backward_dkv(q, k, v, bias, lse, di, do, plan: _Plan):
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


def _backward_dq(q, k, v, bias, lse, di, do, plan: _Plan):
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
def _axial_padded(q, k, v, bias, plan: _Plan):
    return _forward(q, k, v, bias, plan)[0]


def _axial_padded_fwd(q, k, v, bias, plan: _Plan):
    o, lse = _forward(q, k, v, bias, plan)
    return o, (q, k, v, bias, o, lse)


def _axial_padded_bwd(plan: _Plan, residuals, do):
    q, k, v, bias, o, lse = residuals
    # di_i = sum_d o_id * do_id = sum_j p_ij dp_ij: the softmax-backward row term.
    di = jnp.sum(o.astype(jnp.float32) * do.astype(jnp.float32), axis=-1, keepdims=True)
    do = do.astype(q.dtype)
    dk, dv = _backward_dkv(q, k, v, bias, lse, di, do, plan)
    dq, dbias = _backward_dq(q, k, v, bias, lse, di, do, plan)
    return dq, dk, dv, dbias


_axial_padded.defvjp(_axial_padded_fwd, _axial_padded_bwd)


# --------------------------------------------------------------------------------------
# Public entry point
# --------------------------------------------------------------------------------------


def _check_inputs(q, k, v, bias):
    if q.ndim != 4 or k.shape != q.shape or v.shape != q.shape:
        raise ValueError(
            "axial_attention: q, k, v must all be [rows, heads, L, head_dim] with the same "
            f"shape; got q{tuple(q.shape)} k{tuple(k.shape)} v{tuple(v.shape)}."
        )
    if not (q.dtype == k.dtype == v.dtype) or q.dtype not in (jnp.float32, jnp.bfloat16):
        raise ValueError(
            "axial_attention: q, k, v must share one dtype, float32 or bfloat16; got "
            f"{q.dtype}, {k.dtype}, {v.dtype}."
        )
    _, heads, length, _ = q.shape
    if bias is not None:
        if bias.shape != (heads, length, length):
            raise ValueError(
                f"axial_attention: bias must be [heads, L, L] = {(heads, length, length)}; "
                f"got {tuple(bias.shape)}."
            )
        if not jnp.issubdtype(bias.dtype, jnp.floating):
            raise ValueError(f"axial_attention: bias must be floating point; got {bias.dtype}.")


def axial_attention(
    q, k, v, bias=None, *, block_sizes: AxialBlockSizes | None = None, interpret: bool | Any = False
):
    """Multi-head softmax attention along one axis, as Pallas TPU kernels.

    Args:
      q, k, v: `[R, H, L, D]` bf16 or f32 (rows, heads, attended-axis length, head
        dim); build them with `to_rows`. Logits are `q @ k^T` unscaled: pre-scale `q`.
      bias: optional `[H, L, L]` (any float dtype) added to the logits of every row.
        Differentiable; its gradient is summed over rows and has its dtype.
      block_sizes: `AxialBlockSizes`; default `AxialBlockSizes.default(R, H, L, D, dtype)`.
      interpret: False to compile for TPU (Mosaic); True or a `pltpu.InterpretParams`
        to run in the Pallas TPU interpreter (CPU). `pltpu.force_tpu_interpret_mode()`
        also works with `interpret=False`.

    Returns:
      `[R, H, L, D]` in the dtype of `q`. Differentiable in q, k, v and bias
      (`jax.custom_vjp` with Pallas backward kernels).
    """
    _check_inputs(q, k, v, bias)
    rows, heads, length, d = q.shape
    if block_sizes is None:
        block_sizes = AxialBlockSizes.default(
            rows, heads, length, d, q.dtype, has_bias=bias is not None
        )
    if interpret is True:
        interpret = pltpu.InterpretParams()
    plan = _plan(rows, length, block_sizes, interpret)
    if bias is not None and plan.padded_len > _MAX_BIAS_LP:
        raise ValueError(
            f"axial_attention: with a bias the axis is limited to {_MAX_BIAS_LP} tokens after "
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
