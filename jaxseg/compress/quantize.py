"""int8 post-training quantisation of a trained run (`python -m jaxseg.compress quantize`).

Weights: every kernel (Dense, Conv, the LightSeg projections; `jaxseg.models.quantized`)
is stored int8, symmetric, one scale per output channel. Activations: the input of every
Dense / Conv / LowRankDense gets one static int8 scale, max |input| over calibration
patches of the training split / 127 (fake-quantised in the forward pass). Softmax,
LayerNorm, normalisation statistics, biases, relative position bias tables and the
depthwise convolutions' inputs stay float32.

Why not qwix (0.1.8): its PTQ provider intercepts `dot_general`, `einsum` and
`conv_general_dilated` calls whose operand it can trace back to a Flax param. LightSeg's
projections compute `x @ param.astype(dtype)`, which it does not recognise, so on
lightseg_tiny it quantised only the 20 conv / Dense kernels of the stem and decoder
(int8 tree 85% of the f32 bytes), leaving every attention and MLP weight float; its
static activation ranges come from a QAT-style pass. The piece here is small and covers
every kernel.
"""

from __future__ import annotations

import os

import jax
import numpy as np

from jaxseg.compress.common import check_new_workdir, training_patches, write_workdir
from jaxseg.errors import ConfigError
from jaxseg.models.quantized import (
    QMAX,
    QuantizedModel,
    dequantize_tree,
    input_absmax,
    quantize_tree,
)
from jaxseg.workdir import QUANTIZATION_KEY, is_quantized, load_run, load_trained

quantize_params = quantize_tree
dequantize_params = dequantize_tree


def calibrate_activations(
    model, params, images: np.ndarray, *, batch_size: int = 4
) -> dict[str, float]:
    """`{module path: input scale}`: max |input| over `images` `[N, *S, C]` / 127."""
    stats = jax.jit(lambda p, x: input_absmax(model, p, x))
    out: dict[str, float] = {}
    for start in range(0, len(images), batch_size):
        for k, v in stats(params, images[start : start + batch_size]).items():
            out[k] = max(out.get(k, 0.0), float(v))
    return {k: (v / QMAX if v > 0 else 1.0) for k, v in out.items()}


def quantize_workdir(
    workdir: str | os.PathLike,
    out: str | os.PathLike,
    *,
    calibration_cases: int = 16,
    activations: bool = True,
    seed: int = 0,
    which: str = "auto",
) -> dict:
    """Writes `out`: the run in `workdir` with int8 weights (and, with `activations`, int8
    activation scales calibrated on `calibration_cases` training patches). Returns a summary.
    An already quantised workdir is a ConfigError."""
    config, _ = load_run(workdir)
    if is_quantized(config):
        raise ConfigError(
            f"{workdir} is already quantised (config.json has a '{QUANTIZATION_KEY}' block, "
            f"from {config[QUANTIZATION_KEY].get('quantized_from')}); quantise the float run"
        )
    if calibration_cases < 1:
        raise ConfigError(f"--calibration-cases must be >= 1; got {calibration_cases}")
    check_new_workdir(out, workdir)
    run = load_trained(workdir, which)
    scales = {}
    if activations:
        images, _ = training_patches(run, calibration_cases, seed=seed)
        scales = calibrate_activations(run.model, run.params, images)
    qparams = quantize_tree(jax.tree_util.tree_map(np.asarray, run.params))
    config = run.config.copy_and_resolve_references()
    with config.unlocked():
        config[QUANTIZATION_KEY] = {
            "weights": "int8 per-channel symmetric",
            "activations": "int8 per-tensor static" if activations else "float32",
            "act_scales": tuple(sorted(scales.items())),
            "calibration_cases": calibration_cases if activations else 0,
            "quantized_from": str(run.workdir),
            "step": run.step,
        }
    write_workdir(workdir, out, config, qparams, run.step)
    leaves = jax.tree_util.tree_leaves(qparams)
    return {
        "int8_params": int(sum(x.size for x in leaves if x.dtype == np.int8)),
        "float_params": int(sum(x.size for x in leaves if x.dtype != np.int8)),
        "activation_scales": len(scales),
    }


__all__ = [
    "QuantizedModel",
    "calibrate_activations",
    "dequantize_params",
    "is_quantized",
    "quantize_params",
    "quantize_workdir",
]
