"""Window attention: the operator every window-attention block calls.

`window_attention` is the only entry point; it picks an implementation per platform
(`impl="auto"`) so that models never choose between a Pallas kernel and XLA themselves.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxseg.ops._impl import resolve_impl

ATTENTION_IMPLS = ("xla", "pallas")
# impl="auto" by jax.default_backend(). TPU maps to "xla" until the Pallas kernels
# (pallas_kernels/) land; then "tpu" -> "pallas" here is the only change needed.
_AUTO = {"cpu": "xla", "gpu": "xla", "tpu": "xla", "default": "xla"}


def _resolve_impl(impl: str) -> str:
    return resolve_impl("window_attention", impl, ATTENTION_IMPLS, _AUTO)


def _check_shapes(q, k, v, bias, mask):
    if q.ndim != 4 or k.shape != q.shape or v.shape != q.shape:
        raise ValueError(
            "window_attention: q, k, v must all be [W, H, N, D] with the same shape; got "
            f"q{q.shape} k{k.shape} v{v.shape}."
        )
    w, h, n, _ = q.shape
    if bias is not None and bias.shape != (h, n, n):
        raise ValueError(f"window_attention: bias must be [H, N, N] = {(h, n, n)}; got {bias.shape}.")
    if mask is not None and (mask.ndim != 3 or mask.shape[1:] != (n, n) or mask.shape[0] < 1):
        raise ValueError(f"window_attention: mask must be [Wi, {n}, {n}]; got {mask.shape}.")


def _window_attention_xla(q, k, v, bias, mask):
    w, h, n, _ = q.shape
    # Batched matmuls over (window, head): no transposes needed for this layout.
    logits = jnp.einsum("whnd,whmd->whnm", q, k, preferred_element_type=jnp.float32)
    if bias is not None:
        logits = logits + bias.astype(jnp.float32)[None]
    if mask is not None:
        mask = mask.astype(jnp.float32)
        wi = mask.shape[0]
        if w % wi == 0:
            logits = (logits.reshape(w // wi, wi, h, n, n) + mask[None, :, None]).reshape(w, h, n, n)
        else:
            logits = logits + jnp.take(mask, jnp.arange(w) % wi, axis=0)[:, None]
    probs = jax.nn.softmax(logits, axis=-1)
    out = jnp.einsum("whnm,whmd->whnd", probs.astype(v.dtype), v, preferred_element_type=jnp.float32)
    return out.astype(q.dtype)


def window_attention(q, k, v, bias=None, mask=None, *, impl: str = "auto"):
    """Multi-head attention inside windows.

    Args:
      q, k, v: `[W, H, N, D]` (windows, heads, tokens per window, head dim). The logits are
        `q @ k^T` with no scaling: callers scale `q` (usually by `D ** -0.5`).
      bias: optional `[H, N, N]`, added to the logits of every window (relative position bias).
      mask: optional `[Wi, N, N]` additive mask (0 or a large negative number); window `w`
        uses `mask[w % Wi]` (windows ordered batch-major, `Wi` windows per image).
      impl: "auto" (by platform), "xla" (einsum + softmax) or "pallas" (not yet available).

    Returns:
      `[W, H, N, D]` in `q.dtype`. Logits and softmax are computed in float32.
    """
    _check_shapes(q, k, v, bias, mask)
    impl = _resolve_impl(impl)
    if impl == "xla":
        return _window_attention_xla(q, k, v, bias, mask)
    raise NotImplementedError(
        "window_attention(impl='pallas') is not implemented yet: the Pallas TPU kernel lands "
        "in a later issue. Use impl='xla' or impl='auto'."
    )
