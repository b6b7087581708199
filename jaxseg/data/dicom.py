"""Read a DICOM image series (a folder, or one multi-frame file) with pydicom.

`read_volume(path, dims)` returns the voxels in the series' own voxel order, `[I, J, K]`
float32 with I = column, J = row and K = slice (sorted along the slice normal), and the
RAS affine of that grid. `jaxseg.data.io.read_image` then canonicalises it exactly as it
does a NIfTI file, so a series and the same volume written as NIfTI give the same
`io.Image` (array, affine, spacing).

Geometry (DICOM is LPS, jaxseg RAS):
    row cosine r and column cosine c are `ImageOrientationPatient[:3]` and `[3:]`; the
    normal is n = r x c. Slices are sorted by `ImagePositionPatient . n`, never by
    `InstanceNumber` or file name. `PixelSpacing` is (row spacing, column spacing): a step
    along I (the next column) moves `PixelSpacing[1]` mm along r, a step along J moves
    `PixelSpacing[0]` mm along c. The slice step is the mean gap along n. The RAS affine is
    `diag(-1, -1, 1, 1) @ [[r*dc, c*dr, n*ds, p0], [0, 0, 0, 1]]`.
Values: `stored * RescaleSlope + RescaleIntercept` per frame (Hounsfield units for CT).
Forms: single-frame files (one per slice), and enhanced multi-frame files whose geometry
and rescale live in `PerFrameFunctionalGroupsSequence` / `SharedFunctionalGroupsSequence`.
Compressed transfer syntaxes decode through pydicom's pixel handlers (pillow, pyjpegls,
pylibjpeg or python-gdcm, whichever is installed); a missing one is named in the error.

Rejected with a DataError naming the folder or file: no image series; several series in
one folder; slices that differ in orientation, size or pixel spacing; duplicate slice
positions; missing slices or spacing that varies by more than `SPACING_RTOL`; gantry tilt
(slice positions off the normal by more than `TILT_TOLERANCE` pixels); colour images.
Non-image objects (DICOM-SEG, RTSTRUCT, SR, presentation states) and non-DICOM files in
a folder are ignored.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pydicom
import pydicom.errors
from pydicom.dataset import Dataset

from jaxseg.errors import DataError

__all__ = ["Series", "Slice", "is_dicom_path", "read_series", "read_volume", "series_dims"]

SPACING_RTOL = 0.01  # gaps along the normal may differ from their median by 1%
TILT_TOLERANCE = 0.25  # slice positions may leave the normal line by 1/4 pixel
_ORIENTATION_ATOL = 1e-4
_NOT_IMAGES = {"SEG", "RTSTRUCT", "RTPLAN", "RTDOSE", "SR", "PR", "KO", "REG", "DOC"}
_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
# pydicom names plugins by import name; pip installs them under these names.
_PIP_NAMES = {"gdcm": "python-gdcm"}


@dataclasses.dataclass(frozen=True)
class Slice:
    """One frame of a series: where it is and how its stored values become real ones."""

    file: Path
    frame: int | None  # 0-based frame of a multi-frame file; None for a single-frame file
    position: np.ndarray  # (3,) ImagePositionPatient, LPS mm
    orientation: np.ndarray  # (6,) ImageOrientationPatient (row cosine, column cosine)
    pixel_spacing: tuple[float, float]  # (row spacing, column spacing) mm
    slope: float
    intercept: float


@dataclasses.dataclass(frozen=True, eq=False)
class Series:
    """A validated series: slices sorted along the normal, the grid's RAS affine.

    `affine` maps the voxel `(i, j, k)` = (column, row, sorted slice) to RAS mm;
    `zooms` is (column spacing, row spacing, slice spacing); `shape` is (I, J, K).
    `headers` holds each file's dataset without pixel data.
    """

    path: Path
    slices: tuple[Slice, ...]
    affine: np.ndarray
    zooms: tuple[float, float, float]
    shape: tuple[int, int, int]
    headers: dict[Path, Dataset]
    series_uid: str


def is_dicom_path(path: str | Path) -> bool:
    """A folder (read as one series) or a `.dcm` file."""
    path = Path(path)
    return path.is_dir() or path.name.lower().endswith(".dcm")


# ----------------------------------------------------------------------------- headers


def _read_headers(path: Path) -> tuple[list[tuple[Path, Dataset]], int]:
    """(file, header) of every DICOM image object under `path`, and how many files were
    skipped as not DICOM or not images."""
    if path.is_dir():
        files = sorted(
            p
            for p in path.iterdir()
            if p.is_file() and not p.name.startswith(".") and p.name.upper() != "DICOMDIR"
        )
    elif path.is_file():
        files = [path]
    else:
        raise DataError(f"{path}: DICOM file or folder not found. Check the path.")
    found, skipped = [], 0
    for f in files:
        try:
            ds = pydicom.dcmread(f, stop_before_pixels=True)
        except pydicom.errors.InvalidDicomError as e:
            if path.is_file():
                raise DataError(f"{f}: not a DICOM file ({e}).") from e
            skipped += 1
            continue
        except (OSError, ValueError, EOFError, KeyError) as e:
            raise DataError(
                f"{f}: cannot read DICOM file ({type(e).__name__}: {e}); it is truncated or "
                "corrupt. Re-export the series."
            ) from e
        modality = str(ds.get("Modality", "")).upper()
        if "Rows" not in ds or "Columns" not in ds or modality in _NOT_IMAGES:
            skipped += 1
            continue
        found.append((f, ds))
    return found, skipped


def _one_series(path: Path, found: list[tuple[Path, Dataset]], skipped: int):
    if not found:
        raise DataError(
            f"{path}: holds no DICOM image series ({skipped} file(s) are not DICOM images). "
            "Pass the folder that holds the series' slice files."
        )
    groups: dict[str, list[tuple[Path, Dataset]]] = {}
    for f, ds in found:
        groups.setdefault(str(ds.get("SeriesInstanceUID", "")), []).append((f, ds))
    if len(groups) > 1:
        listing = "; ".join(
            f"{uid or '(no SeriesInstanceUID)'} '{items[0][1].get('SeriesDescription', '')}' "
            f"({len(items)} file(s))"
            for uid, items in groups.items()
        )
        raise DataError(
            f"{path}: holds {len(groups)} series, expected one: {listing}. Put each series "
            "in a folder of its own."
        )
    return next(iter(groups.items()))


def _attr(f: Path, ds: Dataset, name: str):
    value = ds.get(name)
    if value is None or value == "":
        raise DataError(f"{f}: missing {name}; without it the slice cannot be placed in space.")
    return value


def _group_attr(per: Dataset | None, shared: Dataset | None, seq: str, name: str, top):
    """An attribute of a functional group: per-frame first, then shared, then top level."""
    for group in (per, shared):
        if group is not None and seq in group and len(group[seq].value):
            item = group[seq].value[0]
            if name in item:
                return item[name].value
    return top.get(name) if top is not None else None


def _frames(f: Path, ds: Dataset) -> list[Slice]:
    if int(ds.get("SamplesPerPixel", 1)) != 1:
        raise DataError(
            f"{f}: a colour image ({ds.get('PhotometricInterpretation', '')}, "
            f"{ds.SamplesPerPixel} samples per pixel); only greyscale series are read."
        )
    n = int(ds.get("NumberOfFrames", 1) or 1)
    per_frame = ds.get("PerFrameFunctionalGroupsSequence")
    if per_frame is None:
        if n > 1:
            raise DataError(
                f"{f}: a multi-frame file ({n} frames) without "
                "PerFrameFunctionalGroupsSequence, so its frames have no positions. Convert "
                "it to an enhanced multi-frame or a single-frame series."
            )
        return [
            Slice(
                f,
                None,
                np.asarray(_attr(f, ds, "ImagePositionPatient"), float),
                np.asarray(_attr(f, ds, "ImageOrientationPatient"), float),
                tuple(float(v) for v in _attr(f, ds, "PixelSpacing")),
                float(ds.get("RescaleSlope", 1) or 1),
                float(ds.get("RescaleIntercept", 0) or 0),
            )
        ]
    if len(per_frame) != n:
        raise DataError(
            f"{f}: NumberOfFrames is {n} but PerFrameFunctionalGroupsSequence has "
            f"{len(per_frame)} items."
        )
    shared_seq = ds.get("SharedFunctionalGroupsSequence")
    shared = shared_seq[0] if shared_seq else None
    out = []
    for i, per in enumerate(per_frame):
        got = {}
        for seq, name in (
            ("PlanePositionSequence", "ImagePositionPatient"),
            ("PlaneOrientationSequence", "ImageOrientationPatient"),
            ("PixelMeasuresSequence", "PixelSpacing"),
        ):
            got[name] = _group_attr(per, shared, seq, name, ds)
            if got[name] is None:
                raise DataError(f"{f}: frame {i + 1} has no {name} (in {seq}).")
        rescale = "PixelValueTransformationSequence"
        slope = _group_attr(per, shared, rescale, "RescaleSlope", ds)
        icept = _group_attr(per, shared, rescale, "RescaleIntercept", ds)
        out.append(
            Slice(
                f,
                i,
                np.asarray(got["ImagePositionPatient"], float),
                np.asarray(got["ImageOrientationPatient"], float),
                tuple(float(v) for v in got["PixelSpacing"]),
                float(1 if slope in (None, "") else slope),
                float(0 if icept in (None, "") else icept),
            )
        )
    return out


# ----------------------------------------------------------------------------- geometry


def _positions_text(d: np.ndarray, around: Sequence[int] = ()) -> str:
    if len(d) <= 24:
        return "[" + ", ".join(f"{v:.2f}" for v in d) + "]"
    near = sorted({j for i in around[:3] for j in range(max(i - 2, 0), min(i + 4, len(d)))})
    shown = ", ".join(f"#{j}: {d[j]:.2f}" for j in near)
    return f"[{d[0]:.2f} .. {d[-1]:.2f} over {len(d)} slices; near the gap {shown}]"


def _check_same(path: Path, slices: list[Slice], found) -> tuple[int, int]:
    first = slices[0]
    sizes = {(int(ds.Rows), int(ds.Columns)) for _, ds in found}
    if len(sizes) > 1:
        raise DataError(
            f"{path}: the slices differ in size (rows, columns) {sorted(sizes)}; one series "
            "must share one grid."
        )
    for s in slices[1:]:
        if not np.allclose(s.orientation, first.orientation, atol=_ORIENTATION_ATOL):
            raise DataError(
                f"{path}: slices differ in ImageOrientationPatient ({s.file}: "
                f"{np.round(s.orientation, 5).tolist()} vs {first.file}: "
                f"{np.round(first.orientation, 5).tolist()}); is a localiser mixed in?"
            )
        if not np.allclose(s.pixel_spacing, first.pixel_spacing, rtol=1e-4):
            raise DataError(
                f"{path}: slices differ in PixelSpacing ({s.file}: {s.pixel_spacing} vs "
                f"{first.file}: {first.pixel_spacing})."
            )
    return sizes.pop()


def _check_stack(path: Path, slices: list[Slice], d: np.ndarray, n: np.ndarray, skipped: int):
    """DataError for duplicate positions, gantry tilt, missing slices or uneven spacing of
    `slices` (sorted; `d` their positions along the normal `n`) -> the slice step in mm."""
    gaps = np.diff(d)
    dup = np.flatnonzero(gaps < 0.01)  # mm; no real slice spacing is that fine
    if dup.size:
        i = int(dup[0])
        raise DataError(
            f"{path}: {slices[i].file.name} and {slices[i + 1].file.name} lie at the same "
            f"position {d[i]:.2f} mm along the normal ({dup.size} duplicate(s)): several "
            "echoes, phases or time points in one series. Split them into one folder each."
        )
    p0 = slices[0].position
    offsets = np.array([s.position for s in slices]) - p0
    perp = offsets - (offsets @ n)[:, None] * n
    worst = int(np.argmax(np.linalg.norm(perp, axis=1)))
    if np.linalg.norm(perp[worst]) > TILT_TOLERANCE * min(slices[0].pixel_spacing):
        angle = np.degrees(np.arctan2(np.linalg.norm(perp[-1]), abs(offsets[-1] @ n)))
        raise DataError(
            f"{path}: gantry tilt: the slice positions run {angle:.2f} degrees off the "
            f"slice normal (slice {worst} is {np.linalg.norm(perp[worst]):.2f} mm off). "
            "A tilted stack is not a rectilinear grid; resample it first (e.g. "
            "dcm2niix corrects gantry tilt)."
        )
    step = float(np.median(gaps))
    missing = np.flatnonzero(gaps > 1.5 * step)
    if missing.size:
        i = int(missing[0])
        raise DataError(
            f"{path}: missing slice(s): a gap of {gaps[i]:.2f} mm between the slices at "
            f"{d[i]:.2f} and {d[i + 1]:.2f} mm along the normal, where the spacing is "
            f"{step:.2f} mm (about {round(gaps[i] / step) - 1} slice(s) missing"
            f"{f', {missing.size} gap(s) in all' if missing.size > 1 else ''}). Slice "
            f"positions (mm): {_positions_text(d, missing)}. Re-export the full series"
            + (
                f" ({skipped} file(s) in the folder were skipped as not DICOM images)."
                if skipped
                else "."
            )
        )
    uneven = np.flatnonzero(np.abs(gaps - step) > SPACING_RTOL * step)
    if uneven.size:
        i = int(uneven[np.argmax(np.abs(gaps[uneven] - step))])
        raise DataError(
            f"{path}: uneven slice spacing: a gap of {gaps[i]:.3f} mm between the slices "
            f"at {d[i]:.2f} and {d[i + 1]:.2f} mm along the normal, where the spacing is "
            f"{step:.3f} mm (tolerance {SPACING_RTOL:.0%}). Slice positions (mm): "
            f"{_positions_text(d, uneven)}. Resample the series to a uniform spacing."
        )
    return float((d[-1] - d[0]) / (len(d) - 1))


def _sorted_geometry(path: Path, slices: list[Slice], dims: int, header: Dataset, skipped: int):
    """-> (slices sorted along the normal, RAS affine, zooms)."""
    ori = slices[0].orientation
    r, c = ori[:3] / np.linalg.norm(ori[:3]), ori[3:] / np.linalg.norm(ori[3:])
    if abs(r @ c) > 1e-3:
        raise DataError(f"{path}: ImageOrientationPatient {ori.tolist()} is not orthogonal.")
    n = np.cross(r, c)
    along = np.array([s.position @ n for s in slices])
    order = np.argsort(along, kind="stable")
    slices = [slices[i] for i in order]
    d = along[order]
    dr, dc = slices[0].pixel_spacing
    if len(slices) == 1:
        if dims == 3:
            raise DataError(
                f"{path}: the series has one slice; a 3D dataset needs a volume (set dims 2 "
                "for single-slice images)."
            )
        ds_ = float(header.get("SpacingBetweenSlices") or header.get("SliceThickness") or 1.0)
    else:
        if dims == 2:
            raise DataError(
                f"{path}: the series has {len(slices)} slices; a 2D dataset reads one slice "
                "per image (set dims 3 for volumes)."
            )
        ds_ = _check_stack(path, slices, d, n, skipped)
    lps = np.eye(4)
    lps[:3, 0], lps[:3, 1], lps[:3, 2] = r * dc, c * dr, n * ds_
    lps[:3, 3] = slices[0].position
    return slices, _LPS_TO_RAS @ lps, (float(dc), float(dr), ds_)


def read_series(path: str | Path, dims: int = 3) -> Series:
    """Reads and validates a series' headers (no pixel data). DataError when unusable."""
    path = Path(path)
    found, skipped = _read_headers(path)
    uid, found = _one_series(path, found, skipped)
    slices = [s for f, ds in found for s in _frames(f, ds)]
    rows, cols = _check_same(path, slices, found)
    slices, affine, zooms = _sorted_geometry(path, slices, dims, found[0][1], skipped)
    return Series(
        path=path,
        slices=tuple(slices),
        affine=affine,
        zooms=zooms,
        shape=(cols, rows, len(slices)),
        headers=dict(found),
        series_uid=uid,
    )


