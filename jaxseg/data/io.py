"""Read and write images and masks: NIfTI (nibabel) and 2D PNG/TIFF (PIL).

Every array returned here is in canonical RAS voxel order, channels-last:
images `[X, Y, (Z,) C]` float32, labels `[X, Y, (Z)]` int32.

NIfTI
    Read with nibabel and reoriented to the closest canonical (RAS+) orientation, exactly
    as `nib.as_closest_canonical` does (a permutation and flips of the voxel axes, no
    resampling). `Image.affine` and `Image.spacing` are the canonical affine and the
    canonical header zooms; `Image.original_affine` and `Image.original_shape` remember the
    file as it is on disk, so that `write_mask` can undo the reorientation exactly.
    `.nii.gz` files are decompressed in full and their gzip checksum verified, so a
    truncated or corrupt file is reported as a `DataError` naming it (nibabel alone reads
    a file cut inside its gzip trailer without complaint).
    3D images are `[X, Y, Z]` or, MSD style, `[X, Y, Z, C]` (channels on the 4th axis).
    2D images are stored as `[X, Y]`, `[X, Y, 1]` or `[X, Y, 1, C]`. The singleton axis
    takes part in the reorientation (so a coronal slice keeps its R and S axes in that
    order) and is then dropped.

PNG / TIFF / GIF (2D only)
    Read with PIL. Axis convention: **x is the column index and y is the row index**, i.e.
    `data[x, y] == pixel(column=x, row=y)` (the transpose of `np.asarray(pil_image)`).
    The affine is the identity (spacing 1 x 1, no orientation information), so the
    canonical array is just that transpose. Greyscale modes (1, L, I;16, I, F) give C=1,
    RGB gives C=3; RGBA/LA are accepted only when fully opaque. A palette ("P") label
    image whose used colours are all grey gives those grey values (a 0/255 mask saved as
    GIF is stored as indices 0/1 with a black/white palette); a colour palette gives the
    indices (VOC style). `write_mask` to a `.png`/`.tif` path transposes back, so a mask
    written for a PNG input overlays it pixel for pixel. GIF is read, never written.

DICOM (a series folder, or a `.dcm` file)
    Read by `jaxseg.data.dicom` into the series' voxel order (column, row, slice sorted
    along the normal) with its RAS affine, then canonicalised exactly as a NIfTI file.
    `original_affine` / `original_shape` are that grid, so `write_mask` writes a NIfTI
    mask on it; `jaxseg.data.dicom_seg.write_dicom_seg` writes a DICOM-SEG instead.

Size limit
    Before any voxel is read, the header's shape x dtype gives the image's bytes; above
    `max_bytes` (`data.max_image_bytes`, `DEFAULT_MAX_IMAGE_BYTES` = 4 GiB unless a face
    sets `limit_image_bytes`) the file is refused with a DataError naming it, the claimed
    shape and size. A `.nii.gz` is inflated in chunks and refused once it passes the same
    size (a header may lie small). Pillow's decompression-bomb error is a DataError too.
    The limit and the capped gunzip live in `jaxseg.data.size_limits`.
"""

from __future__ import annotations

import dataclasses
import os
import zlib
from collections.abc import Sequence
from pathlib import Path

import nibabel as nib
import nibabel.wrapstruct
import numpy as np
from nibabel import orientations as nio

from jaxseg.data.size_limits import (
    DEFAULT_MAX_IMAGE_BYTES,
    check_claimed_size,
    gunzip_capped,
    limit_image_bytes,
    nifti_class,
    resolve_limit,
)
from jaxseg.errors import DataError

__all__ = [
    "Image",
    "read_image",
    "read_label",
    "write_mask",
    "mask_dtype",
    "check_mask_path",
    "limit_image_bytes",
    "DEFAULT_MAX_IMAGE_BYTES",
    "NIFTI_SUFFIXES",
    "PIL_SUFFIXES",
]

