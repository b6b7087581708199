"""DICOM series in (jaxseg.data.dicom through io.read_image), DICOM-SEG out.

The series are written here with plain pydicom from a ground-truth volume V[i, j, k]
(i = column, j = row, k = slice) and its RAS affine A; the same V and A are written as
NIfTI with nibabel (in another on-disk voxel order) and read with jaxseg's NIfTI path.
Both must give the same canonical array (exactly) and affine. DICOM-SEG: test_dicom_seg.
"""

from __future__ import annotations

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    CTImageStorage,
    EnhancedCTImageStorage,
    ExplicitVRLittleEndian,
    JPEGLosslessSV1,
    generate_uid,
)

from jaxseg.data import dicom, io
from jaxseg.errors import DataError

from .conftest import save_nifti

LPS = np.diag([-1.0, -1.0, 1.0, 1.0])
SLOPE, INTERCEPT = 2.0, -1024.0
LABELS = {0: "background", 1: "kidney", 2: "tumour"}


def gt_mask(values):
    """Classes 0, 1, 2 `[I, J, K]` drawn from the ground-truth values."""
    return (values > 1000).astype(np.uint8) + (values > 3500)


def _rotation(ax_deg: float, az_deg: float) -> np.ndarray:
    a, b = np.radians(ax_deg), np.radians(az_deg)
    rx = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
    rz = np.array([[np.cos(b), -np.sin(b), 0], [np.sin(b), np.cos(b), 0], [0, 0, 1]])
    return rz @ rx


# Voxel axes (i, j, k) in RAS of a plain axial DICOM (columns run to the patient's left,
# rows to posterior) and of a sagittal one (i to posterior, j down, k to the right): both
# reorient to canonical RAS by a flip or a permutation, so the canonicalisation is tested.
AXIAL = np.diag([-1.0, -1.0, 1.0])
SAGITTAL = np.array([[0.0, 0, 1], [-1, 0, 0], [0, -1, 0]])


def ground_truth(shape=(6, 5, 7), spacing=(0.7, 0.9, 2.5), angles=(20.0, 35.0), seed=0, base=AXIAL):
    """-> (stored uint16 [I, J, K], real values float32, RAS affine of (i, j, k)): `base`
    rotated about x then z by `angles` (oblique about two axes), anisotropic spacing."""
    stored = np.random.default_rng(seed).integers(0, 3000, size=shape).astype(np.uint16)
    affine = np.eye(4)
    affine[:3, :3] = _rotation(*angles) @ base @ np.diag(spacing)
    affine[:3, 3] = [12.5, -30.25, 41.0]
    return stored, (stored * SLOPE + INTERCEPT).astype(np.float32), affine


def _base(series_uid, sop_class, study_uid, frame_uid) -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = sop_class
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = (
        study_uid,
        series_uid,
        frame_uid,
    )
    ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = "Phantom^Test", "P1", "", "O"
    ds.StudyDate, ds.StudyTime, ds.StudyID, ds.AccessionNumber = "20260101", "120000", "1", ""
    ds.ReferringPhysicianName, ds.SeriesNumber, ds.Modality = "", 3, "CT"
    ds.SeriesDescription = "oblique phantom"
    ds.Manufacturer = "test"
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    return ds


def _geometry(affine, k):
    """DICOM geometry of slice k: IPP (LPS), IOP, PixelSpacing (row, column spacing)."""
    lps = LPS @ affine
    col_step, row_step = lps[:3, 0], lps[:3, 1]
    iop = [*(col_step / np.linalg.norm(col_step)), *(row_step / np.linalg.norm(row_step))]
    ipp = (lps @ np.array([0, 0, k, 1.0]))[:3]
    return ipp, iop, [float(np.linalg.norm(row_step)), float(np.linalg.norm(col_step))]


