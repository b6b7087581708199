"""DICOM-SEG out (jaxseg.data.dicom_seg), read back with highdicom, and `predict
--output-format dicom-seg` end to end. The series are written by test_dicom's pydicom
helpers from a ground-truth volume; the reference is always jaxseg's NIfTI path on a
NIfTI written with nibabel from the same volume and affine.
"""

from __future__ import annotations

import shutil

import highdicom as hd
import numpy as np
import pydicom
import pytest

from jaxseg.data import dicom_seg, io
from jaxseg.errors import DataError
from tests.tiny_config import write_tiny_config

from .conftest import save_nifti
from .test_dicom import (
    LABELS,
    LPS,
    SAGITTAL,
    ground_truth,
    gt_mask,
    nifti_reference,
    write_multi_frame,
    write_single_frame,
)

# ----------------------------------------------------------------------------- DICOM-SEG


def assert_seg_matches(tmp_path, seg, label, label_affine):
    """The SEG's voxels and geometry, as highdicom reads them, equal the canonical `label`
    on `label_affine` (jaxseg's NIfTI path). highdicom's volume spans only the slices that
    hold a segment (empty frames are omitted), so it is placed into the label's grid by
    its world position; everything outside it must be background."""
    vol = seg.get_volume(combine_segments=True, relabel=False)
    back = save_nifti(
        tmp_path / "back.nii.gz",
        np.transpose(vol.array, (2, 1, 0)),  # (frame, row, column) -> (column, row, frame)
        LPS @ vol.affine[:, [2, 1, 0, 3]],
        np.uint8,
    )
    got, got_affine, _ = io.read_label(back, 3)
    np.testing.assert_allclose(got_affine[:3, :3], label_affine[:3, :3], atol=1e-4)
    offset = np.linalg.solve(label_affine, got_affine[:, 3])[:3]
    start = np.rint(offset).astype(int)
    np.testing.assert_allclose(offset, start, atol=1e-3)  # on the label's voxel grid
    region = tuple(slice(a, a + n) for a, n in zip(start, got.shape))
    np.testing.assert_array_equal(label[region], got)
    outside = label.copy()
    outside[region] = 0
    assert not outside.any()


def _seg_round_trip(tmp_path, image: io.Image, gt_mask, affine):
    """Writes the canonical GT mask as DICOM-SEG; -> (SEG read by highdicom, NIfTI path
    canonical GT label)."""
    disk = np.transpose(gt_mask, (1, 0, 2))[:, :, ::-1]  # another on-disk order, as above
    flip_swap = np.array(
        [[0, 1, 0, 0], [1, 0, 0, 0], [0, 0, -1, gt_mask.shape[2] - 1], [0, 0, 0, 1]]
    )
    nifti = save_nifti(tmp_path / "gt.nii.gz", disk, affine @ flip_swap, np.uint8)
    label, label_affine, _ = io.read_label(nifti, 3)
    np.testing.assert_allclose(label_affine, image.affine, atol=1e-4)  # same canonical grid
    out = dicom_seg.write_dicom_seg(label, image, tmp_path / "out" / "seg.dcm", LABELS)
    seg = hd.seg.segread(out)
    assert_seg_matches(tmp_path, seg, label, label_affine)
    assert [(s.SegmentNumber, s.SegmentLabel) for s in seg.SegmentSequence] == [
        (1, "kidney"),
        (2, "tumour"),
    ]
    return seg


def test_dicom_seg_single_frame_references_each_source_slice(tmp_path):
    stored, values, affine = ground_truth(seed=13)
    files = write_single_frame(tmp_path / "s", stored, affine, order=np.arange(7)[::-1])
    image = io.read_image(tmp_path / "s", 3)
    gt = gt_mask(values)
    gt[:, :, [0, 1, 6]] = 0  # empty slices: the SEG omits their frames
    seg = _seg_round_trip(tmp_path, image, gt, affine)
    source = pydicom.dcmread(files[0])
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == source.SeriesInstanceUID
    assert seg.StudyInstanceUID == source.StudyInstanceUID
    assert seg.FrameOfReferenceUID == source.FrameOfReferenceUID
    for n, f in enumerate(files):  # file n holds slice 6 - n
        uid = pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID
        frame = seg.get_pixels_by_source_instance(
            [uid], combine_segments=True, assert_missing_frames_are_empty=True
        )[0]
        np.testing.assert_array_equal(frame, gt[:, :, 6 - n].T)


def test_dicom_seg_multi_frame_maps_back_to_stored_frame_order(tmp_path):
    stored, values, affine = ground_truth(angles=(-30.0, 15.0), seed=14, base=SAGITTAL)
    path, order = write_multi_frame(tmp_path / "mf" / "ct.dcm", stored, affine)
    image = io.read_image(path, 3)
    gt = gt_mask(values)
    seg = _seg_round_trip(tmp_path, image, gt, affine)
    uid = pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID
    frames = seg.get_pixels_by_source_frame(
        uid, source_frame_numbers=list(range(1, len(order) + 1)), combine_segments=True
    )
    for frame_index, k in enumerate(order):  # stored frame i holds slice order[i]
        np.testing.assert_array_equal(frames[frame_index], gt[:, :, k].T)


def test_dicom_seg_for_nifti_input_is_refused(tmp_path):
    _, values, affine = ground_truth(seed=15)
    image = nifti_reference(tmp_path, values, affine)
    with pytest.raises(DataError, match="no source series"):
        dicom_seg.write_dicom_seg(
            np.zeros(image.data.shape[:-1], np.int32), image, tmp_path / "seg.dcm", LABELS
        )
    assert not (tmp_path / "seg.dcm").exists()


