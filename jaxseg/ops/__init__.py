"""Operators with per-platform implementations: the ONE place jaxseg chooses Pallas or XLA."""

from jaxseg.ops.attention import ATTENTION_IMPLS, window_attention
from jaxseg.ops.conv import DEPTHWISE_IMPLS, depthwise_conv

__all__ = ["ATTENTION_IMPLS", "DEPTHWISE_IMPLS", "depthwise_conv", "window_attention"]
