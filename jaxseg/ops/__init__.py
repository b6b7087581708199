"""Operators with per-platform implementations: the ONE place jaxseg chooses Pallas or XLA.

Every op takes `impl="auto"` (resolved here by `jax.default_backend()`) or a concrete
implementation. Models pass their `IMPL_ARGS` fields (attention_impl, depthwise_impl,
dynamic_impl, scan_impl) through as `impl=`. Code that needs the choices for a platform other than
the running one (export's per-platform signatures, a workdir telling compute-only model
arguments apart) uses `IMPL_ARGS` and `platform_choices` and nothing else.
"""

from jaxseg.ops._impl import IMPL_ARGS, platform_choices
from jaxseg.ops.attention import (
    axial_attention,
    fold_axis_heads,
    unfold_axis_heads,
    window_attention,
    window_attention_routed,
    window_attention_topk,
)
from jaxseg.ops.conv import DYNAMIC_IMPLS, depthwise_conv, dynamic_conv
from jaxseg.ops.scan import SCAN_IMPLS, selective_scan, selective_scan_reference

__all__ = [
    "DYNAMIC_IMPLS",
    "IMPL_ARGS",
    "SCAN_IMPLS",
    "axial_attention",
    "depthwise_conv",
    "dynamic_conv",
    "fold_axis_heads",
    "platform_choices",
    "selective_scan",
    "selective_scan_reference",
    "unfold_axis_heads",
    "window_attention",
    "window_attention_routed",
    "window_attention_topk",
]
