"""Shared pieces of the jaxseg TFDS builders: features, example encoding, manual_dir checks.

Every builder emits one example per case:

    image    float32 [X, Y, Z, C]  canonical RAS voxel order (jaxseg.data.io.read_image)
    label    uint8   [X, Y, Z]     canonical, consecutive class indices 0..K-1
    spacing  float32 [3]           voxel size in mm along the canonical axes
    affine   float64 [4, 4]        canonical affine (voxel index -> world mm, RAS)
    case_id  text

Tensors have dynamic spatial shapes and are zlib-compressed inside the records; the
default file format is array_record, so a prepared dataset is a random-access source for
grain (`builder.as_data_source()` / `tfds.data_source(...)`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import tensorflow_datasets as tfds

from jaxseg.data import io
from jaxseg.errors import DataError

__all__ = ["JaxsegBuilder", "case_features", "encode_case", "require_dir", "require_file"]


def case_features(num_channels: int) -> tfds.features.FeaturesDict:
    """The per-case FeaturesDict shared by all builders (3D volumes, `num_channels` channels)."""
    zlib = tfds.features.Encoding.ZLIB
    return tfds.features.FeaturesDict(
        {
            "image": tfds.features.Tensor(
                shape=(None, None, None, num_channels),
                dtype=np.float32,
                encoding=zlib,
                doc="canonical RAS, channels last",
            ),
            "label": tfds.features.Tensor(
                shape=(None, None, None),
                dtype=np.uint8,
                encoding=zlib,
                doc="class indices, canonical RAS",
            ),
            "spacing": tfds.features.Tensor(shape=(3,), dtype=np.float32, doc="mm per voxel"),
            "affine": tfds.features.Tensor(
                shape=(4, 4), dtype=np.float64, doc="canonical voxel -> world (RAS) affine"
            ),
            "case_id": tfds.features.Text(),
        }
    )


def require_dir(path: Path, what: str, instructions: str) -> Path:
    if not path.is_dir():
        raise DataError(f"{path}: expected folder not found ({what}).\n{instructions.strip()}")
    return path


def require_file(path: Path, case_id: str, instructions: str) -> Path:
    if not path.is_file():
        raise DataError(f"case {case_id}: expected file {path} not found.\n{instructions.strip()}")
    return path


def encode_case(
    case_id: str,
    image_paths: Sequence[Path],
    label_path: Path,
    *,
    num_channels: int,
    label_map: Mapping[int, int] | None = None,
    num_classes: int | None = None,
) -> dict:
    """Reads one case with jaxseg.data.io and returns the feature dict.

    `label_map` renames label values on the way (e.g. BraTS 2021's 4 -> 3); values not in
    it are kept. Raises DataError naming the case for a channel count, grid or label value
    that does not fit.
    """
    image = io.read_image([Path(p) for p in image_paths], dims=3)
    if image.num_channels != num_channels:
        raise DataError(
            f"case {case_id}: {image.path} has {image.num_channels} channel(s), "
            f"expected {num_channels}. Check that the files belong to this dataset."
        )
    label, label_affine, _ = io.read_label(label_path, dims=3)
    if label.shape != image.data.shape[:-1]:
        raise DataError(
            f"case {case_id}: label {label_path} has shape {label.shape} but the image "
            f"has {image.data.shape[:-1]}; they must share one grid."
        )
    if not np.allclose(label_affine, image.affine, atol=1e-3):
        raise DataError(
            f"case {case_id}: label {label_path} affine differs from the image's; "
            "they must share one grid (resample the label to the image)."
        )
    if label_map:
        mapped = label.copy()
        for src, dst in label_map.items():
            mapped[label == src] = dst
        label = mapped
    lo, hi = int(label.min()), int(label.max())
    limit = 255 if num_classes is None else num_classes - 1
    if lo < 0 or hi > limit:
        raise DataError(
            f"case {case_id}: label {label_path} has values in [{lo}, {hi}], expected "
            f"0..{limit}. Is it the right dataset/config?"
        )
    return {
        "image": image.data.astype(np.float32),
        "label": label.astype(np.uint8),
        "spacing": np.asarray(image.spacing, np.float32),
        "affine": np.asarray(image.affine, np.float64),
        "case_id": case_id,
    }


class JaxsegBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """Base class: manual download, array_record by default (random access for grain)."""

    def __init__(self, *, file_format=None, **kwargs):
        super().__init__(file_format=file_format or "array_record", **kwargs)

    def _manual_dir(self, dl_manager) -> Path:
        try:
            manual = dl_manager.manual_dir
        except AssertionError as e:  # tfds asserts when no manual_dir was given / it is missing
            raise DataError(
                f"{self.name}: this dataset must be downloaded by hand and passed "
                f"as manual_dir ({e}).\n{self.MANUAL_DOWNLOAD_INSTRUCTIONS.strip()}"
            ) from e
        return Path(str(manual))