NIFTI_SUFFIXES = (".nii.gz", ".nii")
PIL_SUFFIXES = (".png", ".tif", ".tiff", ".gif")
_WRITE_SUFFIXES = (".nii.gz", ".nii", ".png", ".tif", ".tiff")

_RAS = np.array([[0, 1], [1, 1], [2, 1]], dtype=float)


@dataclasses.dataclass(frozen=True, eq=False)
class Image:
    """An image in canonical RAS voxel order.

    Attributes:
      data: float32 `[X, Y, (Z,) C]`, canonical RAS voxel order, channels last.
      affine: 4x4 float64 canonical affine (voxel index -> world mm, RAS).
      spacing: `dims` floats, voxel size in mm along the canonical axes.
      original_affine: 4x4 affine of the file as stored on disk.
      original_shape: spatial shape of the file as stored on disk (e.g. `(X, Y)` or
        `(X, Y, 1)` for a 2D NIfTI, `(W, H)` for a PNG).
      path: the first file the image was read from.
    """

    data: np.ndarray
    affine: np.ndarray
    spacing: tuple[float, ...]
    original_affine: np.ndarray
    original_shape: tuple[int, ...]
    path: Path

    @property
    def dims(self) -> int:
        return self.data.ndim - 1

    @property
    def num_channels(self) -> int:
        return int(self.data.shape[-1])


# ----------------------------------------------------------------------------- helpers


def _suffix(path: Path) -> str:
    name = path.name.lower()
    for s in NIFTI_SUFFIXES + PIL_SUFFIXES:
        if name.endswith(s):
            return s
    return path.suffix.lower()


def _check_exists(path: Path) -> None:
    if not path.is_file():
        raise DataError(f"{path}: file not found. Check the path (and dataset.json entries).")


def _load_nifti(path: Path, max_bytes: int):
    """Loads a NIfTI file fully into memory, turning every read failure into DataError.
    The header's claimed size is checked against `max_bytes` before the voxels are read."""
    _check_exists(path)
    try:
        if path.name.lower().endswith(".gz"):
            raw = gunzip_capped(path, max_bytes)
            img = nifti_class(raw).from_bytes(raw)
        else:
            img = nib.load(str(path))
        check_claimed_size(
            path, img.header.get_data_shape(), img.header.get_data_dtype(), max_bytes
        )
        arr = np.asanyarray(img.dataobj)
    except (
        EOFError,
        zlib.error,
        OSError,
        ValueError,
        nib.filebasedimages.ImageFileError,
        nib.spatialimages.HeaderDataError,
        nib.wrapstruct.WrapStructError,
    ) as e:
        raise DataError(
            f"{path}: cannot read NIfTI file ({type(e).__name__}: {e}). The file is truncated "
            "or corrupt; re-download or re-export it."
        ) from e
    return img, arr


def _to_canonical(arr: np.ndarray, affine: np.ndarray, zooms3: Sequence[float]):
    """Reorients `arr` (>= 3 axes, first 3 spatial) like nib.as_closest_canonical.

    Returns (canonical array, canonical affine, canonical zooms (3,), ornt).
    """
    ornt = nio.io_orientation(affine)
    if np.array_equal(ornt, _RAS):
        return arr, np.asarray(affine, float), tuple(float(z) for z in zooms3), ornt
    canon = nio.apply_orientation(arr, ornt)
    new_affine = np.asarray(affine, float) @ nio.inv_ornt_aff(ornt, arr.shape[:3])
    zooms = [0.0, 0.0, 0.0]
    for in_ax, (out_ax, _) in enumerate(ornt):
        zooms[int(out_ax)] = float(zooms3[in_ax])
    return canon, new_affine, tuple(zooms), ornt


