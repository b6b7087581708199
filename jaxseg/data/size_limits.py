"""How big an image may be: the limit on what a file's header may claim, and the capped
gunzip of a `.nii.gz` (`jaxseg.data.io` applies both before any voxel is read).

The limit is `data.max_image_bytes` (`DEFAULT_MAX_IMAGE_BYTES`, 4 GiB); a face sets it
for the reads it makes through the pipeline with `limit_image_bytes`, or a caller passes
`max_bytes` to `io.read_image` / `io.read_label`.
"""

from __future__ import annotations

import contextlib
import contextvars
import gzip
from pathlib import Path

import nibabel as nib
import numpy as np

from jaxseg.errors import DataError

__all__ = [
    "DEFAULT_MAX_IMAGE_BYTES",
    "limit_image_bytes",
    "resolve_limit",
    "check_claimed_size",
    "gunzip_capped",
    "nifti_class",
]

DEFAULT_MAX_IMAGE_BYTES = 4 * 2**30  # the default of data.max_image_bytes
_MAX_BYTES = contextvars.ContextVar("max_image_bytes", default=DEFAULT_MAX_IMAGE_BYTES)
_GZIP_CHUNK = 16 * 2**20


@contextlib.contextmanager
def limit_image_bytes(max_bytes: int):
    """Within the block, reads that pass no `max_bytes` use this limit (a face sets it
    from `data.max_image_bytes` / `--max-image-bytes` around code that reads through the
    pipeline). Worker processes keep the default."""
    if not isinstance(max_bytes, int) or isinstance(max_bytes, bool) or max_bytes < 1:
        raise DataError(f"max_image_bytes = {max_bytes!r}: give a positive number of bytes.")
    token = _MAX_BYTES.set(max_bytes)
    try:
        yield
    finally:
        _MAX_BYTES.reset(token)


def resolve_limit(max_bytes: int | None) -> int:
    """`max_bytes`, or the `limit_image_bytes` setting when None."""
    return _MAX_BYTES.get() if max_bytes is None else int(max_bytes)


def check_claimed_size(
    path: Path, shape, dtype, max_bytes: int, *, itemsize: int | None = None
) -> None:
    """DataError when `shape` x `dtype` (from a header, before reading) exceeds the limit.
    `itemsize` overrides the dtype's (a PIL mode name as `dtype`)."""
    shape = tuple(int(v) for v in shape)
    if itemsize is None:
        itemsize, dtype = np.dtype(dtype).itemsize, np.dtype(dtype).name
    nbytes = int(np.prod(shape, dtype=object)) * itemsize  # exact: no int64 overflow
    if nbytes > max_bytes:
        raise DataError(
            f"{path}: the header claims shape {shape} {dtype}, {nbytes:,} bytes, above "
            f"the limit of {max_bytes:,} bytes (data.max_image_bytes, --max-image-bytes). "
            "If the image is real, raise the limit; else the header is corrupt."
        )


def gunzip_capped(path: Path, max_bytes: int) -> bytes:
    """The whole decompressed `.nii.gz`, its header's claimed size checked after the first
    chunk and inflation stopped past `max_bytes` plus the header; GzipFile verifies the CRC
    and length at the end, so a truncated file is still an error."""
    cap = max_bytes + 2**20  # header, extensions and alignment on top of the voxels
    parts, total = [], 0
    with gzip.open(path, "rb") as f:
        while chunk := f.read(_GZIP_CHUNK):
            if not parts:
                klass = nifti_class(chunk)
                header = klass.header_class(chunk[: klass.header_class.template_dtype.itemsize])
                check_claimed_size(
                    path, header.get_data_shape(), header.get_data_dtype(), max_bytes
                )
            total += len(chunk)
            if total > cap:
                raise DataError(
                    f"{path}: decompresses to more than its header claims and past the "
                    f"limit of {max_bytes:,} bytes (data.max_image_bytes, --max-image-bytes; "
                    "plus 1 MiB for the header); the file is corrupt or a decompression bomb."
                )
            parts.append(chunk)
    return b"".join(parts)


def nifti_class(raw: bytes):
    """Nifti1Image or Nifti2Image, from the header size in the first 4 bytes."""
    sizeof_hdr = {int.from_bytes(raw[:4], "little"), int.from_bytes(raw[:4], "big")}
    return nib.Nifti2Image if 540 in sizeof_hdr else nib.Nifti1Image
