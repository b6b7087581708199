"""Folders of image files as cases, without a dataset.json: what predict reads and what
pretraining takes as unlabelled data.

nnU-Net's naming decides the grouping: `CASE_0000.nii.gz, CASE_0001.nii.gz, ...` are the
channels of one case when the model takes several channels; any other image file is one
case of its own.
"""

from __future__ import annotations

import re
from pathlib import Path

from jaxseg.data import io
from jaxseg.data.dataset import Case
from jaxseg.errors import DataError

IMAGE_SUFFIXES = io.NIFTI_SUFFIXES + io.PIL_SUFFIXES
_CHANNEL_FILE = re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})$")


def split_suffix(name: str) -> tuple[str, str]:
    """`("case", ".nii.gz")` for `"case.nii.gz"`; the suffix is "" for a non-image name."""
    for suffix in IMAGE_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)], name[-len(suffix) :]
    return name, ""


def image_cases(folder: Path, num_channels: int) -> dict[str, list[Path]]:
    """The image files directly in `folder`, grouped into cases (sorted by name); channel
    files `CASE_NNNN` group only when `num_channels > 1`. Non-image files are skipped."""
    cases: dict[str, list[Path]] = {}
    for path in sorted(Path(folder).iterdir()):
        stem, suffix = split_suffix(path.name)
        if not suffix or not path.is_file():
            continue
        match = _CHANNEL_FILE.match(stem) if num_channels > 1 else None
        cases.setdefault(match["case"] if match else stem, []).append(path)
    return cases


def unlabelled_cases(folder: str | Path, num_channels: int) -> list[Case]:
    """The cases of an image folder without labels (`image_cases`), as `Case`s whose
    label is None (their channel count is checked when read, by `dataset.load_case`).
    DataError naming the folder when it holds no image files."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"{folder}: not a folder of images (data.unlabelled).")
    cases = []
    for case_id, paths in image_cases(folder, num_channels).items():
        cases.append(Case(case_id, tuple(paths), None, case_id))
    if not cases:
        raise DataError(
            f"{folder}: no readable image files ({', '.join(IMAGE_SUFFIXES)}) in this folder "
            "(data.unlabelled)."
        )
    return cases