def write_single_frame(
    folder, stored, affine, *, seed=1, series_uid=None, order=None, rescale=(SLOPE, INTERCEPT)
):
    """One file per slice, file names and InstanceNumbers in a shuffled order."""
    folder.mkdir(parents=True, exist_ok=True)
    nk = stored.shape[2]
    rng = np.random.default_rng(seed)
    order = rng.permutation(nk) if order is None else order
    instance = rng.permutation(nk) + 1  # InstanceNumber says nothing about position
    uids = series_uid or generate_uid(), generate_uid(), generate_uid()
    files = []
    for n, k in enumerate(order):
        ds = _base(uids[0], CTImageStorage, uids[1], uids[2])
        ipp, iop, ps = _geometry(affine, k)
        ds.ImagePositionPatient, ds.ImageOrientationPatient, ds.PixelSpacing = (
            list(ipp),
            iop,
            ps,
        )
        ds.SliceThickness = float(np.linalg.norm(affine[:3, 2]))
        ds.RescaleSlope, ds.RescaleIntercept = rescale
        ds.InstanceNumber = int(instance[k])
        ds.Rows, ds.Columns = stored.shape[1], stored.shape[0]
        ds.PixelData = np.ascontiguousarray(stored[:, :, k].T).tobytes()  # [rows, cols]
        path = folder / f"IM{n:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        files.append(path)
    return files


def write_multi_frame(path, stored, affine, *, seed=2):
    """An enhanced CT: per-frame positions in a shuffled frame order, shared rest."""
    path.parent.mkdir(parents=True, exist_ok=True)
    order = np.random.default_rng(seed).permutation(stored.shape[2])
    ds = _base(generate_uid(), EnhancedCTImageStorage, generate_uid(), generate_uid())
    ds.NumberOfFrames, ds.InstanceNumber = len(order), 1
    ds.Rows, ds.Columns = stored.shape[1], stored.shape[0]
    _, iop, ps = _geometry(affine, 0)
    shared = Dataset()
    measures, orientation, rescale = Dataset(), Dataset(), Dataset()
    measures.PixelSpacing, measures.SliceThickness = ps, float(np.linalg.norm(affine[:3, 2]))
    orientation.ImageOrientationPatient = iop
    rescale.RescaleSlope, rescale.RescaleIntercept, rescale.RescaleType = SLOPE, INTERCEPT, "HU"
    shared.PixelMeasuresSequence = [measures]
    shared.PlaneOrientationSequence = [orientation]
    shared.PixelValueTransformationSequence = [rescale]
    ds.SharedFunctionalGroupsSequence = [shared]
    per = []
    for k in order:
        item, position = Dataset(), Dataset()
        position.ImagePositionPatient = list(_geometry(affine, k)[0])
        item.PlanePositionSequence = [position]
        per.append(item)
    ds.PerFrameFunctionalGroupsSequence = per
    frames = np.stack([stored[:, :, k].T for k in order])  # [frames, rows, cols]
    ds.PixelData = np.ascontiguousarray(frames).tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path, order


def nifti_reference(tmp_path, values, affine):
    """The same volume as NIfTI, stored flipped along k and with i, j swapped (so the
    on-disk order differs from the DICOM's), read with jaxseg's NIfTI path."""
    disk = np.transpose(values[:, :, ::-1], (1, 0, 2))
    nk = values.shape[2]
    flip_swap = np.array([[0, 1, 0, 0], [1, 0, 0, 0], [0, 0, -1, nk - 1], [0, 0, 0, 1.0]])
    path = save_nifti(tmp_path / "ref.nii.gz", disk, affine @ flip_swap)
    return io.read_image(path, dims=3)


def _assert_same_image(got: io.Image, ref: io.Image):
    assert got.data.shape == ref.data.shape
    np.testing.assert_array_equal(got.data, ref.data)
    # NIfTI stores its affine as float32, DICOM positions as decimal strings.
    np.testing.assert_allclose(got.affine, ref.affine, atol=1e-4)
    np.testing.assert_allclose(got.spacing, ref.spacing, rtol=1e-6)


def test_single_frame_oblique_matches_nifti(tmp_path):
    stored, values, affine = ground_truth()
    write_single_frame(tmp_path / "series", stored, affine)
    got = io.read_image(tmp_path / "series", dims=3)
    assert got.data.shape[:3] != stored.shape or not np.array_equal(got.data[..., 0], values)
    _assert_same_image(got, nifti_reference(tmp_path, values, affine))
    assert got.data.dtype == np.float32 and got.data.min() == INTERCEPT + SLOPE * stored.min()


