"""Small shared helpers for the Pallas TPU kernels: tiling, VMEM and MXU accounting, and the
plain-JAX attention every kernel here implements (`attention_reference`).

Imports jax only. Kept small and stable: both kernels and `pallas_kernels.report` use it.

Hardware model (public TPU facts the numbers below rely on):
  * A vreg holds an (8, 128) tile of 32-bit values: the last axis of an array in VMEM is
    padded to a multiple of 128 lanes, the second-to-last to a multiple of 8 sublanes
    (16 for 16-bit types, 32 for 8-bit types, because narrow types pack along sublanes).
  * The MXU is a weight-stationary systolic array of T x T multiply-accumulators
    (T = 128 on v4/v5e/v5p, 256 on v6e). For `lhs [M, K] @ rhs [K, N]` the rhs is latched in
    T x T tiles and lhs rows stream through, so the work issued is
    `M_rows * ceil(K/T)*T * ceil(N/T)*T` MACs, where `M_rows` is M rounded up to the 8-row
    sublane tile; the useful work is `M * K * N`.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

NUM_LANES = 128
NUM_SUBLANES = 8
MXU_SIZES = {"v4/v5 (128x128)": 128, "v6e (256x256)": 256}
VMEM_BUDGET_BYTES = 16 * 1024 * 1024  # default scoped-VMEM limit we plan against
# The axial kernels' block rule admits steps up to 3/4 of the budget (12 MiB), the window
# kernel's only half (`window_attention.VMEM_TARGET_BYTES`): the axial estimate
# (`_axial_tiling.vmem_bytes`) is the max over its three kernels and already counts their f32
# scratch accumulators, and the rule's default block sizes were tuned against this limit
# (changing it changes them).
AXIAL_VMEM_LIMIT_BYTES = VMEM_BUDGET_BYTES * 3 // 4
# A very negative finite logit for padded keys: below any user mask value (jaxseg uses -1e9)
# so padding never receives weight, and finite so `s - max` never forms inf - inf.
PAD_LOGIT = -0.7 * float(jnp.finfo(jnp.float32).max)


def round_up(x: int, m: int) -> int:
    """Smallest multiple of `m` that is >= `x`."""
    return -(-x // m) * m


def sublane_tile(dtype) -> int:
    """Rows of one (sublane) tile for `dtype`: 8 for 32-bit, 16 for 16-bit, 32 for 8-bit."""
    return NUM_SUBLANES * max(1, 4 // jnp.dtype(dtype).itemsize)


def vmem_bytes(shape, dtype) -> int:
    """Bytes a VMEM buffer of `shape`/`dtype` occupies once its last two axes are tiled.

    A 1-D shape is treated as `[1, n]`."""
    shape = tuple(shape)
    if len(shape) == 1:
        shape = (1, *shape)
    *lead, rows, cols = shape
    n = math.prod(lead) * round_up(rows, sublane_tile(dtype)) * round_up(cols, NUM_LANES)
    return n * jnp.dtype(dtype).itemsize


def mxu_macs(
    m: int,
    k: int,
    n: int,
    mxu: int,
    *,
    m_pad: int | None = None,
    k_pad: int | None = None,
    n_pad: int | None = None,
) -> tuple[int, int]:
    """(useful, issued) MACs of `lhs [m, k] @ rhs [k, n]` on a `mxu` x `mxu` MXU.

    `useful` counts the unpadded problem `m*k*n`. `issued` uses the padded extents the
    kernel actually multiplies (`*_pad`, default: the unpadded ones), with rows rounded up
    to the 8-row sublane tile and the latched rhs rounded up to whole `mxu` x `mxu` tiles.
    """
    mp = round_up(m if m_pad is None else m_pad, NUM_SUBLANES)
    kp = round_up(k if k_pad is None else k_pad, mxu)
    np_ = round_up(n if n_pad is None else n_pad, mxu)
    return m * k * n, mp * kp * np_


def largest_pow2_at_most(x: int) -> int:
    """Largest power of two <= x (x >= 1)."""
    return 1 << (max(1, int(x)).bit_length() - 1)


def fit_block(block: int, count, *, power_of_two: bool = False) -> int:
    """`block` (a power of two) limited to `count` elements along a blocked axis.

    A concrete count caps the block (at its largest power of two with `power_of_two`). A
    symbolic count, as in a batch-polymorphic `jax.export`, has no known size to pad to, so
    the block is halved until it divides the count exactly (e.g. 16*b windows -> 16).
    """
    if isinstance(count, int):
        return min(block, largest_pow2_at_most(count) if power_of_two else max(count, 1))
    while block > 1:
        remainder = count % block
        if isinstance(remainder, int) and remainder == 0:
            break
        block //= 2
    return block


def _add_mask(logits, mask):
    """logits `[G, H, N, M]` + mask `[Gi, N, M]`, group g using `mask[g % Gi]` (in f32)."""
    g, h, n, m = logits.shape
    mask = mask.astype(jnp.float32)
    gi = mask.shape[0]
    if g % gi == 0:  # a broadcast, not a gather, in the usual case
        return (logits.reshape(g // gi, gi, h, n, m) + mask[None, :, None]).reshape(g, h, n, m)
    return logits + jnp.take(mask, jnp.arange(g) % gi, axis=0)[:, None]


def attention_reference(q, k, v, bias=None, mask=None, *, logits_fn=None, weights_fn=None):
    """Plain-JAX multi-head softmax attention over independent groups (windows or rows).

    The one written-out form of the attention the kernels implement; their references
    (`window_attention_reference`, `axial_attention_reference`) and jaxseg's XLA path call it.
    Shapes: q `[G, H, N, D]`; k, v `[G, H, M, D]`; bias `[H, N, M]` added to every group;
    mask `[Gi, N, M]` additive, group g using `mask[g % Gi]`. Logits `q @ k^T` are unscaled.

    Numerics: both matmuls accumulate in float32 (`preferred_element_type`), bias, mask and
    softmax are float32, the weights are cast to v's dtype before `p @ v`, and the result
    has q's dtype. Gradients are XLA autodiff of this function.

    Hooks (XLA only; the kernels have neither): `logits_fn` maps the f32 logits
    `[G, H, N, M]` (after bias and mask) before the softmax, e.g. a top-k selection;
    `weights_fn` maps the f32 softmax weights before `p @ v`, e.g. dropout on them.
    """
    s = jnp.einsum("ghnd,ghmd->ghnm", q, k, preferred_element_type=jnp.float32)
    if bias is not None:
        s = s + bias.astype(jnp.float32)[None]
    if mask is not None:
        s = _add_mask(s, mask)
    if logits_fn is not None:
        s = logits_fn(s)
    p = jax.nn.softmax(s, axis=-1)
    if weights_fn is not None:
        p = weights_fn(p)
    o = jnp.einsum("ghnm,ghmd->ghnd", p.astype(v.dtype), v, preferred_element_type=jnp.float32)
    return o.astype(q.dtype)
