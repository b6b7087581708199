"""Segment image files with a trained run: files in, masks out, aligned to the input.

Masks hold the label values of the training data's files (a model trained on 0/255 masks
writes 0/255; `RunInfo.label_values`), stored as uint8, or uint16/int32 when a declared
value exceeds 255. They have the input's on-disk shape, affine and orientation, so they
overlay the input in any viewer (the model itself sees the canonical RAS orientation).
A GIF input gets a PNG mask.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import tqdm

from jaxseg import evaluation, inference
from jaxseg.data import dicom, dicom_seg, folders, io, outputs
from jaxseg.data.labels import classes_to_values, values_to_classes
from jaxseg.data.preprocess import Preprocessing
from jaxseg.errors import ConfigError, DataError, JaxsegError
from jaxseg.workdir import (
    load_postprocess_chain,
    load_postprocessing,
    load_temperature,
    load_trained,
)

IMAGE_SUFFIXES = folders.IMAGE_SUFFIXES
# "auto": a mask like the input (NIfTI for NIfTI and DICOM, PNG for PNG/GIF, TIFF for TIFF);
# "dicom-seg": a DICOM-SEG referencing the input series (DICOM input only).
OUTPUT_FORMATS = ("auto", "dicom-seg")


class Segmenter:
    """One trained run, or a fold ensemble of runs, ready to segment images.

    workdirs: a workdir, or several (comma-separated in the CLI) trained with the same plan
    (classes, label values, modalities, preprocessing and patch): their probabilities are
    averaged before the argmax, then the runs' postprocessing decision (if cross-validation
    took one) and chain (`eval.postprocess`) are applied (`evaluation.predict_labels`).
    tta: mirroring test-time augmentation as the first run's
    `eval.tta` configures it; False turns it off; tta_rot90 adds 90° rotations (None: the
    run's `eval.tta_rot90`). max_image_bytes: the largest image a file
    may claim (`io.read_image`); None: the run's `data.max_image_bytes`. Every output path
    is checked before the first case is segmented (`jaxseg.data.outputs`).
    modalities: the channel names (dataset.json's `channel_names`, `RunInfo.channel_names`)
    a case's files supply, in that order (a file with exactly that many channels, or that
    many nnU-Net channel files `_0000`, `_0001`, ...); the other channels are zeros and
    marked absent in the presence vector the model gets (`inference.make_predict_fn`;
    multimodal models only). None: every channel.
    """

    max_image_bytes: int | None = None  # None: io.read_image's limit_image_bytes setting
    _listed: tuple[int, ...] | None = None  # --modalities' channel indices; None: all

    def __init__(
        self,
        workdirs: str | os.PathLike | Sequence[str | os.PathLike],
        which: str = "auto",
        *,
        tta: bool = True,
        tta_rot90: bool | None = None,
        max_image_bytes: int | None = None,
        modalities: Sequence[str] | None = None,
    ):
        if isinstance(workdirs, (str, os.PathLike)):
            workdirs = [workdirs]
        runs = [load_trained(w, which) for w in workdirs]
        if not runs:
            raise JaxsegError("no workdir given")
        first = runs[0]
        self.config, self.info = first.config, first.info
        # The largest image read (io.read_image); None: the run's data.max_image_bytes.
        self.max_image_bytes = max_image_bytes or self.config.data.get(
            "max_image_bytes", io.DEFAULT_MAX_IMAGE_BYTES
        )
        self.preprocessing = Preprocessing.from_config(self.config.data, self.info.modalities)
        self._window = inference.window_options(self.config, self.info.num_classes)
        for run in runs[1:]:
            _check_same_plan(first, run, self.preprocessing, self._window)
        # The decision cross-validation wrote into the folds (the same in each).
        self.postprocessing = load_postprocessing(first.workdir)
        # The ordered eval.postprocess steps (docs/postprocessing.md), applied after it.
        self.chain = load_postprocess_chain(first.workdir, self.config, self.info)
        augmentation = inference.tta_from_config(
            self.config, self.info.dims, enabled=tta, rot90=tta_rot90
        )
        # Each run's softmax at the temperature jaxseg.calibrate fitted for it (1 if none):
        # the argmax of one run is unchanged; ensembles and probability maps are calibrated.
        self.temperatures = [load_temperature(r) for r in runs]
        # The channels the files hold (indices into the run's), and the presence vector.
        self._listed, presence = _listed_modalities(modalities, self.info)
        self._predictor = inference.ensemble_predictor(
            [
                inference.window_predictor(
                    r.model, r.params, augmentation, temperature=t, presence=presence
                )
                for r, t in zip(runs, self.temperatures, strict=True)
            ]
        )

    @property
    def input_channels(self) -> int:
        """The channels a case's files hold: the listed modalities', else the model's."""
        return self.info.in_channels if self._listed is None else len(self._listed)

    def _full_channels(self, image: io.Image) -> io.Image:
        """The image with the listed channels in their places and zeros for the absent."""
        if self._listed is None:
            return image
        data = np.zeros((*image.data.shape[:-1], self.info.in_channels), np.float32)
        data[..., list(self._listed)] = image.data
        return dataclasses.replace(image, data=data)

    def _channel_names(self) -> list[str]:
        names = self.info.channel_names or self.info.modalities
        return list(names) if self._listed is None else [names[i] for i in self._listed]

    def segment(self, image: io.Image) -> np.ndarray:
        """Label map `[X, Y, (Z)]` on the image's own (canonical) grid, in label-file
        values (`classes_to_values`: uint8, or wider when a value exceeds 255)."""
        return self.segment_with_probabilities(image, probabilities=False)[0]

    def segment_with_probabilities(
        self, image: io.Image, probabilities: bool = True
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """(`segment(image)`, the calibrated class probabilities `[X, Y, (Z), K]` float32
        on the image's grid, or None without `probabilities`). The probabilities are the
        model's (TTA- and fold-averaged) softmax before postprocessing; background has
        probability 1 outside a nonzero crop."""
        channels = image.data.shape[-1]
        if channels != self.input_channels:
            listed = "" if self._listed is None else " listed by --modalities"
            raise JaxsegError(
                f"{image.path} has {channels} channel(s); the model takes "
                f"{self.input_channels}{listed} ({', '.join(self._channel_names())})"
            )
        image = self._full_channels(image)
        probs = None
        if probabilities:
            probs = evaluation.image_probabilities(
                image, self._predictor, window=self._window, preprocessing=self.preprocessing
            )
        classes = evaluation.predict_labels(
            image,
            self._predictor,
            window=self._window,
            preprocessing=self.preprocessing,
            postprocessing=self.postprocessing,
            chain=self.chain,
            probabilities=probs,
        )
        full = None if probs is None else inference.uncrop_probabilities(*probs)
        return classes_to_values(classes, self.info.label_values), full

    def segment_files(
        self,
        channel_paths: list[Path],
        output: Path,
        output_format: str = "auto",
        probabilities: Path | None = None,
    ) -> Path:
        """Segments one case's channel files into `output`; with `probabilities`, also
        writes its calibrated probability map there (`io.write_probabilities`)."""
        self._check_outputs([(channel_paths, output, probabilities)], output_format)
        image = io.read_image(channel_paths, dims=self.info.dims, max_bytes=self.max_image_bytes)
        output.parent.mkdir(parents=True, exist_ok=True)
        mask, probs = self.segment_with_probabilities(image, probabilities is not None)
        if probs is not None:
            io.write_probabilities(probs, image, probabilities)
            del probs
        if output_format == "dicom-seg":
            classes, _ = values_to_classes(mask, self.info.label_values)
            dicom_seg.write_dicom_seg(classes, image, output, self.info.labels)
        else:
            io.write_mask(mask, image, output, dtype=mask.dtype)
        return output

    def segment_path(
        self,
        input_path: str | Path,
        output: str | Path,
        output_format: str = "auto",
        probabilities: str | Path | None = None,
    ) -> list[Path]:
        """A file (-> the output file) or a folder (-> a folder of masks, one per case).

        In a folder, nnU-Net style `CASE_0000.nii.gz, CASE_0001.nii.gz, ...` files are the
        channels of one case, written as `CASE.nii.gz`; any other image file is one case.
        A folder of DICOM files is one series (-> `output`, a file when it has an ending,
        else `output/FOLDER.nii.gz` or `.dcm`); a folder of series folders is one case
        each. `output_format` is one of `OUTPUT_FORMATS`. `probabilities`: where the
        calibrated probability maps go (16-bit NIfTI, classes on the last axis): a file
        for one case, else a folder of `CASE.nii.gz`.
        """
        input_path, output = Path(input_path), Path(output)
        probs = None if probabilities is None else Path(probabilities)
        if output_format not in OUTPUT_FORMATS:
            raise JaxsegError(
                f"output format {output_format!r} is not one of {', '.join(OUTPUT_FORMATS)}"
            )
        dicom_ending = ".dcm" if output_format == "dicom-seg" else ".nii.gz"
        if input_path.is_file():
            return self._run([([input_path], output, probs)], output_format)
        if not input_path.is_dir():
            raise JaxsegError(f"input {input_path} does not exist")
        if _is_series_folder(input_path):
            named = output.name.lower().endswith((".dcm", *IMAGE_SUFFIXES))
            target = output if named else output / f"{input_path.name}{dicom_ending}"
            return self._run([([input_path], target, probs)], output_format)
        cases = folders.image_cases(input_path, self.input_channels)
        suffix_of = {}
        for case, paths in cases.items():
            suffix = folders.split_suffix(paths[0].name)[1]
            suffix_of[case] = ".png" if suffix.lower() == ".gif" else suffix  # GIF is read-only
        if not cases:  # a folder of DICOM series folders
            for sub in sorted(p for p in input_path.iterdir() if p.is_dir()):
                if _is_series_folder(sub):
                    cases[sub.name], suffix_of[sub.name] = [sub], dicom_ending
        if not cases:
            raise JaxsegError(f"no image files ({', '.join(IMAGE_SUFFIXES)}) in {input_path}")
        if output_format == "dicom-seg":
            suffix_of = dict.fromkeys(suffix_of, ".dcm")
        outputs.check_output_dir(output)
        if probs is not None:
            outputs.check_output_dir(probs, what="--probabilities")
        jobs = [
            (
                paths,
                output / f"{case}{suffix_of[case]}",
                None if probs is None else probs / f"{case}.nii.gz",
            )
            for case, paths in cases.items()
        ]
        # Every file in the folder counts: an output folder equal to the input folder is
        # fine only where no mask name is an input's name.
        return self._run(
            jobs, output_format, others=[p for p in input_path.iterdir() if p.is_file()]
        )

    def _check_outputs(self, jobs, output_format: str, others=()) -> None:
        """Before any inference: each output is writable, of a type that can hold the mask,
        and replaces no input (`jaxseg.data.outputs`)."""
        inputs = outputs.Inputs([p for paths, _, _ in jobs for p in paths] + list(others))
        dtype = io.mask_dtype(max(self.info.label_values))
        targets = [t for _, target, probs in jobs for t in (target, probs) if t is not None]
        if len(set(targets)) != len(targets):
            raise DataError(
                "the mask and probability outputs name the same file; give --probabilities "
                "its own file or folder"
            )
        for paths, target, probs in jobs:
            outputs.check_output_file(target, inputs=inputs)
            if probs is not None:
                outputs.check_output_file(probs, inputs=inputs)
                if not probs.name.lower().endswith(io.NIFTI_SUFFIXES):
                    raise DataError(
                        f"{probs}: probability maps are written as NIfTI; use .nii.gz or .nii"
                    )
            if output_format == "dicom-seg":
                _check_dicom_seg_request(paths, target)
            else:
                io.check_mask_path(target, self.info.dims, dtype)

    def _run(self, jobs, output_format: str, others=()) -> list[Path]:
        self._check_outputs(jobs, output_format, others)
        progress = tqdm.tqdm(jobs, desc="predict", unit="case", disable=len(jobs) < 2)
        return [
            self.segment_files(paths, target, output_format, probs)
            for paths, target, probs in progress
        ]


def _listed_modalities(names, info) -> tuple[tuple[int, ...] | None, tuple[bool, ...] | None]:
    """`--modalities` names -> (their channel indices, in the order given; presence per
    channel), or (None, None) for None. ConfigError on an empty list, an undeclared or
    repeated name, or a run.json without channel names."""
    if names is None:
        return None, None
    names = [str(n).strip() for n in names]
    declared = list(info.channel_names)
    if not declared:
        raise ConfigError(
            "--modalities: this run's run.json records no channel names (trained before "
            "they were recorded); retrain, or give every channel."
        )
    if not [n for n in names if n]:
        raise ConfigError(f"--modalities is empty; name at least one of {', '.join(declared)}.")
    unknown = [n for n in names if n not in declared]
    if unknown:
        raise ConfigError(
            f"--modalities: {unknown[0]!r} is not a channel of the dataset; the declared "
            f"channels are {', '.join(declared)}."
        )
    if len(set(names)) != len(names):
        raise ConfigError(f"--modalities names a channel twice: {', '.join(names)}.")
    listed = tuple(declared.index(n) for n in names)
    return listed, tuple(i in listed for i in range(len(declared)))


def _is_series_folder(folder: Path) -> bool:
    """A folder holding files, none of them NIfTI/PNG/TIFF/GIF: a DICOM series."""
    files = [p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")]
    return bool(files) and not any(folders.split_suffix(p.name)[1] for p in files)


def _check_dicom_seg_request(channel_paths: list[Path], output: Path) -> None:
    """Before predicting: DICOM-SEG needs a DICOM input series and a `.dcm` output."""
    if not dicom.is_dicom_path(channel_paths[0]):
        raise DataError(
            f"{channel_paths[0]}: --output-format dicom-seg needs a DICOM series input (a "
            "folder or .dcm file) to reference; this input is not DICOM, so there is no "
            "source series. Use --output-format auto for a mask like the input."
        )
    if not output.name.lower().endswith(".dcm"):
        raise DataError(f"{output}: a DICOM-SEG output file must end in .dcm")


def _check_same_plan(first, run, preprocessing: Preprocessing, window: dict) -> None:
    """A fold ensemble averages window probabilities: the runs must agree on what a
    window and a class are."""
    theirs = Preprocessing.from_config(run.config.data, run.info.modalities)
    checks = {
        "classes": (first.info.labels, run.info.labels),
        "label values": (first.info.label_values, run.info.label_values),
        "modalities": (first.info.modalities, run.info.modalities),
        "preprocessing": (preprocessing, theirs),
        "patch size": (window["patch_size"], tuple(run.config.data.patch_size)),
    }
    for what, (a, b) in checks.items():
        if a != b:
            raise JaxsegError(
                f"{run.workdir}: its {what} ({b}) differ from {first.workdir}'s ({a}); "
                "a fold ensemble needs runs trained with the same plan"
            )
