"""Window attention: the operator every window-attention block calls.

`window_attention` is the only entry point; it picks an implementation per platform
(`impl="auto"`) so that models never choose between a Pallas kernel and XLA themselves.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

import pallas_kernels.axial_attention as axial_kernel
import pallas_kernels.window_attention as window_kernel
from jaxseg.ops._impl import IMPL_AUTO, resolve_impl

# "pallas" compiles the Pallas TPU kernel (Mosaic): on TPU, or when exporting for TPU.
# "pallas_interpret" runs the same kernel in the Pallas TPU interpreter, on any machine:
# slow, for checking it against "xla" where there is no TPU.
ATTENTION_IMPLS = ("xla", "pallas", "pallas_interpret")
# impl="auto" by jax.default_backend(), for window and axial attention alike (one table).
_AUTO = IMPL_AUTO["attention_impl"]
# The XLA path is each kernel's plain-JAX reference (`pallas_kernels.*_reference`): the
# attention maths is written once, in `pallas_kernels._common.attention_reference`.


def _resolve_impl(impl: str) -> str:
    return resolve_impl("window_attention", impl, ATTENTION_IMPLS, _AUTO)


def window_attention(q, k, v, bias=None, mask=None, *, impl: str = "auto", weights_fn=None):
    """Multi-head attention inside windows.

    Args:
      q: `[W, H, N, D]` (windows, heads, query tokens per window, head dim).
      k, v: `[W, H, M, D]`: each window's M keys, M = N for plain windows; M != N for halo
        key blocks or routed key windows. The logits are `q @ k^T` with no scaling: callers
        scale `q` (usually by `D ** -0.5`).
      bias: optional `[H, N, M]`, added to the logits of every window (relative position bias).
      mask: optional `[Wi, N, M]` additive mask (0 or a large negative number); window `w`
        uses `mask[w % Wi]` (windows ordered batch-major, `Wi` windows per image).
      impl: "auto" (Pallas on TPU, XLA elsewhere), "xla" (einsum + softmax:
        `pallas_kernels.window_attention.window_attention_reference`), "pallas" (the fused
        TPU kernel of `pallas_kernels.window_attention`) or "pallas_interpret" (that kernel
        in the TPU interpreter).
      weights_fn: optional map of the float32 softmax weights `[W, H, N, M]` before they
        multiply v (e.g. dropout on the attention weights). Only the XLA path has this
        hook: with it, "auto" means "xla" and "pallas"/"pallas_interpret" are an error.

    Returns:
      `[W, H, N, D]` in `q.dtype`. Logits and softmax are computed in float32.
    """
    if weights_fn is not None and impl not in ("auto", "xla"):
        raise ValueError(
            f"jaxseg.ops.window_attention: weights_fn has no Pallas kernel; got impl={impl!r}. "
            "Use impl='auto' or 'xla'."
        )
    impl = "xla" if weights_fn is not None else _resolve_impl(impl)
    if impl == "xla":
        return window_kernel.window_attention_reference(q, k, v, bias, mask, weights_fn=weights_fn)
    return window_kernel.window_attention(q, k, v, bias, mask, interpret=impl == "pallas_interpret")


# --------------------------------------------------------------------------- top-k window attention

# Top-k selection has no Pallas kernel (the kernel's mask is per window, not per head and
# query row), so XLA is the one implementation and "auto" picks it on every platform.
TOPK_IMPLS = ("xla",)


def _keep_topk(topk: int):
    """A logits map `[W, H, N, M] -> [W, H, N, M]` dropping keys below each row's top-k."""

    def select(logits):
        m = logits.shape[-1]
        if topk >= m:
            return logits
        # The k-th largest logit of each query row is the threshold; keys below it are dropped.
        # Selection is piecewise constant, so no gradient flows through the threshold.
        kth = jax.lax.top_k(jax.lax.stop_gradient(logits), topk)[0][..., topk - 1 : topk]
        return jnp.where(logits >= kth, logits, jnp.float32(-1e30))

    return select


def window_attention_topk(q, k, v, bias=None, mask=None, *, topk: int, impl: str = "auto"):
    """Dynamic sparse window attention: each query attends only to its `topk` highest-scoring keys.

    Same layout and conventions as `window_attention` (q `[W, H, N, D]`, k, v `[W, H, M, D]`,
    unscaled logits, bias `[H, N, M]`, additive mask `[Wi, N, M]`, softmax in float32). Per
    query row, the logits (after bias and mask, so a masked key is never chosen) below the
    row's `topk`-th largest are masked out; ties at the threshold keep every tied key, so a
    row may keep more than `topk` keys. `topk >= M` is dense attention.

    Returns `[W, H, N, D]` in `q.dtype`. impl: any of `ATTENTION_IMPLS`, so a model's one
    `attention_impl` serves all its attention ops; the sparse form has a single
    implementation (`TOPK_IMPLS`: XLA), which every value selects. The per-query selection
    differs per head and row, which the window kernel's per-window mask cannot express.
    """
    if not isinstance(topk, int) or isinstance(topk, bool) or topk < 1:
        raise ValueError(f"window_attention_topk: topk must be a positive int; got {topk!r}.")
    resolve_impl("window_attention_topk", impl, ATTENTION_IMPLS, {"default": "xla"})
    return window_kernel.window_attention_reference(q, k, v, bias, mask, logits_fn=_keep_topk(topk))