def series_dims(path: str | Path) -> int:
    """2 for a one-slice series (a 2D image), else 3; a dataset without "dims" uses it."""
    path = Path(path)
    found, skipped = _read_headers(path)
    _, found = _one_series(path, found, skipped)
    return 2 if sum(int(ds.get("NumberOfFrames", 1) or 1) for _, ds in found) == 1 else 3


# ----------------------------------------------------------------------------- pixels


def _pip_hint(missing: Sequence[str]) -> str:
    """pydicom's 'pylibjpeg - requires pylibjpeg>=2.0 and pylibjpeg-libjpeg>=2.1' lines ->
    `pip install pylibjpeg pylibjpeg-libjpeg` or `pip install python-gdcm`."""
    options = []
    for line in missing:
        needs = line.split("requires", 1)[-1]
        names = []
        for req in needs.split(" and "):
            name = req.strip().split(">")[0].split("=")[0].split("<")[0].strip()
            names.append(_PIP_NAMES.get(name, name))
        options.append("`pip install " + " ".join(names) + "`")
    return " or ".join(options) or "a pydicom pixel-data plugin"


def _check_decoder(f: Path, ds: Dataset) -> None:
    ts = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    if ts is None or not ts.is_compressed:
        return
    try:
        decoder = pydicom.pixels.get_decoder(ts)
    except NotImplementedError as e:
        raise DataError(
            f"{f}: pixel data in transfer syntax {ts.name} ({ts}), which pydicom cannot "
            "decode. Convert the series to an uncompressed one (dcmtk `dcmdjpeg`, gdcm "
            "`gdcmconv --raw`)."
        ) from e
    if not decoder.is_available:
        raise DataError(
            f"{f}: pixel data compressed as {ts.name} ({ts}) and no installed decoder handles "
            f"it. Install one: {_pip_hint(decoder.missing_dependencies)}."
        )


