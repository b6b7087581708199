"""Tiling of the axial-attention kernels: the block-size rule, the per-call plan and the
VMEM estimate the rule checks (`pallas_kernels.axial_attention` is the entry point).

Terms: `L` the attended axis, `Lp` it padded to whole query and key blocks, `R` rows and
`Rp` rows padded to whole row blocks. Imports jax only.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax.numpy as jnp
import numpy as np

from pallas_kernels._common import (
    AXIAL_VMEM_LIMIT_BYTES,
    NUM_LANES,
    NUM_SUBLANES,
    fit_block,
    round_up,
)
from pallas_kernels._common import vmem_bytes as _tile_bytes

# Defaults of the block-size rule (documented in AxialBlockSizes).
MAX_SINGLE_BLOCK = 512  # axes up to this (padded to 8) use one key block
LONG_BLOCK_Q = 256  # query block for longer axes
LONG_BLOCK_KS = (512, 256, 128)  # key-block candidates for longer axes
TARGET_QUERY_TOKENS = 1024  # query tokens per grid step to amortise ~0.35 us/step
MAX_BLOCK_ROWS = 64


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

    The default rule (`AxialBlockSizes.get_default`), applied in this order:
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
         `vmem_bytes`) stays under 12 MiB (`_common.AXIAL_VMEM_LIMIT_BYTES`), which
         leaves headroom under the 16 MiB default scoped-VMEM limit of v4/v5e.
    """

    block_rows: int
    block_q: int
    block_k: int

    def __post_init__(self):
        for name in ("block_rows", "block_q", "block_k"):
            value = getattr(self, name)
            if not isinstance(value, (int, np.integer)) or value < 1:
                raise ValueError(f"AxialBlockSizes.{name} must be a positive int; got {value!r}.")
        if self.block_q % NUM_SUBLANES:
            raise ValueError(
                f"AxialBlockSizes.block_q={self.block_q} must be a multiple of {NUM_SUBLANES} "
                "(the TPU sublane count)."
            )

    @classmethod
    def get_default(
        cls,
        rows: int,
        heads: int,
        length: int,
        head_dim: int,
        dtype: Any = jnp.float32,
        *,
        has_bias: bool = True,
    ) -> AxialBlockSizes:
        """Block sizes for `[rows, heads, length, head_dim]` inputs of `dtype`, by the rule in
        the class docstring."""
        del heads  # the head axis is a grid axis; it does not change the per-step tiles
        l8 = round_up(max(length, 1), NUM_SUBLANES)
        if l8 <= MAX_SINGLE_BLOCK:
            block_q = block_k = l8
        else:
            # The key block (a multiple of 128) that pads the axis least, larger on ties.
            block_k = min(LONG_BLOCK_KS, key=lambda b: (round_up(length, b), -b))
            block_q = min(LONG_BLOCK_Q, block_k)
        block_rows = 1
        candidate = 1
        while candidate <= MAX_BLOCK_ROWS and candidate * min(block_q, l8) <= TARGET_QUERY_TOKENS:
            bs = cls(candidate, block_q, block_k)
            if vmem_bytes(bs, length, head_dim, dtype, has_bias=has_bias) > AXIAL_VMEM_LIMIT_BYTES:
                break
            block_rows = candidate
            candidate *= 2
        return cls(fit_block(block_rows, rows), block_q, block_k)


# --------------------------------------------------------------------------------------
# The plan of one call
# --------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Plan:
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
        return dkv_block_q(self.padded_len, self.block_k)

    @property
    def n_q_dkv(self) -> int:
        return self.padded_len // self.block_q_dkv

    @property
    def n_r(self) -> int:
        return self.padded_rows // self.block_rows


def tiles(length: int, bs: AxialBlockSizes) -> tuple[int, int, int]:
    """Effective (Lp, block_q, block_k) for an axis of `length` under `bs`."""
    l8 = round_up(max(length, 1), NUM_SUBLANES)
    block_q = min(bs.block_q, l8)
    if bs.block_k >= l8:
        # One key block covering the axis: the key block equals the full padded axis,
        # which is always a legal block shape. Queries may still be split.
        padded = round_up(l8, block_q)
        return padded, block_q, padded
    if bs.block_k % NUM_LANES:
        raise ValueError(
            f"AxialBlockSizes.block_k={bs.block_k} splits an axis of length {length} into "
            f"several key blocks, so it must be a multiple of {NUM_LANES} (it is the lane dim "
            f"of the bias tile); use a multiple of {NUM_LANES} or >= {l8} (the whole axis)."
        )
    padded = round_up(length, bs.block_k)
    block_q = min(bs.block_q, padded)
    if padded % block_q:
        # Unusual combination (e.g. block_q=96, block_k=128): pad to a common multiple.
        padded = round_up(length, math.lcm(block_q, bs.block_k))
    return padded, block_q, bs.block_k


def dkv_block_q(padded_len: int, block_k: int) -> int:
    """Query block of the dk/dv kernel. There queries sit on the LANE axis (transposed
    logits, lse/di as rows), so the block must be a multiple of 128 or the whole axis:
    the whole axis with one key block, else block_k (a multiple of 128 dividing Lp)."""
    return padded_len if block_k == padded_len else block_k


def make_plan(rows: int, length: int, bs: AxialBlockSizes, interpret) -> Plan:
    """The static tiling of a call on `[rows, H, length, D]` inputs under `bs`."""
    padded_len, block_q, block_k = tiles(length, bs)
    block_rows = fit_block(bs.block_rows, rows)
    return Plan(
        rows,
        length,
        round_up(rows, block_rows),
        padded_len,
        block_rows,
        block_q,
        block_k,
        interpret,
    )


# --------------------------------------------------------------------------------------
# VMEM accounting (used by the block-size rule)
# --------------------------------------------------------------------------------------


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
    padded, bq, bk = tiles(length, block_sizes)
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
    bqd = dkv_block_q(padded, bk)
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