# --------------------------------------------------------------------------- routed window attention


def _route(q, k, key_mask, nw, kw):
    """Key-window indices `[B, nW, kw]` per query window: its own window first, then the
    kw - 1 other windows of the same image with the highest affinity."""
    w, h, n, d = q.shape
    b = w // nw
    if kw == 1:
        return jnp.broadcast_to(jnp.arange(nw)[None, :, None], (b, nw, 1))
    if key_mask is None:
        weights = jnp.full((nw, n), 1.0 / n, jnp.float32)
    else:
        valid = (key_mask == 0).astype(jnp.float32)
        weights = valid / jnp.maximum(valid.sum(-1, keepdims=True), 1.0)

    def pool(x):  # mean over each window's valid tokens, heads concatenated: [B, nW, H * D]
        x = jax.lax.stop_gradient(x).reshape(b, nw, h, n, d)
        return jnp.einsum("bwhnd,wn->bwhd", x, weights, preferred_element_type=jnp.float32).reshape(
            b, nw, h * d
        )

    affinity = jnp.einsum("bic,bjc->bij", pool(q), pool(k))
    # The own window is always kept (slot 0), so it is excluded from the ranking.
    affinity = jnp.where(jnp.eye(nw, dtype=bool), -jnp.inf, affinity)
    others = jax.lax.top_k(affinity, kw - 1)[1]
    own = jnp.broadcast_to(jnp.arange(nw, dtype=others.dtype)[None, :, None], (b, nw, 1))
    return jnp.concatenate([own, others], axis=-1)


def window_attention_routed(
    q,
    k,
    v,
    bias=None,
    key_mask=None,
    *,
    windows_per_image: int,
    topk_windows: int,
    topk: int | None = None,
    impl: str = "auto",
):
    """Window attention with bi-level routing (BiFormer, Zhu et al. CVPR 2023).

    Args:
      q, k, v: `[B * nW, H, N, D]`, windows batch-major, `nW = windows_per_image` per image;
        logits `q @ k^T` unscaled, as in `window_attention`.
      bias: optional `[H, N, N]`: the relative position bias of a window with itself.
      key_mask: optional `[nW, N]` additive (0 = a real token, large negative = padding),
        the same for every image.
      topk_windows: key windows per query window (clamped to nW).
      topk: optional per-query top-k over the gathered keys (`window_attention_topk`).

    Routing, per image: the window-level query and key of a window are the means of its q
    and k over its valid tokens, all heads concatenated (`[nW, H * D]`); their product is the
    affinity `[nW, nW]`. Each query window attends to the `topk_windows * N` tokens of its OWN
    window plus the `topk_windows - 1` other windows of highest affinity (BiFormer ranks the own
    window with the rest; keeping it guarantees local context, and lets the bias apply).
    The own window's keys get `bias`; routed windows get none (their offsets to the query
    differ per window and are not local). Padded keys stay masked. The selection uses
    `stop_gradient`ed scores (it is piecewise constant); the gathered k and v are
    differentiable. `topk_windows >= nW` is global attention over all valid tokens.

    Returns `[B * nW, H, N, D]` in `q.dtype`. impl as `window_attention` (with `topk`: as
    `window_attention_topk`, XLA only).
    """
    nw = windows_per_image
    for name, val in (("windows_per_image", nw), ("topk_windows", topk_windows)):
        if not isinstance(val, int) or isinstance(val, bool) or val < 1:
            raise ValueError(
                f"window_attention_routed: {name} must be a positive int; got {val!r}."
            )
    if q.ndim != 4 or k.shape != q.shape or v.shape != q.shape or q.shape[0] % nw:
        raise ValueError(
            f"window_attention_routed: q, k, v must be [B * nW, H, N, D] with nW = "
            f"windows_per_image = {nw}; got q{q.shape} k{k.shape} v{v.shape}."
        )
    w, h, n, d = q.shape
    if bias is not None and bias.shape != (h, n, n):
        raise ValueError(
            f"window_attention_routed: bias must be [H, N, N] = {(h, n, n)}; got {bias.shape}."
        )
    if key_mask is not None and key_mask.shape != (nw, n):
        raise ValueError(
            f"window_attention_routed: key_mask must be [nW, N] = {(nw, n)}; got {key_mask.shape}."
        )
    kw = min(topk_windows, nw)
    b = w // nw
    idx = _route(q, k, key_mask, nw, kw)  # [B, nW, kw]

    def gather(x):  # [B * nW, H, N, D] -> the routed windows' tokens [B * nW, H, kw * N, D]
        g = jax.vmap(lambda xb, ib: xb[ib])(x.reshape(b, nw, h, n, d), idx)  # [B, nW, kw, H, N, D]
        return g.transpose(0, 1, 3, 2, 4, 5).reshape(w, h, kw * n, d)

    kg, vg = gather(k), gather(v)
    if bias is not None and kw > 1:
        bias = jnp.concatenate([bias, jnp.zeros((h, n, (kw - 1) * n), bias.dtype)], axis=-1)
    mask = None
    if key_mask is not None:  # padded keys of the gathered windows, the same for every query row
        mask = jnp.broadcast_to(jnp.asarray(key_mask)[idx].reshape(w, 1, kw * n), (w, n, kw * n))
    if topk is None:
        return window_attention(q, kg, vg, bias, mask, impl=impl)
    return window_attention_topk(q, kg, vg, bias, mask, topk=topk, impl=impl)


