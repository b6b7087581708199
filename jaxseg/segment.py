"""Segment image files with a trained run: files in, masks out, aligned to the input.

Masks hold the label values of the training data's files (a model trained on 0/255 masks
writes 0/255; `RunInfo.label_values`), stored as uint8, or uint16/int32 when a declared
value exceeds 255. They have the input's on-disk shape, affine and orientation, so they
overlay the input in any viewer (the model itself sees the canonical RAS orientation).
A GIF input gets a PNG mask.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import tqdm

from jaxseg import inference, postprocess
from jaxseg.data import io
from jaxseg.data.labels import classes_to_values
from jaxseg.data.preprocess import Preprocessing
from jaxseg.errors import JaxsegError
from jaxseg.workdir import load_postprocessing, load_trained

IMAGE_SUFFIXES = io.NIFTI_SUFFIXES + io.PIL_SUFFIXES
_CHANNEL_FILE = re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})$")


def _split_suffix(name: str) -> tuple[str, str]:
    for suffix in IMAGE_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)], name[-len(suffix) :]
    return name, ""


class Segmenter:
    """One trained run, or a fold ensemble of runs, ready to segment images.

    workdirs: a workdir, or several (comma-separated in the CLI) trained with the same plan
    (classes, label values, modalities, preprocessing and patch): their probabilities are
    averaged before the argmax, then the runs' postprocessing decision (if cross-validation
    took one) is applied. tta: mirroring test-time augmentation as the first run's
    `eval.tta` configures it; False turns it off.
    """

    def __init__(
        self,
        workdirs: str | os.PathLike | Sequence[str | os.PathLike],
        which: str = "auto",
        *,
        tta: bool = True,
    ):
        if isinstance(workdirs, (str, os.PathLike)):
            workdirs = [workdirs]
        runs = [load_trained(w, which) for w in workdirs]
        if not runs:
            raise JaxsegError("no workdir given")
        first = runs[0]
        self.config, self.info = first.config, first.info
        self.preprocessing = Preprocessing.from_config(self.config.data, self.info.modalities)
        self._window = inference.window_options(self.config, self.info.num_classes)
        for run in runs[1:]:
            _check_same_plan(first, run, self.preprocessing, self._window)
        # The decision cross-validation wrote into the folds (the same in each).
        self.postprocessing = load_postprocessing(first.workdir)
        axes = inference.tta_axes(self.config, self.info.dims) if tta else ()
        self._predictor = inference.ensemble_predictor(
            [inference.window_predictor(r.model, r.params, axes) for r in runs]
        )

    def segment(self, image: io.Image) -> np.ndarray:
        """Label map `[X, Y, (Z)]` on the image's own (canonical) grid, in label-file
        values (`classes_to_values`: uint8, or wider when a value exceeds 255)."""
        channels = image.data.shape[-1]
        if channels != self.info.in_channels:
            raise JaxsegError(
                f"{image.path} has {channels} channel(s); the model was "
                f"trained on {self.info.in_channels} ({', '.join(self.info.modalities)})"
            )
        classes = inference.predict_case(
            image.data,
            image.spacing,
            self._predictor,
            window=self._window,
            preprocessing=self.preprocessing,
        )
        if self.postprocessing is not None:
            classes = postprocess.apply_postprocessing(classes, self.postprocessing)
        return classes_to_values(classes, self.info.label_values)

    def segment_files(self, channel_paths: list[Path], output: Path) -> Path:
        image = io.read_image(channel_paths, dims=self.info.dims)
        output.parent.mkdir(parents=True, exist_ok=True)
        mask = self.segment(image)
        io.write_mask(mask, image, output, dtype=mask.dtype)
        return output

    def segment_path(self, input_path: str | Path, output: str | Path) -> list[Path]:
        """A file (-> the output file) or a folder (-> a folder of masks, one per case).

        In a folder, nnU-Net style `CASE_0000.nii.gz, CASE_0001.nii.gz, ...` files are the
        channels of one case, written as `CASE.nii.gz`; any other image file is one case.
        """
        input_path, output = Path(input_path), Path(output)
        if input_path.is_file():
            return [self.segment_files([input_path], output)]
        if not input_path.is_dir():
            raise JaxsegError(f"input {input_path} does not exist")
        cases: dict[str, list[Path]] = {}
        suffix_of: dict[str, str] = {}
        for path in sorted(input_path.iterdir()):
            stem, suffix = _split_suffix(path.name)
            if not suffix:
                continue
            match = _CHANNEL_FILE.match(stem) if self.info.in_channels > 1 else None
            case = match["case"] if match else stem
            cases.setdefault(case, []).append(path)
            suffix_of[case] = ".png" if suffix.lower() == ".gif" else suffix  # GIF is read-only
        if not cases:
            raise JaxsegError(f"no image files ({', '.join(IMAGE_SUFFIXES)}) in {input_path}")
        output.mkdir(parents=True, exist_ok=True)
        progress = tqdm.tqdm(cases.items(), desc="predict", unit="case", disable=len(cases) < 2)
        return [
            self.segment_files(paths, output / f"{case}{suffix_of[case]}")
            for case, paths in progress
        ]


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