def _check_header_spacing(path: Path, img, spatial: int) -> None:
    """DataError naming the file when its header's spatial pixdim is zero, negative or not
    finite. nibabel quietly replaces a 0 pixdim by 1 when it reads the header, so the raw
    header is read again unchecked."""
    with nib.openers.ImageOpener(str(path)) as f:
        raw = type(img.header).from_fileobj(f, check=False)
    pixdim = [float(v) for v in raw["pixdim"][1 : 1 + spatial]]
    if not all(np.isfinite(v) and v > 0 for v in pixdim):
        raise DataError(
            f"{path}: the header's voxel spacing (pixdim) is {tuple(pixdim)}; every spacing "
            "must be a finite number > 0 (fix pixdim in the header)."
        )


def _nifti_canonical(path: Path, dims: int, *, allow_channels: bool, max_bytes: int):
    """Reads a NIfTI file -> (canonical array [*spatial(dims), (C)], Image metadata kwargs)."""
    img, arr = _load_nifti(path, max_bytes)
    disk_shape = tuple(int(s) for s in arr.shape)
    zooms = tuple(float(z) for z in img.header.get_zooms())
    _check_header_spacing(path, img, min(arr.ndim, 3))
    if dims == 3:
        if arr.ndim == 3:
            arr4 = arr[..., None]
        elif arr.ndim == 4 and allow_channels:
            arr4 = arr
        else:
            raise DataError(
                f"{path}: has shape {disk_shape}, expected a 3D volume [X, Y, Z]"
                + (" or [X, Y, Z, C]" if allow_channels else "")
                + ". Check the dataset's dims / tensorImageSize."
            )
        spatial_disk = disk_shape[:3]
    else:
        if arr.ndim == 2:
            arr4 = arr[:, :, None, None]
        elif arr.ndim == 3 and arr.shape[2] == 1:
            arr4 = arr[..., None]
        elif arr.ndim == 4 and arr.shape[2] == 1 and allow_channels:
            arr4 = arr
        else:
            raise DataError(
                f"{path}: has shape {disk_shape}; a 2D NIfTI must be stored as [X, Y] or "
                "[X, Y, 1]"
                + (" (or [X, Y, 1, C])" if allow_channels else "")
                + ". For volumes set the dataset's dims to 3."
            )
        spatial_disk = disk_shape[:2] if arr.ndim == 2 else disk_shape[:3]
    zooms3 = (list(zooms) + [1.0, 1.0, 1.0])[:3]
    canon, affine, czooms, ornt = _to_canonical(arr4, img.affine, zooms3)
    if dims == 2:
        single = int(ornt[2, 0])  # where the on-disk singleton axis went
        canon = np.take(canon, 0, axis=single)
        czooms = tuple(z for i, z in enumerate(czooms) if i != single)
    if not allow_channels:
        canon = canon[..., 0]
    meta = dict(
        affine=affine,
        spacing=tuple(czooms[:dims]),
        original_affine=np.asarray(img.affine, float),
        original_shape=tuple(spatial_disk),
    )
    return canon, meta