def read_volume(
    path: str | Path, dims: int = 3, *, max_bytes: int | None = None
) -> tuple[np.ndarray, Series]:
    """-> (float32 `[I, J, K]` real values (column, row, sorted slice), its Series).

    For dims=2 the series must have one slice; the array is `[I, J, 1]`. `max_bytes`: the
    largest stored size (columns x rows x slices x BitsAllocated / 8) the headers may
    claim before any pixel is read (`data.max_image_bytes`); None: no limit.
    """
    series = read_series(path, dims)
    if max_bytes is not None:
        bits = int(next(iter(series.headers.values())).get("BitsAllocated", 16))
        nbytes = int(np.prod(series.shape, dtype=object)) * max(bits // 8, 1)
        if nbytes > max_bytes:
            raise DataError(
                f"{series.path}: the headers claim {series.shape} voxels (columns, rows, "
                f"slices) of {bits} bits, {nbytes:,} bytes, above the limit "
                f"of {max_bytes:,} bytes (data.max_image_bytes, --max-image-bytes). If the "
                "series is real, raise the limit."
            )
    out = np.empty(series.shape, np.float32)
    by_file: dict[Path, list[tuple[int, Slice]]] = {}
    for k, s in enumerate(series.slices):
        by_file.setdefault(s.file, []).append((k, s))
    for f, items in by_file.items():
        try:
            ds = pydicom.dcmread(f)
            _check_decoder(f, ds)
            pixels = ds.pixel_array
        except DataError:
            raise
        except Exception as e:  # any decoder failure: the file is at fault, name it
            raise DataError(
                f"{f}: cannot decode the pixel data ({type(e).__name__}: {e}). The file is "
                "truncated or corrupt; re-export the series."
            ) from e
        for k, s in items:
            frame = pixels if s.frame is None or pixels.ndim == 2 else pixels[s.frame]
            out[:, :, k] = (frame.astype(np.float64) * s.slope + s.intercept).T
    return out, series
