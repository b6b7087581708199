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
from pathlib import Path

import numpy as np

from jaxseg import inference
from jaxseg.data import io, preprocess
from jaxseg.data.labels import classes_to_values
from jaxseg.errors import JaxsegError
from jaxseg.workdir import load_trained

IMAGE_SUFFIXES = io.NIFTI_SUFFIXES + io.PIL_SUFFIXES
_CHANNEL_FILE = re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})$")


def _split_suffix(name: str) -> tuple[str, str]:
    for suffix in IMAGE_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)], name[-len(suffix) :]
    return name, ""


class Segmenter:
    """A trained run, ready to segment images."""

    def __init__(self, workdir: str | os.PathLike, which: str = "auto"):
        run = load_trained(workdir, which)
        self.config, self.info, self.model, self.params = (
            run.config,
            run.info,
            run.model,
            run.params,
        )
        self._predictor = inference.window_predictor(self.model, self.params)
        self._window = inference.window_options(self.config, self.info.num_classes)

    def segment(self, image: io.Image) -> np.ndarray:
        """Label map `[X, Y, (Z)]` in the image's canonical orientation, in label-file
        values (`classes_to_values`: uint8, or wider when a value exceeds 255)."""
        channels = image.data.shape[-1]
        if channels != self.info.in_channels:
            raise JaxsegError(
                f"{image.path} has {channels} channel(s); the model was "
                f"trained on {self.info.in_channels} ({', '.join(self.info.modalities)})"
            )
        data = preprocess.normalize(
            image.data, self.info.modalities, ct_window=tuple(self.config.data.ct_window)
        )
        classes = inference.predict_labels(data, self._predictor, **self._window)
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
        return [
            self.segment_files(paths, output / f"{case}{suffix_of[case]}")
            for case, paths in cases.items()
        ]