def test_multi_frame_oblique_matches_nifti(tmp_path):
    stored, values, affine = ground_truth(angles=(-25.0, 50.0), seed=3, base=SAGITTAL)
    path, _ = write_multi_frame(tmp_path / "enhanced.dcm", stored, affine)
    got = io.read_image(path, dims=3)
    _assert_same_image(got, nifti_reference(tmp_path, values, affine))
    # A folder holding the one multi-frame file reads the same.
    _assert_same_image(io.read_image(path.parent, dims=3), got)


def test_matches_highdicom_volume(tmp_path):
    """A second, independent reader: highdicom's own series -> volume geometry."""
    import highdicom as hd

    stored, values, affine = ground_truth(angles=(10.0, -40.0), seed=4)
    files = write_single_frame(tmp_path / "s", stored, affine)
    vol = hd.get_volume_from_series([pydicom.dcmread(f) for f in files]).to_patient_orientation(
        "LPH"
    )
    # -> RAS (i, j, k) world points of voxel 0 and the per-axis steps.
    arr, series = dicom.read_volume(tmp_path / "s")
    got = io.read_image(tmp_path / "s", dims=3)
    ref = save_nifti(tmp_path / "hd.nii.gz", vol.array, LPS @ vol.affine)
    _assert_same_image(got, io.read_image(ref, dims=3))
    assert series.shape == arr.shape == stored.shape


def test_sorting_ignores_instance_number_and_file_names(tmp_path):
    stored, values, affine = ground_truth(seed=5)
    write_single_frame(tmp_path / "a", stored, affine, seed=11)
    write_single_frame(tmp_path / "b", stored, affine, seed=12, order=np.arange(7)[::-1])
    a, b = io.read_image(tmp_path / "a", 3), io.read_image(tmp_path / "b", 3)
    _assert_same_image(a, b)
    arr, series = dicom.read_volume(tmp_path / "a")
    np.testing.assert_array_equal(arr, values)  # [I, J, K] = the ground truth's own order
    np.testing.assert_allclose(series.affine, affine, atol=1e-6)


def test_compressed_transfer_syntaxes_decode(tmp_path):
    from pydicom.uid import JPEGLSLossless, RLELossless

    stored, values, affine = ground_truth(seed=6)
    files = write_single_frame(tmp_path / "s", stored, affine)
    plain = io.read_image(tmp_path / "s", 3)
    for syntax in (RLELossless, JPEGLSLossless):
        for f in files:
            ds = pydicom.dcmread(f)
            if ds.file_meta.TransferSyntaxUID.is_compressed:
                ds.decompress()
            ds.compress(syntax)
            ds.save_as(f)
        assert pydicom.dcmread(files[0]).file_meta.TransferSyntaxUID == syntax
        np.testing.assert_array_equal(io.read_image(tmp_path / "s", 3).data, plain.data)


def test_missing_decoder_names_the_package_to_install(tmp_path):
    if pydicom.pixels.get_decoder(JPEGLosslessSV1).is_available:
        pytest.skip("a JPEG Lossless decoder (pylibjpeg or gdcm) is installed here")
    from pydicom.encaps import encapsulate

    stored, _, affine = ground_truth(seed=7)
    files = write_single_frame(tmp_path / "s", stored, affine)
    for f in files:
        ds = pydicom.dcmread(f)
        ds.file_meta.TransferSyntaxUID = JPEGLosslessSV1
        ds.PixelData = encapsulate([b"\xff\xd8\xff\xd9"])
        ds["PixelData"].VR = "OB"
        ds.save_as(f)
    with pytest.raises(DataError, match="no installed decoder") as e:
        io.read_image(tmp_path / "s", 3)
    assert "`pip install pylibjpeg pylibjpeg-libjpeg`" in str(e.value)
    assert "`pip install python-gdcm`" in str(e.value)


