"""Export a trained run's model as a SavedModel, with what serving code must know."""

from __future__ import annotations

import dataclasses
import os

from etils import epath

from jaxseg import inference, ops
from jaxseg.data import outputs
from jaxseg.data.preprocess import Preprocessing
from jaxseg.export.pipeline import segment_function
from jaxseg.export.saved_model import METADATA_FILENAME, export_saved_model
from jaxseg.export.tflite import write_tflite_float16
from jaxseg.models import peft
from jaxseg.workdir import TrainedRun, load_temperature, load_trained


def platform_model(model, platform: str):
    """`model` with `platform`'s operator choices (`jaxseg.ops.platform_choices`: Pallas
    kernels on TPU, XLA and CPU-fast forms elsewhere). The choices change how attention
    and convolutions are computed, never which parameters exist; models without an
    implementation field ignore them."""
    if isinstance(model, (peft.LoraModel, peft.AdapterModel)):  # the choices are inner's
        return model.clone(inner=platform_model(model.inner, platform))
    fields = {f.name for f in dataclasses.fields(model)}
    choices = {k: v for k, v in ops.platform_choices(platform).items() if k in fields}
    return model.clone(**choices) if choices else model


def platform_predict_fns(model, platforms, temperature: float = 1.0) -> dict:
    """`{platform: predict(params, x)}` over one parameter tree, each with that
    platform's operator choices (`platform_model`) and the run's softmax temperature. A
    model with a classification head (`num_case_classes` > 0) predicts (probabilities,
    class probabilities), the signature's two outputs."""
    make = inference.make_predict_fn
    if getattr(model, "num_case_classes", 0):
        make = inference.make_patch_and_class_fn
    return {p: make(platform_model(model, p), temperature=temperature) for p in platforms}


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


def merged_lora(run: TrainedRun) -> TrainedRun:
    """`run` with its LoRA factors folded into the kernels (`W + (alpha / r) A B`,
    `peft.merge_lora`) and the plain model, so the export is an ordinary one; any other run
    as it is (adapters cannot merge: they are exported as part of the model)."""
    model = run.model
    if not isinstance(model, peft.LoraModel) or not peft.mergeable(run.params):
        return run
    params = peft.merge_lora(run.params, model.alpha)
    return dataclasses.replace(run, model=model.inner, params=params)


def export_run(
    workdir: str | os.PathLike,
    output: str | os.PathLike,
    *,
    platforms=("cpu",),
    which: str = "auto",
    pipeline: bool = False,
    tta: bool = True,
    tflite: bool = False,
) -> epath.Path:
    """Writes `output` (a SavedModel) for the run in `workdir`; returns its path.

    pipeline: also the `segment` signature, the whole inference path in the graph
    (`jaxseg.export.pipeline`), with mirroring TTA as `eval.tta` says unless `tta` is False.
    Both signatures apply the run's softmax temperature (`jaxseg.calibrate`).
    tflite: also `output/model_float16.tflite` from the patch signature (`export.tflite`).

    `output` is checked before the run is loaded: a new or empty folder, or a previous
    export (it is replaced), never the workdir, a folder holding it, or anything else.
    """
    outputs.check_export_dir(output, marker=METADATA_FILENAME, protect=[workdir])
    run = merged_lora(load_trained(workdir, which))
    temperature = load_temperature(run)
    metadata = export_metadata(run)
    segment_fn = target_spacing = None
    if pipeline:
        config, info = run.config, run.info
        description = Preprocessing.from_config(config.data, info.modalities).describe()
        segment_fn = segment_function(
            platform_model(run.model, platforms[0]),
            description=description,
            patch_size=tuple(config.data.patch_size),
            num_classes=info.num_classes,
            label_values=info.label_values,
            overlap=config.eval.overlap,
            gaussian_sigma_scale=config.eval.gaussian_sigma_scale,
            tta=inference.tta_from_config(config, info.dims, enabled=tta),
            temperature=temperature,
        )
        target_spacing = description["target_spacing"]
        metadata["segment"] = {
            "inputs": "image [*spatial, C] float32 in the scanner's units, canonical (RAS) "
            "voxel order; spacing [dims] float32 mm",
            "outputs": "labels [*spatial] (label-file values), probabilities [*spatial, K]",
            **inference.tta_from_config(config, info.dims, enabled=tta).describe(),
            "target_spacing": target_spacing,
            "postprocessing": "not in the graph: apply postprocessing.json on the client",
        }
    metadata["temperature"] = temperature
    saved = export_saved_model(
        platform_predict_fns(run.model, platforms, temperature),
        run.params,
        output,
        patch_size=tuple(run.config.data.patch_size),
        in_channels=run.info.in_channels,
        num_classes=run.info.num_classes,
        platforms=tuple(platforms),
        metadata=metadata,
        segment_fn=segment_fn,
        target_spacing=target_spacing,
    )
    if tflite:
        write_tflite_float16(saved)
    return saved
