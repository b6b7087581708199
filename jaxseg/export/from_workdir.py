"""Export a trained run's model as a SavedModel, with what serving code must know."""

from __future__ import annotations

import dataclasses
import os

from etils import epath

from jaxseg import inference, ops
from jaxseg.data.preprocess import Preprocessing
from jaxseg.export.saved_model import export_saved_model
from jaxseg.workdir import TrainedRun, load_trained


def platform_predict_fns(model, platforms) -> dict:
    """`{platform: predict(params, x)}`, each with that platform's operator choices
    (`jaxseg.ops.platform_choices`: Pallas kernels on TPU, XLA and CPU-fast forms elsewhere).

    The functions share one parameter tree: the choices change how attention and
    convolutions are computed, never which parameters exist. Models without an
    implementation field ignore it.
    """
    fields = {f.name for f in dataclasses.fields(model)}
    fns = {}
    for platform in platforms:
        choices = {k: v for k, v in ops.platform_choices(platform).items() if k in fields}
        fns[platform] = inference.make_predict_fn(model.clone(**choices) if choices else model)
    return fns


def export_metadata(run: TrainedRun) -> dict:
    """What serving code needs beside the patch signature: classes, label values, the
    preprocessing the run trained with, and the sliding-window settings."""
    config, info = run.config, run.info
    return {
        "model": config.model.name,
        "model_args": config.model.args.to_dict(),
        "dims": info.dims,
        "labels": {str(k): v for k, v in info.labels.items()},
        "label_values": list(info.label_values),  # class k is written as label_values[k]
        "modalities": list(info.modalities),
        # normalization (per channel), crop_nonzero and target_spacing: what a client must
        # do to an image before the patch signature, as the run did in training.
        **Preprocessing.from_config(config.data, info.modalities).describe(),
        "sliding_window": {
            "overlap": config.eval.overlap,
            "gaussian_sigma_scale": config.eval.gaussian_sigma_scale,
        },
        "checkpoint": {"step": run.step, "slot": run.checkpoint},
    }


def export_run(
    workdir: str | os.PathLike,
    output: str | os.PathLike,
    *,
    platforms=("cpu",),
    which: str = "auto",
) -> epath.Path:
    """Writes `output` (a SavedModel) for the run in `workdir`; returns its path."""
    run = load_trained(workdir, which)
    return export_saved_model(
        platform_predict_fns(run.model, platforms),
        run.params,
        output,
        patch_size=tuple(run.config.data.patch_size),
        in_channels=run.info.in_channels,
        num_classes=run.info.num_classes,
        platforms=tuple(platforms),
        metadata=export_metadata(run),
    )
