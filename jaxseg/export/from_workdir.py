"""Export a trained run's model as a SavedModel, with what serving code must know."""

from __future__ import annotations

from pathlib import Path

from jaxseg.export.saved_model import export_saved_model
from jaxseg.run import load_trained
from jaxseg.training.steps import make_predict_fn


def export_run(workdir: str | Path, output: str | Path, *, platforms=("cpu",),
               which: str = "auto") -> Path:
    """Writes `output` (a SavedModel) for the run in `workdir`; returns its path."""
    config, info, model, params = load_trained(workdir, which)
    metadata = {
        "model": config.model.name,
        "model_args": config.model.args.to_dict(),
        "dims": info.dims,
        "labels": {str(k): v for k, v in info.labels.items()},
        "modalities": list(info.modalities),
        "normalization": {"ct_window": list(config.data.ct_window),
                          "rule": "z-score per channel; CT: clip to ct_window, scale to [-1, 1]"},
        "sliding_window": {"overlap": config.eval.overlap,
                           "gaussian_sigma_scale": config.eval.gaussian_sigma_scale},
    }
    return export_saved_model(make_predict_fn(model), params, Path(output),
                              patch_size=tuple(config.data.patch_size),
                              in_channels=info.in_channels, num_classes=info.num_classes,
                              platforms=tuple(platforms), metadata=metadata)
