import gzip

import nibabel as nib
import numpy as np
import pytest
from PIL import Image as PILImage

from jaxseg.data import io
from jaxseg.errors import DataError

from .conftest import save_nifti


def _lps_permuted_affine():
    # disk axis 0 -> world -Y (P), disk axis 1 -> world -X (L), disk axis 2 -> +Z; spacing 0.8, 0.6, 2.5
    a = np.zeros((4, 4))
    a[1, 0], a[0, 1], a[2, 2], a[3, 3] = -0.8, -0.6, 2.5, 1.0
    a[:3, 3] = [10.0, 20.0, -30.0]
    return a


def test_nifti_3d_reorientation_and_write_mask_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    disk = rng.normal(size=(5, 6, 7)).astype(np.float32)
    aff = _lps_permuted_affine()
    p = save_nifti(tmp_path / "img.nii.gz", disk, aff)
    im = io.read_image([p], dims=3)
    # canonical X = disk axis 1 reversed, Y = disk axis 0 reversed, Z = disk axis 2
    expected = np.transpose(disk, (1, 0, 2))[::-1, ::-1, :]
    assert im.data.shape == (6, 5, 7, 1) and im.data.dtype == np.float32
    np.testing.assert_array_equal(im.data[..., 0], expected)
    np.testing.assert_allclose(im.spacing, (0.6, 0.8, 2.5), rtol=1e-6)
    assert np.all(np.diag(im.affine)[:3] > 0)
    np.testing.assert_allclose(im.original_affine, aff)
    assert im.original_shape == (5, 6, 7)
    # canonical affine maps canonical voxels to the same world points as the disk affine
    ijk = np.array([1, 2, 3])
    disk_ijk = np.array([5 - 1 - ijk[1], 6 - 1 - ijk[0], ijk[2]])
    np.testing.assert_allclose(im.affine @ np.r_[ijk, 1], aff @ np.r_[disk_ijk, 1])

    mask = (im.data[..., 0] > 0).astype(np.uint8) + (im.data[..., 0] > 1)
    out = io.write_mask(mask, im, tmp_path / "mask.nii.gz")
    back = nib.load(str(out))
    assert back.shape == (5, 6, 7)
    np.testing.assert_allclose(back.affine, aff, atol=1e-5)
    assert back.get_data_dtype() == np.uint8
    np.testing.assert_array_equal(
        np.asarray(back.dataobj), (disk > 0).astype(np.uint8) + (disk > 1)
    )


@pytest.mark.parametrize("disk_shape", [(6, 5), (6, 5, 1)])
def test_nifti_2d_round_trip(tmp_path, disk_shape):
    rng = np.random.default_rng(1)
    disk = rng.normal(size=disk_shape).astype(np.float32)
    aff = np.diag([-0.7, -0.9, 1.0, 1.0])  # LPS-like flips in-plane
    p = save_nifti(tmp_path / "s.nii.gz", disk, aff)
    im = io.read_image(p, dims=2)
    d2 = disk.reshape(6, 5)
    np.testing.assert_array_equal(im.data[..., 0], d2[::-1, ::-1])
    np.testing.assert_allclose(im.spacing, (0.7, 0.9), rtol=1e-6)
    lab, laff, lsp = io.read_label(
        save_nifti(tmp_path / "l.nii.gz", (disk > 0).reshape(disk_shape), aff, np.uint8), 2
    )
    assert lab.dtype == np.int32 and lab.shape == (6, 5)
    np.testing.assert_allclose(laff, im.affine)
    out = io.write_mask((im.data[..., 0] > 0).astype(np.uint8), im, tmp_path / "m.nii.gz")
    back = nib.load(str(out))
    assert back.shape == disk_shape
    np.testing.assert_array_equal(np.asarray(back.dataobj), (disk > 0).astype(np.uint8))


def test_msd_4d_channels(tmp_path):
    disk = np.random.default_rng(2).normal(size=(4, 5, 6, 2)).astype(np.float32)
    p = save_nifti(tmp_path / "x.nii.gz", disk, np.diag([-1.0, 1.0, 1.0, 1.0]))
    im = io.read_image([p], 3)
    assert im.data.shape == (4, 5, 6, 2)
    np.testing.assert_array_equal(im.data, disk[::-1])


