"""Export a trained run's model as a SavedModel, with what serving code must know."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from jaxseg.export.saved_model import export_saved_model
from jaxseg.run import load_trained
from jaxseg.training.steps import make_predict_fn

# Per-platform choices of the operators a model exposes: the fused Pallas kernels on TPU
# (the XLA:CPU path cannot run them), XLA elsewhere. Models without the field ignore it.
PLATFORM_OPS = {
    "tpu": {"attention_impl": "pallas", "depthwise_impl": "xla"},
    "cpu": {"attention_impl": "xla", "depthwise_impl": "shifted"},
}


def platform_predict_fns(model, platforms) -> dict:
    """`{platform: predict(params, x)}`, each with that platform's operator choices.

    The functions share one parameter tree: the choices change how attention and depthwise
    convolutions are computed, never which parameters exist.
    """
    fields = {f.name for f in dataclasses.fields(model)}
    fns = {}
    for platform in platforms:
        choices = {k: v for k, v in PLATFORM_OPS.get(platform, {}).items() if k in fields}
        fns[platform] = make_predict_fn(model.clone(**choices) if choices else model)
    return fns


def export_run(
    workdir: str | Path, output: str | Path, *, platforms=("cpu",), which: str = "auto"
) -> Path:
    """Writes `output` (a SavedModel) for the run in `workdir`; returns its path."""
    config, info, model, params = load_trained(workdir, which)
    metadata = {
        "model": config.model.name,
        "model_args": config.model.args.to_dict(),
        "dims": info.dims,
        "labels": {str(k): v for k, v in info.labels.items()},
        "label_values": list(info.label_values),  # class k is written as label_values[k]
        "modalities": list(info.modalities),
        "normalization": {
            "ct_window": list(config.data.ct_window),
            "rule": "z-score per channel; CT: clip to ct_window, scale to [-1, 1]",
        },
        "sliding_window": {
            "overlap": config.eval.overlap,
            "gaussian_sigma_scale": config.eval.gaussian_sigma_scale,
        },
    }
    return export_saved_model(
        platform_predict_fns(model, platforms),
        params,
        Path(output),
        patch_size=tuple(config.data.patch_size),
        in_channels=info.in_channels,
        num_classes=info.num_classes,
        platforms=tuple(platforms),
        metadata=metadata,
    )
