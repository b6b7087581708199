"""Image-size limits on read (issue 11, item 2): a header that claims a huge volume, a
gzip stream that decompresses to more than it should, and Pillow's decompression bomb are
each a DataError naming the file, raised before the big allocation."""

import gzip
import struct
import zlib

import nibabel as nib
import numpy as np
import pytest

from jaxseg.data import io
from jaxseg.errors import DataError

HUGE = (30000, 30000, 30000)  # int16: 5.4e13 bytes, far beyond any machine's memory


def _nifti_bytes(data, dim_override=None) -> bytes:
    """A NIfTI-1 single file (.nii) as bytes; `dim_override` rewrites the header's dim
    field (offset 40, int16[8]) to claim another shape than the data it holds."""
    img = nib.Nifti1Image(data, np.eye(4))
    raw = bytearray(img.to_bytes())
    if dim_override is not None:
        dims = [len(dim_override), *dim_override] + [1] * (7 - len(dim_override))
        raw[40:56] = struct.pack("<8h", *dims)
    return bytes(raw)


@pytest.mark.parametrize("suffix", [".nii", ".nii.gz"])
def test_huge_header_is_refused_before_allocation(tmp_path, suffix):
    raw = _nifti_bytes(np.zeros((4, 4, 4), np.int16), dim_override=HUGE)
    path = tmp_path / f"huge{suffix}"
    path.write_bytes(gzip.compress(raw) if suffix == ".nii.gz" else raw)
    claimed = int(np.prod(HUGE, dtype=np.int64)) * 2  # int16, independently of the code
    with pytest.raises(DataError) as e:
        io.read_image(path, dims=3)
    msg = str(e.value)
    assert str(path) in msg and "(30000, 30000, 30000)" in msg and f"{claimed:,}" in msg
    assert "max_image_bytes" in msg
    with pytest.raises(DataError, match="30000, 30000, 30000"):
        io.read_label(path, dims=3)


def test_limit_is_inclusive_and_counts_shape_times_dtype(tmp_path):
    data = np.arange(5 * 6 * 7, dtype=np.float32).reshape(5, 6, 7)
    path = tmp_path / "img.nii.gz"
    path.write_bytes(gzip.compress(_nifti_bytes(data)))
    exact = data.size * 4  # float32 on disk
    image = io.read_image(path, dims=3, max_bytes=exact)
    np.testing.assert_array_equal(image.data[..., 0], data)  # identity affine: already RAS
    with pytest.raises(DataError, match=rf"\(5, 6, 7\) float32.*{exact:,} bytes"):
        io.read_image(path, dims=3, max_bytes=exact - 1)
    with io.limit_image_bytes(exact - 1):  # the faces' setting for reads deep in the pipeline
        with pytest.raises(DataError, match="img.nii.gz"):
            io.read_image(path, dims=3)
    io.read_image(path, dims=3)  # the default applies again outside the block


def test_gzip_that_decompresses_past_the_limit(tmp_path):
    """The header claims 8x8x8 uint8, but the stream inflates to 32 MiB (trailing zeros)."""
    raw = _nifti_bytes(np.ones((8, 8, 8), np.uint8)) + bytes(32 * 2**20)
    path = tmp_path / "bomb.nii.gz"
    path.write_bytes(gzip.compress(raw))
    assert path.stat().st_size < 100_000
    with pytest.raises(
        DataError, match=r"bomb\.nii\.gz: decompresses.*past the limit of 1,048,576"
    ):
        io.read_image(path, dims=3, max_bytes=2**20)
    with pytest.raises(DataError, match="decompresses to more than its header claims"):
        io.read_label(path, dims=3, max_bytes=2**20)


def test_truncated_gzip_is_still_reported(tmp_path):
    raw = gzip.compress(_nifti_bytes(np.ones((8, 8, 8), np.float32)))
    path = tmp_path / "cut.nii.gz"
    path.write_bytes(raw[:-6])  # cut inside the gzip trailer
    with pytest.raises(DataError, match=r"cut\.nii\.gz.*truncated or corrupt"):
        io.read_image(path, dims=3)


def _png_claiming(width: int, height: int) -> bytes:
    """A PNG whose IHDR claims width x height 8-bit greyscale, with one tiny IDAT."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return (
            struct.pack(">I", len(body))
            + kind
            + body
            + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\0" * 16))
        + chunk(b"IEND", b"")
    )


def test_pillow_decompression_bomb_is_a_data_error(tmp_path):
    """Pillow raises DecompressionBombError (a plain Exception) in open() for a header
    over 2 x MAX_IMAGE_PIXELS; it must not escape as a traceback."""
    path = tmp_path / "bomb.png"
    path.write_bytes(_png_claiming(100_000, 100_000))
    with pytest.raises(DataError, match=r"bomb\.png"):
        io.read_image(path, dims=2)
    with pytest.raises(DataError, match=r"bomb\.png"):
        io.read_label(path, dims=2)


def test_pil_image_over_the_byte_limit(tmp_path):
    from PIL import Image as PILImage

    path = tmp_path / "small.png"
    PILImage.fromarray(np.zeros((48, 40), np.uint8)).save(path)
    io.read_image(path, dims=2, max_bytes=40 * 48)
    with pytest.raises(DataError, match=r"small\.png.*\(40, 48\).*1,920 bytes"):
        io.read_image(path, dims=2, max_bytes=40 * 48 - 1)


def test_max_image_bytes_is_a_config_key():
    from jaxseg.defaults import base_config

    assert base_config().data.max_image_bytes == io.DEFAULT_MAX_IMAGE_BYTES == 4 * 2**30