@pytest.mark.parametrize("suffix", [".png", ".tif"])
def test_pil_grey_and_rgb(tmp_path, suffix):
    rng = np.random.default_rng(3)
    grey = rng.integers(0, 256, size=(7, 9), dtype=np.uint8)  # 7 rows, 9 columns
    rgb = rng.integers(0, 256, size=(7, 9, 3), dtype=np.uint8)
    PILImage.fromarray(grey).save(tmp_path / f"g{suffix}")
    PILImage.fromarray(rgb).save(tmp_path / f"c{suffix}")
    g = io.read_image([tmp_path / f"g{suffix}"], 2)
    c = io.read_image([tmp_path / f"c{suffix}"], 2)
    assert g.data.shape == (9, 7, 1) and c.data.shape == (9, 7, 3)  # x = column, y = row
    np.testing.assert_array_equal(g.data[..., 0], grey.T)
    np.testing.assert_array_equal(c.data, np.swapaxes(rgb, 0, 1))
    assert g.spacing == (1.0, 1.0) and g.original_shape == (9, 7)
    # a mask written for the PNG overlays it pixel for pixel
    mask = (g.data[..., 0] > 128).astype(np.uint8)
    io.write_mask(mask, g, tmp_path / "m.png")
    np.testing.assert_array_equal(
        np.asarray(PILImage.open(tmp_path / "m.png")), (grey > 128).astype(np.uint8)
    )
    PILImage.fromarray((grey > 128).astype(np.uint8)).save(tmp_path / f"lab{suffix}")
    lab, _, _ = io.read_label(tmp_path / f"lab{suffix}", 2)
    np.testing.assert_array_equal(lab, mask)


def test_truncated_nifti_gz(tmp_path):
    p = save_nifti(
        tmp_path / "full.nii.gz", np.random.default_rng(0).normal(size=(16, 16, 16)), np.eye(4)
    )
    raw = p.read_bytes()
    for n, name in [
        (len(raw) // 2, "half.nii.gz"),
        (len(raw) - 4, "tail.nii.gz"),
        (40, "head.nii.gz"),
    ]:
        bad = tmp_path / name
        bad.write_bytes(raw[:n])
        with pytest.raises(DataError, match=name):
            io.read_image([bad], 3)
    (tmp_path / "junk.nii.gz").write_bytes(gzip.compress(b"not a nifti at all"))
    with pytest.raises(DataError, match="junk.nii.gz"):
        io.read_image([tmp_path / "junk.nii.gz"], 3)


def test_missing_file(tmp_path):
    with pytest.raises(DataError, match="nope.nii.gz"):
        io.read_image([tmp_path / "nope.nii.gz"], 3)


def test_nan_and_inf_voxels(tmp_path):
    d = np.zeros((4, 4, 4), np.float32)
    d[0, 0, 0], d[1, 1, 1], d[2, 2, 2] = np.nan, np.inf, -np.inf
    p = save_nifti(tmp_path / "nan.nii.gz", d, np.eye(4))
    with pytest.raises(DataError, match=r"nan\.nii\.gz.*3 NaN/Inf"):
        io.read_image([p], 3)


def test_non_integer_label(tmp_path):
    p = save_nifti(tmp_path / "l.nii.gz", np.full((3, 3, 3), 0.5), np.eye(4))
    with pytest.raises(DataError, match="not integers"):
        io.read_label(p, 3)


def test_wrong_dims(tmp_path):
    p = save_nifti(tmp_path / "v.nii.gz", np.zeros((4, 4, 3)), np.eye(4))
    with pytest.raises(DataError, match="v.nii.gz"):
        io.read_image([p], 2)


def test_multi_file_channels(tmp_path):
    a = save_nifti(tmp_path / "a_0000.nii.gz", np.ones((3, 4, 5)), np.eye(4))
    b = save_nifti(tmp_path / "a_0001.nii.gz", 2 * np.ones((3, 4, 5)), np.eye(4))
    im = io.read_image([a, b], 3)
    assert im.data.shape == (3, 4, 5, 2) and im.path == a
    np.testing.assert_array_equal(im.data[0, 0, 0], [1, 2])
    c = save_nifti(tmp_path / "a_0002.nii.gz", np.ones((3, 4, 6)), np.eye(4))
    with pytest.raises(DataError, match="a_0002"):
        io.read_image([a, c], 3)


@pytest.mark.parametrize("bad", [0.0, float("nan")])
def test_zero_or_nan_spacing_names_the_file(tmp_path, bad):
    """pixdim[2] (the y spacing) patched in the file's bytes: the NIfTI-1 header keeps
    pixdim as 8 float32 at byte 76 (nibabel would rewrite it from the affine)."""
    raw = tmp_path / "raw.nii"
    nib.save(nib.Nifti1Image(np.ones((4, 5, 6), np.float32), np.eye(4)), raw)
    data = bytearray(raw.read_bytes())
    data[76 + 4 * 2 : 76 + 4 * 3] = np.float32(bad).tobytes()
    path = tmp_path / "bad_spacing.nii.gz"
    path.write_bytes(gzip.compress(bytes(data)))
    with pytest.raises(DataError, match=r"bad_spacing\.nii\.gz.*spacing"):
        io.read_image([path], 3)