def test_dataset_json_entry_may_be_a_series_folder(tmp_path):
    import json

    from jaxseg.data import dataset

    stored, values, affine = ground_truth(seed=16)
    write_single_frame(tmp_path / "ds" / "1.2.840.99", stored, affine)
    save_nifti(tmp_path / "ds" / "lab.nii.gz", gt_mask(values), affine, np.uint8)
    meta = {
        "name": "dicom",
        "modality": {"0": "CT"},
        "labels": {str(k): v for k, v in LABELS.items()},
        "training": [{"image": "1.2.840.99", "label": "lab.nii.gz"}],
    }
    (tmp_path / "ds" / "dataset.json").write_text(json.dumps(meta))
    spec = dataset.load_dataset(tmp_path / "ds")
    assert spec.dims == 3 and spec.training[0].case_id == "1.2.840.99"
    image, classes = dataset.load_case(spec, spec.training[0])
    _assert_same_image(image, nifti_reference(tmp_path, values, affine))
    assert classes.shape == image.data.shape[:-1] and classes.max() == 2


# ----------------------------------------------------------------------------- bad input


def test_folder_without_image_series_is_named(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("not DICOM")
    with pytest.raises(DataError, match=r"empty: holds no DICOM image series"):
        io.read_image(tmp_path / "empty", 3)


def test_two_series_list_uids_and_descriptions(tmp_path):
    stored, _, affine = ground_truth(seed=8)
    write_single_frame(tmp_path / "s", stored, affine, series_uid="1.2.3.4")
    for f in sorted((tmp_path / "s").iterdir())[:3]:
        ds = pydicom.dcmread(f)
        ds.SeriesInstanceUID, ds.SeriesDescription = "1.2.3.5", "localiser"
        ds.save_as(f)
    with pytest.raises(DataError) as e:
        io.read_image(tmp_path / "s", 3)
    msg = str(e.value)
    assert "2 series" in msg and "1.2.3.4 'oblique phantom' (4 file(s))" in msg
    assert "1.2.3.5 'localiser' (3 file(s))" in msg


def test_missing_slice_gives_gap_and_positions(tmp_path):
    stored, _, affine = ground_truth(seed=9)  # slice step 2.5 mm
    files = write_single_frame(tmp_path / "s", stored, affine, order=np.arange(7))
    files[3].unlink()
    n = np.cross(*np.reshape(_geometry(affine, 0)[1], (2, 3)))
    d = [float(_geometry(affine, k)[0] @ n) for k in range(7)]
    with pytest.raises(DataError, match="missing slice") as e:
        io.read_image(tmp_path / "s", 3)
    msg = str(e.value)
    assert "a gap of 5.00 mm" in msg and f"{d[2]:.2f} and {d[4]:.2f}" in msg
    assert "about 1 slice(s) missing" in msg and f"{d[6]:.2f}]" in msg


def test_truncated_slice_file_is_named(tmp_path):
    stored, _, affine = ground_truth(seed=18)
    files = write_single_frame(tmp_path / "s", stored, affine, order=np.arange(7))
    whole = files[3].read_bytes()
    files[3].write_bytes(whole[:-20])  # pixel data cut short
    with pytest.raises(DataError, match=r"IM0003.dcm: cannot decode the pixel data"):
        io.read_image(tmp_path / "s", 3)
    files[3].write_bytes(whole[:300])  # cut inside the header: no longer an image
    with pytest.raises(DataError, match=r"missing slice.*1 file\(s\) in the folder were skipped"):
        io.read_image(tmp_path / "s", 3)


def test_uneven_spacing_gives_gap(tmp_path):
    stored, _, affine = ground_truth(seed=10)
    files = write_single_frame(tmp_path / "s", stored, affine, order=np.arange(7))
    ds = pydicom.dcmread(files[6])
    n = np.cross(*np.reshape(ds.ImageOrientationPatient, (2, 3)))
    ds.ImagePositionPatient = list(np.asarray(ds.ImagePositionPatient, float) + 0.3 * n)
    ds.save_as(files[6])
    with pytest.raises(DataError, match=r"uneven slice spacing: a gap of 2\.800 mm"):
        io.read_image(tmp_path / "s", 3)
    # Within the tolerance (1% of 2.5 mm) the series reads.
    ds.ImagePositionPatient = list(np.asarray(ds.ImagePositionPatient, float) - 0.29 * n)
    ds.save_as(files[6])
    assert io.read_image(tmp_path / "s", 3).data.size == stored.size


def test_gantry_tilt_is_rejected(tmp_path):
    stored, _, affine = ground_truth(seed=11)
    tilted = affine.copy()
    tilted[:3, 2] += 0.3 * affine[:3, 1] / np.linalg.norm(affine[:3, 1])  # slices slide along y
    # The slices keep their orientation (and normal); only their positions shift.
    files = []
    for k in range(7):
        folder = tmp_path / "s"
        files += write_single_frame(folder / str(k), stored[:, :, k : k + 1], affine, order=[0])
    # Re-place slice k at the tilted position, all in one series folder.
    series = generate_uid()
    for k, f in enumerate(files):
        ds = pydicom.dcmread(f)
        ds.SeriesInstanceUID = series
        ds.ImagePositionPatient = list(_geometry(tilted, k)[0])
        ds.save_as(tmp_path / "s" / f"{k}.dcm")
    with pytest.raises(DataError, match=r"gantry tilt: the slice positions run 6\.8\d degrees"):
        io.read_image(tmp_path / "s", 3)


def test_duplicate_positions_are_rejected(tmp_path):
    stored, _, affine = ground_truth(seed=12)
    files = write_single_frame(tmp_path / "s", stored, affine)
    ds = pydicom.dcmread(files[0])
    ds.SOPInstanceUID = generate_uid()
    ds.save_as(tmp_path / "s" / "echo2.dcm")
    with pytest.raises(DataError, match="same position"):
        io.read_image(tmp_path / "s", 3)


def test_size_limit_is_checked_before_pixels_are_read(tmp_path):
    stored, _, affine = ground_truth(seed=13)  # 6 x 5 x 7 x 2 bytes = 420
    write_single_frame(tmp_path / "s", stored, affine)
    with pytest.raises(DataError, match=r"\(6, 5, 7\) voxels .* 420 bytes, above the limit of 419"):
        io.read_image(tmp_path / "s", 3, max_bytes=419)
    assert io.read_image(tmp_path / "s", 3, max_bytes=420).data.size == 210


@pytest.mark.parametrize(
    "name",
    [
        "MR_small_jp2klossless.dcm",  # JPEG 2000 (Pillow)
        "MR_small_RLE.dcm",
        "MR_small_jpeg_ls_lossless.dcm",  # pyjpegls
        "MR_small_implicit.dcm",
        "MR_small_bigendian.dcm",
    ],
)
def test_pydicom_sample_files_decode_like_the_uncompressed_one(name):
    """Real scanner files shipped with pydicom: one axial slice, read as a 2D image."""
    from pydicom.data import get_testdata_file

    reference = io.read_image(get_testdata_file("MR_small.dcm"), dims=2)
    got = io.read_image(get_testdata_file(name), dims=2)
    np.testing.assert_array_equal(got.data, reference.data)
    np.testing.assert_allclose(got.affine, reference.affine)


def test_ct_sample_gets_pydicoms_modality_lut_in_ras_order():
    from pydicom.data import get_testdata_file
    from pydicom.pixels import apply_modality_lut

    path = get_testdata_file("CT_small.dcm")
    ds = pydicom.dcmread(path)
    assert [round(float(v)) for v in ds.ImageOrientationPatient] == [1, 0, 0, 0, 1, 0]
    hu = apply_modality_lut(ds.pixel_array, ds)  # [rows, cols]
    got = io.read_image(path, dims=2)
    # Columns run to the patient's left (-x in RAS), rows to posterior (-y): both flip.
    np.testing.assert_array_equal(got.data[..., 0], hu.T[::-1, ::-1].astype(np.float32))
    assert got.spacing == (float(ds.PixelSpacing[1]), float(ds.PixelSpacing[0]))


def test_one_series_per_channel(tmp_path):
    stored, values, affine = ground_truth(seed=19)
    write_single_frame(tmp_path / "t1", stored, affine)
    write_single_frame(tmp_path / "t2", stored[..., ::-1].copy(), affine, seed=3)
    image = io.read_image([tmp_path / "t1", tmp_path / "t2"], dims=3)
    ref = nifti_reference(tmp_path, values, affine)
    assert image.num_channels == 2
    np.testing.assert_array_equal(image.data[..., :1], ref.data)
    flipped = nifti_reference(tmp_path / "b", values[..., ::-1].copy(), affine)
    np.testing.assert_array_equal(image.data[..., 1:], flipped.data)