def test_dicom_seg_never_overwrites_a_source_file(tmp_path):
    stored, _, affine = ground_truth(seed=17)
    files = write_single_frame(tmp_path / "s", stored, affine)
    image = io.read_image(tmp_path / "s", 3)
    before = files[2].read_bytes()
    with pytest.raises(DataError, match="would overwrite a source image"):
        dicom_seg.write_dicom_seg(
            np.zeros(image.data.shape[:-1], np.int32), image, files[2], LABELS
        )
    assert files[2].read_bytes() == before


# ----------------------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def trained_3d(phantom_3d, tmp_path_factory):
    from jaxseg.config import load_config
    from jaxseg.training.loop import train

    folder = tmp_path_factory.mktemp("dicom_run")
    write_tiny_config(
        folder / "tiny.py",
        phantom_3d,
        steps=1,
        patch_size=(16, 16, 16),
        batch_size=1,
        features=(4, 8),
        settings={"train.eval_every": 100},
    )
    train(load_config(folder / "tiny.py"), folder / "w")
    return folder / "w"


@pytest.mark.e2e
def test_predict_dicom_series_to_dicom_seg_matches_the_nifti_path(trained_3d, phantom_3d, tmp_path):
    """A phantom case as an oblique DICOM series and as NIfTI (same values, same world
    grid): `predict --output-format dicom-seg` on the series gives, read back by highdicom,
    the mask `predict` writes for the NIfTI, voxel for voxel and in world space."""
    from jaxseg import predict

    phantom = io.read_image(sorted((phantom_3d / "imagesTr").iterdir())[0], dims=3).data[..., 0]
    lo, scale = float(phantom.min()), float(np.ptp(phantom)) / 4000
    stored = np.rint((phantom - lo) / scale).astype(np.uint16)
    values = (stored * scale + lo).astype(np.float32)
    _, _, affine = ground_truth(shape=stored.shape, spacing=(1.0, 1.0, 1.0), angles=(8.0, -12.0))
    write_single_frame(tmp_path / "series", stored, affine, rescale=(scale, lo))
    nifti = save_nifti(tmp_path / "case.nii.gz", values, affine)
    args = ["--workdir", str(trained_3d), "--no-tta"]

    assert (
        predict.main([*args, "--input", str(nifti), "--output", str(tmp_path / "ref.nii.gz")]) == 0
    )
    out = tmp_path / "out"
    argv = [
        "--input",
        str(tmp_path / "series"),
        "--output",
        str(out),
        "--output-format",
        "dicom-seg",
    ]
    assert predict.main([*args, *argv]) == 0
    ref, ref_affine, _ = io.read_label(tmp_path / "ref.nii.gz", 3)
    seg = hd.seg.segread(out / "series.dcm")
    assert [s.SegmentLabel for s in seg.SegmentSequence] == ["organ", "edema", "core"]
    assert_seg_matches(tmp_path, seg, ref, ref_affine)
    assert len(np.unique(ref)) > 1  # the test compares a non-trivial mask

    # A NIfTI mask for the series (the default format) lies on the same world grid.
    assert predict.main([*args, "--input", str(tmp_path / "series"), "--output", str(out)]) == 0
    mask, mask_affine, _ = io.read_label(out / "series.nii.gz", 3)
    np.testing.assert_array_equal(mask, ref)
    np.testing.assert_allclose(mask_affine, ref_affine, atol=1e-4)

    # A folder of series folders: one DICOM-SEG per series, named after its folder.
    for name in ("a", "b"):
        shutil.copytree(tmp_path / "series", tmp_path / "batch" / name)
    argv = ["--input", str(tmp_path / "batch"), "--output", str(tmp_path / "segs")]
    assert predict.main([*args, *argv, "--output-format", "dicom-seg"]) == 0
    assert sorted(p.name for p in (tmp_path / "segs").iterdir()) == ["a.dcm", "b.dcm"]
    assert_seg_matches(tmp_path, hd.seg.segread(tmp_path / "segs" / "b.dcm"), ref, ref_affine)

    # DICOM-SEG for a NIfTI input: refused before predicting, nothing written.
    with pytest.raises(DataError, match="no source series"):
        predict.main(
            [
                *args,
                "--input",
                str(nifti),
                "--output",
                str(out / "x.dcm"),
                "--output-format",
                "dicom-seg",
            ]
        )
    assert not (out / "x.dcm").exists()


def test_dicom_seg_for_a_2d_slice(tmp_path):
    """pydicom's CT sample, read as a 2D image: the SEG's one frame overlays the slice."""
    from pydicom.data import get_testdata_file

    path = get_testdata_file("CT_small.dcm")
    image = io.read_image(path, dims=2)
    classes = (image.data[..., 0] > 0).astype(np.int32) + (image.data[..., 0] > 200)
    out = dicom_seg.write_dicom_seg(classes, image, tmp_path / "seg.dcm", LABELS)
    seg = hd.seg.segread(out)
    source = pydicom.dcmread(path)
    frame = seg.get_pixels_by_source_instance([source.SOPInstanceUID], combine_segments=True)[0]
    hu = pydicom.pixels.apply_modality_lut(source.pixel_array, source)  # [rows, cols]
    np.testing.assert_array_equal(frame, (hu > 0).astype(np.uint8) + (hu > 200))