# --------------------------------------------------------------------------- axial attention


def axial_attention(q, k, v, bias=None, *, impl: str = "auto"):
    """Multi-head attention along one axis of a feature map (each line attends within itself).

    Args:
      q, k, v: `[R, H, L, D]`: rows (every other axis, batch included, folded together by the
        caller, e.g. with `fold_axis_heads`), heads, positions along the attended axis, head
        dim. The logits are `q @ k^T` unscaled: callers scale `q` (usually by `D ** -0.5`).
      bias: optional `[H, L, L]` added to the logits of every row (relative position bias).
      impl: "auto" (Pallas on TPU, XLA elsewhere), "xla" (einsum + softmax:
        `pallas_kernels.axial_attention.axial_attention_reference`), "pallas"
        (the flash-style TPU kernel of `pallas_kernels.axial_attention`) or
        "pallas_interpret" (that kernel in the TPU interpreter).

    Returns:
      `[R, H, L, D]` in `q.dtype`. Logits and softmax are computed in float32.
    """
    impl = resolve_impl("axial_attention", impl, ATTENTION_IMPLS, _AUTO)
    if impl == "xla":
        return axial_kernel.axial_attention_reference(q, k, v, bias)
    return axial_kernel.axial_attention(q, k, v, bias, interpret=impl == "pallas_interpret")


def fold_axis_heads(x, axis: int, groups: int, heads: int):
    """Fold every axis but `axis` into rows and split channels into (groups, heads, head_dim).

    `x` `[B, *S, G * H * D]`, `axis` a spatial axis of x (1 .. x.ndim - 2; negative counts from
    the channel axis, -2 being the last spatial axis) -> `[G, R, H, L, D]` with L = x.shape[axis]
    and R = B * prod(S) / L, rows ordered as the remaining axes in their original order.
    One transpose; `unfold_axis_heads` inverts it for one group.
    """
    axis = _spatial_axis(x, axis)
    c = x.shape[-1]
    if c % (groups * heads):
        raise ValueError(
            f"fold_axis_heads: channels {c} are not divisible by groups*heads = {groups * heads}."
        )
    hd = c // (groups * heads)
    nd = x.ndim
    x = x.reshape(*x.shape[:-1], groups, heads, hd)
    # axes now: 0..nd-2 = B, S...; nd-1 = G, nd = H, nd+1 = D
    rest = [a for a in range(nd - 1) if a != axis]
    x = x.transpose(nd - 1, *rest, nd, axis, nd + 1)
    return x.reshape(groups, -1, heads, x.shape[-2], hd)


def unfold_axis_heads(rows, axis: int, shape):
    """Inverse of `fold_axis_heads` for one group: `[R, H, L, D] -> [B, *S, H * D]`.

    `shape` is the spatial shape S (without batch and channels); `axis` as in `fold_axis_heads`
    for an array `[B, *S, C]`.
    """
    shape = tuple(shape)
    nd = len(shape) + 2
    axis = _spatial_axis(nd, axis)
    _, h, length, hd = rows.shape
    if shape[axis - 1] != length:
        raise ValueError(
            f"unfold_axis_heads: axis {axis} has length {shape[axis - 1]} but rows have L={length}."
        )
    rest = [a for a in range(nd - 1) if a != axis]
    rest_sizes = [shape[a - 1] for a in rest[1:]]
    x = rows.reshape(-1, *rest_sizes, h, length, hd)  # axes: rest..., H, L, D
    # Current positions: rest[i] at i; H at nd-2; L (=axis) at nd-1; D at nd.
    pos = {a: i for i, a in enumerate(rest)}
    pos[axis] = nd - 1
    perm = [pos[a] for a in range(nd - 1)] + [nd - 2, nd]
    return x.transpose(perm).reshape(-1, *shape, h * hd)


def _spatial_axis(x_or_ndim, axis: int) -> int:
    nd = x_or_ndim if isinstance(x_or_ndim, int) else x_or_ndim.ndim
    a = axis + nd if axis < 0 else axis
    if not 1 <= a <= nd - 2:
        raise ValueError(f"axis {axis} is not a spatial axis of a [B, *S, C] array with {nd} dims.")
    return a
