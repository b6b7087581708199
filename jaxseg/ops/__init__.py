"""Operators with per-platform implementations: the ONE place jaxseg chooses Pallas or XLA."""

from jaxseg.ops.attention import (
    ATTENTION_IMPLS,
    axial_attention,
    fold_axis_heads,
    unfold_axis_heads,
    window_attention,
    window_attention_routed,
    window_attention_topk,
)
from jaxseg.ops.conv import DEPTHWISE_IMPLS, depthwise_conv

__all__ = [
    "ATTENTION_IMPLS",
    "DEPTHWISE_IMPLS",
    "axial_attention",
    "depthwise_conv",
    "fold_axis_heads",
    "unfold_axis_heads",
    "window_attention",
    "window_attention_routed",
    "window_attention_topk",
]
