"""Compression of trained runs: structured pruning, int8 post-training quantisation and the
distillation loss (`python -m jaxseg.compress prune|quantize ...`).

Every command reads a trained workdir and writes a new ordinary workdir (config.json,
run.json, splits.json, a checkpoint in the training layout), so evaluate, predict, export
and benchmark read it unchanged. See docs/compression.md for what exists and what does not.
"""

from jaxseg.compress.distill import distillation_loss
from jaxseg.compress.prune import (
    head_importance,
    mlp_channel_importance,
    prune_params,
    prune_workdir,
    pruning_plan,
)
from jaxseg.compress.quantize import (
    QuantizedModel,
    dequantize_params,
    quantize_params,
    quantize_workdir,
)

__all__ = [
    "QuantizedModel",
    "dequantize_params",
    "distillation_loss",
    "head_importance",
    "mlp_channel_importance",
    "prune_params",
    "prune_workdir",
    "pruning_plan",
    "quantize_params",
    "quantize_workdir",
]
