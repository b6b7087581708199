"""Write a label map as DICOM-SEG (highdicom) that references its source DICOM series.

The mask arrives in canonical RAS order (what the model saw); it is taken back to the
series' voxel order `[I, J, K]` (column, row, sorted slice) with the same orientation
transform that `io.write_mask` undoes for NIfTI, then each slice is handed to highdicom as
the frame of its source image (single-frame series) or of its source frame (enhanced
multi-frame), so the SEG's geometry is the source's, frame for frame. One segment per
foreground class: segment number k is class k, labelled with its name.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import highdicom as hd
import numpy as np
from nibabel import orientations as nio
from pydicom.sr.codedict import codes
from pydicom.uid import generate_uid

from jaxseg.data import dicom, io
from jaxseg.errors import DataError

__all__ = ["write_dicom_seg"]

_RAS = np.array([[0, 1], [1, 1], [2, 1]], dtype=float)


def _disk_order(classes: np.ndarray, reference: io.Image) -> np.ndarray:
    """Canonical `[X, Y, (Z)]` -> the series' `[I, J, K]` (inverse of the reorientation)."""
    ornt = nio.io_orientation(reference.original_affine)
    if classes.ndim == 2:
        classes = np.expand_dims(classes, int(ornt[2, 0]))
    back = nio.apply_orientation(classes, nio.ornt_transform(_RAS, ornt))
    return back.reshape(reference.original_shape)


def _segment(k: int, name: str, version: str) -> hd.seg.SegmentDescription:
    return hd.seg.SegmentDescription(
        segment_number=k,
        segment_label=name[:64],
        # Class names are free text; the generic "Tissue" code keeps the SEG valid
        # without guessing a SNOMED concept for each name.
        segmented_property_category=codes.SCT.Tissue,
        segmented_property_type=codes.SCT.Tissue,
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=hd.AlgorithmIdentificationSequence(
            name="jaxseg", family=codes.cid7162.ArtificialIntelligence, version=version
        ),
        tracking_id=name[:64],
        tracking_uid=generate_uid(),
    )


def write_dicom_seg(
    classes_canonical: np.ndarray,
    reference: io.Image,
    path: str | Path,
    labels: Mapping[int, str],
    *,
    series_description: str = "jaxseg segmentation",
) -> Path:
    """Writes class indices as a DICOM-SEG referencing `reference`'s source series.

    Args:
      classes_canonical: int `[X, Y, (Z)]` class indices 0..K-1 on the canonical grid of
        `reference` (the shape of `reference.data[..., 0]`); 0 is background.
      reference: the `io.Image` read from a DICOM series folder or `.dcm` file.
      path: the output `.dcm` file.
      labels: class index -> name for 0..K-1 (the workdir's `RunInfo.labels`).

    Raises DataError when `reference` was not read from DICOM (no series to reference),
    the mask does not fit it, or the series changed on disk since it was read.
    """
    import jaxseg

    path = Path(path)
    src = Path(reference.path)
    if not dicom.is_dicom_path(src):
        raise DataError(
            f"{src}: DICOM-SEG output needs a DICOM series input to reference, but this "
            "input is not DICOM (there is no source series). Write a NIfTI mask instead "
            "(--output-format auto)."
        )
    classes = np.asarray(classes_canonical)
    if classes.shape != reference.data.shape[:-1]:
        raise DataError(
            f"{path}: mask shape {classes.shape} does not match the reference image {src} "
            f"shape {reference.data.shape[:-1]}."
        )
    num_classes = len(labels)
    if classes.size and (classes.min() < 0 or classes.max() >= num_classes):
        raise DataError(
            f"{path}: mask values {classes.min()}..{classes.max()} are not class indices "
            f"0..{num_classes - 1}."
        )
    series = dicom.read_series(src, reference.dims)
    if series.shape != tuple(_disk_shape(reference)) or not np.allclose(
        series.affine, reference.original_affine, atol=1e-4
    ):
        raise DataError(
            f"{src}: the series on disk no longer matches the image the mask was predicted "
            "for (it changed since it was read); predict again."
        )
    if path.resolve() in {f.resolve() for f in series.headers}:
        raise DataError(
            f"{path}: is a file of the source series {src}; write the DICOM-SEG elsewhere "
            "(it would overwrite a source image)."
        )
    disk = _disk_order(classes, reference)
    dtype = np.uint8 if num_classes <= 256 else np.uint16
    files = {s.file for s in series.slices}
    if all(s.frame is None for s in series.slices):
        sources = [series.headers[s.file] for s in series.slices]
        frames = np.transpose(disk, (2, 1, 0))  # [K, rows, cols], slice k <- source k
    elif len(files) == 1:
        (only,) = files
        sources = [series.headers[only]]
        frames = np.zeros((len(series.slices), *disk.shape[1::-1]), disk.dtype)
        for k, s in enumerate(series.slices):
            frames[s.frame] = disk[:, :, k].T  # stored frame order, not sorted order
    else:
        raise DataError(
            f"{src}: DICOM-SEG output for a series of several multi-frame files is not "
            "supported; write a NIfTI mask (--output-format auto)."
        )
    seg = hd.seg.Segmentation(
        source_images=sources,
        pixel_array=np.ascontiguousarray(frames.astype(dtype)),
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=[
            _segment(k, str(labels[k]), jaxseg.__version__) for k in range(1, num_classes)
        ],
        series_instance_uid=generate_uid(),
        series_number=int(sources[0].get("SeriesNumber") or 0) + 1000,
        sop_instance_uid=generate_uid(),
        instance_number=1,
        manufacturer="jaxseg",
        manufacturer_model_name="jaxseg",
        software_versions=jaxseg.__version__,
        device_serial_number="0",
        series_description=series_description,
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    seg.save_as(path)
    return path


def _disk_shape(reference: io.Image) -> tuple[int, ...]:
    shape = tuple(reference.original_shape)
    return shape if len(shape) == 3 else (*shape, 1)