def _pil_array(path: Path, *, label: bool, max_bytes: int) -> np.ndarray:
    """Reads a PNG/TIFF -> array [X, Y] or [X, Y, 3] (x = column, y = row)."""
    from PIL import Image as PILImage
    from PIL import UnidentifiedImageError

    _check_exists(path)
    try:
        with PILImage.open(path) as im:
            if getattr(im, "n_frames", 1) > 1:
                raise DataError(
                    f"{path}: multi-page image ({im.n_frames} pages) is not supported; "
                    "store volumes as NIfTI."
                )
            # The array's bytes from the header alone, before the pixels are decoded.
            per_band = 4 if im.mode in ("I", "F") else (2 if "16" in im.mode else 1)
            per_pixel = per_band * len(im.getbands())
            check_claimed_size(path, im.size, im.mode, max_bytes, itemsize=per_pixel)
            im.load()
            mode = im.mode
            if mode == "P" and label:
                arr = _palette_label(im)
            elif mode == "P":
                arr = np.asarray(im.convert("RGBA"))
                mode = "RGBA"
            elif mode == "1":
                arr = np.asarray(im.convert("L"))
            else:
                arr = np.asarray(im)
    except DataError:
        raise
    except PILImage.DecompressionBombError as e:  # a plain Exception, raised in open()
        raise DataError(
            f"{path}: refused by Pillow as a possible decompression bomb ({e}). If the "
            "image is real, store it as NIfTI or tiles."
        ) from e
    except (OSError, ValueError, UnidentifiedImageError, SyntaxError) as e:
        raise DataError(
            f"{path}: cannot read image ({type(e).__name__}: {e}). The file is "
            "truncated or not a PNG/TIFF."
        ) from e
    if arr.ndim == 3:
        if arr.shape[2] in (2, 4):  # LA / RGBA: only an all-opaque alpha is accepted
            alpha = arr[..., -1]
            full = np.iinfo(alpha.dtype).max if np.issubdtype(alpha.dtype, np.integer) else 1.0
            if not np.all(alpha == full):
                raise DataError(
                    f"{path}: has a non-opaque alpha channel; save it without "
                    "transparency (greyscale or RGB)."
                )
            arr = arr[..., :-1]
        if arr.shape[2] == 1:
            arr = arr[..., 0]
        elif arr.shape[2] != 3:
            raise DataError(f"{path}: has {arr.shape[2]} channels; expected greyscale or RGB.")
    if label and arr.ndim == 3:
        raise DataError(
            f"{path}: a label image must be single-channel (greyscale or palette "
            "indices), not RGB. Convert colours to class indices first."
        )
    return np.swapaxes(arr, 0, 1)  # [row, col, ...] -> [x=col, y=row, ...]


def _palette_label(im) -> np.ndarray:
    """Palette label image -> [row, col] values: grey levels if every used colour is grey."""
    idx = np.asarray(im)
    palette = np.asarray(im.getpalette() or [], np.int64)
    palette = palette[: palette.size // 3 * 3].reshape(-1, 3)
    used = np.unique(idx)
    if used.size and used.max() < len(palette):
        colours = palette[used]
        if np.all(colours == colours[:, :1]):
            # A greyscale mask that went through a palette format (GIF, optimised PNG): the
            # grey level is what the annotator drew, the index is an encoding detail.
            return palette[:, 0].astype(np.uint8)[idx]
    return idx


def _check_finite(arr: np.ndarray, path: Path) -> None:
    if np.issubdtype(arr.dtype, np.floating):
        bad = int(np.size(arr) - np.count_nonzero(np.isfinite(arr)))
        if bad:
            raise DataError(
                f"{path}: contains {bad} NaN/Inf voxels. Fix or re-export the file "
                "(e.g. replace them with the background value)."
            )


def _dicom_canonical(path: Path, dims: int, max_bytes: int):
    """Reads a DICOM series folder or `.dcm` file -> (canonical `[*spatial(dims)]`, meta),
    canonicalised exactly like a NIfTI file with the series' RAS affine."""
    from jaxseg.data import dicom

    arr, series = dicom.read_volume(path, dims, max_bytes=max_bytes)
    canon, affine, zooms, ornt = _to_canonical(arr, series.affine, series.zooms)
    if dims == 2:  # the single slice axis takes part in the reorientation, then is dropped
        single = int(ornt[2, 0])
        canon = np.take(canon, 0, axis=single)
        zooms = tuple(z for i, z in enumerate(zooms) if i != single)
    meta = dict(
        affine=affine,
        spacing=tuple(zooms[:dims]),
        original_affine=np.asarray(series.affine, float),
        original_shape=tuple(int(v) for v in arr.shape),
    )
    return canon, meta


def _read_one(path: Path, dims: int, max_bytes: int):
    s = _suffix(path)
    if path.is_dir() or s == ".dcm":  # a DICOM series (jaxseg.data.dicom)
        canon, meta = _dicom_canonical(path, dims, max_bytes)
        data = canon[..., None]
    elif s in NIFTI_SUFFIXES:
        canon, meta = _nifti_canonical(path, dims, allow_channels=True, max_bytes=max_bytes)
        data = canon if canon.ndim == dims + 1 else canon[..., None]
    elif s in PIL_SUFFIXES:
        if dims != 2:
            raise DataError(f"{path}: PNG/TIFF images are 2D, but the dataset has dims={dims}.")
        arr = _pil_array(path, label=False, max_bytes=max_bytes)
        data = arr if arr.ndim == 3 else arr[..., None]
        meta = dict(
            affine=np.eye(4),
            spacing=(1.0, 1.0),
            original_affine=np.eye(4),
            original_shape=tuple(int(v) for v in arr.shape[:2]),
        )
    else:
        raise DataError(
            f"{path}: unsupported file type; use .nii.gz, .nii, .png, .tif, .tiff, .gif, "
            "a .dcm file or a DICOM series folder."
        )
    _check_finite(data, path)
    return np.asarray(data, dtype=np.float32), meta


# ----------------------------------------------------------------------------- public


def read_image(
    paths: Sequence[str | Path] | str | Path, dims: int, *, max_bytes: int | None = None
) -> Image:
    """Reads an image, one file per channel (nnU-Net v2) or one multi-channel file (MSD).

    Args:
      paths: a sequence of files (channels are concatenated in order), or a single path.
      dims: 2 or 3.
      max_bytes: largest image a file's header may claim (shape x dtype bytes); None: the
        `limit_image_bytes` setting, by default `DEFAULT_MAX_IMAGE_BYTES`.

    Returns:
      Image with `data` float32 `[X, Y, (Z,) C]` in canonical RAS order.

    Raises:
      DataError: missing/unreadable/truncated file, NaN or Inf voxels, wrong dimensionality,
        channel files that disagree in shape or affine, or a file above `max_bytes`.
    """
    limit = resolve_limit(max_bytes)
    if dims not in (2, 3):
        raise DataError(f"dims must be 2 or 3, got {dims!r}.")
    if isinstance(paths, (str, Path)):
        paths = [paths]
    paths = [Path(p) for p in paths]
    if not paths:
        raise DataError("read_image: no files given.")
    chans, meta0 = [], None
    for p in paths:
        data, meta = _read_one(p, dims, limit)
        if meta0 is None:
            meta0 = meta
        else:
            if data.shape[:-1] != chans[0].shape[:-1]:
                raise DataError(
                    f"{p}: shape {data.shape[:-1]} differs from {paths[0]} "
                    f"{chans[0].shape[:-1]}; all channel files of a case must share one grid."
                )
            if not np.allclose(meta["affine"], meta0["affine"], atol=1e-3):
                raise DataError(
                    f"{p}: affine differs from {paths[0]}; all channel files of a case "
                    "must share one grid (resample them to the first channel)."
                )
        chans.append(data)
    data = chans[0] if len(chans) == 1 else np.concatenate(chans, axis=-1)
    return Image(data=np.ascontiguousarray(data, dtype=np.float32), path=paths[0], **meta0)


def read_label(
    path: str | Path, dims: int, *, max_bytes: int | None = None
) -> tuple[np.ndarray, np.ndarray, tuple[float, ...]]:
    """Reads a label map -> (int32 `[X, Y, (Z)]` canonical, 4x4 canonical affine, spacing).

    Raises DataError for unreadable files, NaN/Inf, non-integer values, a wrong shape, or a
    file above `max_bytes` (as in `read_image`).
    """
    path = Path(path)
    limit = resolve_limit(max_bytes)
    s = _suffix(path)
    if s in NIFTI_SUFFIXES:
        canon, meta = _nifti_canonical(path, dims, allow_channels=False, max_bytes=limit)
        affine, spacing = meta["affine"], meta["spacing"]
    elif s in PIL_SUFFIXES:
        if dims != 2:
            raise DataError(f"{path}: PNG/TIFF labels are 2D, but the dataset has dims={dims}.")
        canon, affine, spacing = (
            _pil_array(path, label=True, max_bytes=limit),
            np.eye(4),
            (1.0, 1.0),
        )
    else:
        raise DataError(
            f"{path}: unsupported file type; use .nii.gz, .nii, .png, .tif, .tiff or .gif."
        )
    _check_finite(canon, path)
    if np.issubdtype(canon.dtype, np.floating):
        rounded = np.rint(canon)
        nonint = int(np.count_nonzero(rounded != canon))
        if nonint:
            raise DataError(
                f"{path}: {nonint} label voxels are not integers; a label map must hold "
                "class indices (was it resampled with linear interpolation?)."
            )
        canon = rounded
    return np.ascontiguousarray(canon, dtype=np.int32), affine, spacing


def mask_dtype(max_value: int) -> np.dtype:
    """The narrowest stored type for mask values 0..max_value: uint8, uint16 or int32."""
    for dtype in (np.uint8, np.uint16, np.int32):
        if max_value <= np.iinfo(dtype).max:
            return np.dtype(dtype)
    raise DataError(f"mask value {max_value} does not fit int32.")


def check_mask_path(path: str | Path, dims: int, dtype=np.uint8) -> None:
    """DataError unless a `dims`-D mask stored as `dtype` can be written to `path`'s type:
    .nii.gz/.nii, or .png/.tif/.tiff for 2D (PNG up to 16 bits). Called before inference
    (`jaxseg.segment`) and again by `write_mask`."""
    path, dtype = Path(path), np.dtype(dtype)
    s = _suffix(path)
    if s not in _WRITE_SUFFIXES:
        raise DataError(
            f"{path}: unsupported output type {s or '(no ending)'!r}; use .nii.gz, .nii, "
            ".png or .tif."
        )
    if s in PIL_SUFFIXES and dims != 2:
        raise DataError(f"{path}: cannot store a {dims}D mask as {s}; write a .nii.gz instead.")
    if s == ".png" and dtype == np.int32:
        raise DataError(f"{path}: PNG holds at most 16-bit values; write a .tif or .nii.gz.")


def write_mask(
    mask_canonical: np.ndarray, reference: Image, path: str | Path, dtype=np.uint8
) -> Path:
    """Writes a mask on the reference image's on-disk grid, undoing the reorientation.

    Args:
      mask_canonical: integer `[X, Y, (Z)]` in canonical order (shape of `reference.data[..., 0]`).
      reference: the Image the mask was predicted for.
      path: output file; `.nii.gz`/`.nii` -> NIfTI with the reference's on-disk affine and
        shape; `.png`/`.tif`/`.tiff` -> 2D image overlaying the reference (x = column).
      dtype: stored type, uint8 by default; uint16 (or int32, not for PNG) for label values
        above 255 (`mask_dtype(max declared value)` picks it).

    Returns the path written.
    """
    path = Path(path)
    mask = np.asarray(mask_canonical)
    dtype = np.dtype(dtype)
    if dtype not in (np.uint8, np.uint16, np.int32):
        raise DataError(f"{path}: mask dtype {dtype} is not one of uint8, uint16, int32.")
    if mask.shape != reference.data.shape[:-1]:
        raise DataError(
            f"{path}: mask shape {mask.shape} does not match the reference image "
            f"{reference.path} shape {reference.data.shape[:-1]}."
        )
    top = np.iinfo(dtype).max
    if mask.size and (mask.min() < 0 or mask.max() > top):
        raise DataError(f"{path}: mask values must be in 0..{top} to be stored as {dtype}.")
    mask = mask.astype(dtype)
    dims = mask.ndim
    disk = _to_disk_grid(mask, reference)
    check_mask_path(path, dims, dtype)
    s = _suffix(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if s in PIL_SUFFIXES:
        from PIL import Image as PILImage

        arr2 = disk.reshape(disk.shape[:2]) if disk.ndim == 3 and disk.shape[2] == 1 else disk
        if arr2.ndim != 2:
            raise DataError(f"{path}: cannot store a {dims}D mask as {s}; write a .nii.gz instead.")
        PILImage.fromarray(np.ascontiguousarray(arr2.T)).save(path)  # uint8 -> L, uint16 -> I;16
    else:
        img = nib.Nifti1Image(np.ascontiguousarray(disk), reference.original_affine)
        img.set_data_dtype(dtype)
        _save_nifti(img, reference, path)
    return path


def _to_disk_grid(canonical: np.ndarray, reference: Image) -> np.ndarray:
    """`[X, Y, (Z)]` in canonical order -> the reference file's on-disk voxel order and shape."""
    ornt = nio.io_orientation(reference.original_affine)
    as3d = np.expand_dims(canonical, int(ornt[2, 0])) if canonical.ndim == 2 else canonical
    back = nio.apply_orientation(as3d, nio.ornt_transform(_RAS, ornt))
    return back.reshape(reference.original_shape)


PROBABILITY_SCALE = 65535  # probability maps: uint16 steps of 1/65535


def write_probabilities(probs_canonical: np.ndarray, reference: Image, path: str | Path) -> Path:
    """Writes class probabilities `[X, Y, (Z), K]` (canonical order, the reference's grid) as
    a NIfTI of shape `(*reference's on-disk shape, K)` with the reference's affine: the last
    axis is the class. NIfTI has no float16, so the values are 16-bit fixed point (uint16
    with `scl_slope = 1/65535`, which every NIfTI reader applies): half the size of float32,
    to within 7.7e-6 of each probability. Written to a temporary file renamed into place, so an
    interrupted write leaves no partial file."""
    path = Path(path)
    probs = np.asarray(probs_canonical)
    if probs.shape[:-1] != reference.data.shape[:-1]:
        raise DataError(
            f"{path}: probabilities of shape {probs.shape[:-1]} do not match the reference "
            f"image {reference.path} shape {reference.data.shape[:-1]}."
        )
    if _suffix(path) not in NIFTI_SUFFIXES:
        raise DataError(f"{path}: probability maps are written as NIfTI; use .nii.gz or .nii.")
    disk = np.stack(
        [_to_disk_grid(probs[..., k], reference) for k in range(probs.shape[-1])], axis=-1
    )
    fixed = np.rint(np.clip(disk, 0.0, 1.0) * PROBABILITY_SCALE).astype(np.uint16)
    img = nib.Nifti1Image(np.ascontiguousarray(fixed), reference.original_affine)
    img.set_data_dtype(np.uint16)
    img.header.set_slope_inter(1.0 / PROBABILITY_SCALE, 0.0)
    return _save_nifti(img, reference, path)


def write_float_map(map_canonical: np.ndarray, reference: Image, path: str | Path) -> Path:
    """Writes a float map `[X, Y, (Z)]` (canonical order, the reference's grid; a Grad-CAM
    map) as a float32 NIfTI with the reference file's on-disk shape and affine, via a
    temporary file renamed into place."""
    path = Path(path)
    data = np.asarray(map_canonical, np.float32)
    if data.shape != reference.data.shape[:-1]:
        raise DataError(
            f"{path}: a map of shape {data.shape} does not match the reference image "
            f"{reference.path} shape {reference.data.shape[:-1]}."
        )
    if _suffix(path) not in NIFTI_SUFFIXES:
        raise DataError(f"{path}: float maps are written as NIfTI; use .nii.gz or .nii.")
    img = nib.Nifti1Image(
        np.ascontiguousarray(_to_disk_grid(data, reference)), reference.original_affine
    )
    img.set_data_dtype(np.float32)
    return _save_nifti(img, reference, path)


def _save_nifti(img, reference: Image, path: Path) -> Path:
    """`img` with the reference's affine as qform and sform, written to a temporary file
    renamed into place, so an interrupted write leaves no partial file."""
    img.header.set_qform(reference.original_affine, code=1)
    img.header.set_sform(reference.original_affine, code=1)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.partial{_suffix(path)}")
    nib.save(img, str(tmp))
    os.replace(tmp, path)
    return path
