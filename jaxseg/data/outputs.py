"""Where a command may write: the one home for output-path checks.

Every command that writes (predict's masks, export's SavedModel, evaluate's report, plan's
files, train's workdir) checks its output here BEFORE any model is run, so that a bad path
costs seconds, not a whole inference, and never a user's data:

- an output never replaces an input: not the same path, not the same file through a
  symlink or hardlink (`os.path.samefile`), not a file inside an input DICOM series folder;
- an output folder is a folder and an output file is not a folder;
- the place is writable: the nearest existing folder on the way is probed by creating and
  removing a temporary file (this catches permissions, read-only file systems and
  pseudo-file systems such as /proc, for root too, where `os.access` says yes);
- a folder that a command replaces as a whole (export) holds a previous export or nothing.

Remote paths (`gs://`, `s3://`) are not probed: their permissions are known only on write.
Each check raises `DataError` naming the path and what to do.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable
from pathlib import Path

from jaxseg.errors import DataError

__all__ = [
    "Inputs",
    "is_remote",
    "check_writable",
    "check_not_input",
    "check_output_file",
    "check_output_dir",
    "check_export_dir",
    "check_not_dataset",
]

_REMOTE = ("gs://", "s3://")


def is_remote(path: str | os.PathLike) -> bool:
    return str(path).startswith(_REMOTE)


def _nearest_existing(path: Path) -> Path:
    probe = path
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    return probe


def check_writable(path: str | os.PathLike, what: str = "output") -> None:
    """DataError unless `path` (a file or folder, existing or not) can be written.

    A missing path is writable when its nearest existing ancestor is a folder in which a
    file can be created (the folders between are created on write).
    """
    if is_remote(path):
        return
    path = Path(path).absolute()
    if path.exists():
        if not os.access(path, os.W_OK):
            raise DataError(
                f"{what} {path}: not writable (permission denied or a read-only file "
                "system); choose another path or fix its permissions."
            )
        if path.is_file():
            return
        folder = path
    else:
        folder = _nearest_existing(path.parent)
        if not folder.is_dir():
            raise DataError(
                f"{what} {path}: {folder} is a file, not a folder; choose another path."
            )
    try:
        fd, probe = tempfile.mkstemp(prefix=".jaxseg-write-check-", dir=folder)
    except OSError as e:
        reason = e.strerror or type(e).__name__
        raise DataError(
            f"{what} {path}: cannot write into {folder} ({reason}); choose another path "
            "or fix its permissions."
        ) from e
    os.close(fd)
    os.unlink(probe)


def _resolved(path: Path) -> Path:
    try:
        return path.resolve()
    except OSError:
        return path.absolute()


class Inputs:
    """A command's input paths, resolved once (a folder of a thousand cases is checked
    against a thousand outputs): files by resolved path and by (device, inode), so a
    symlink or hardlink is the same file; folders read as one input (DICOM series)."""

    def __init__(self, paths: Iterable[str | os.PathLike]):
        self.by_path: dict[Path, Path] = {}
        self.by_inode: dict[tuple[int, int], Path] = {}
        self.folders: list[tuple[Path, Path]] = []
        for given in paths:
            src = Path(given)
            resolved = _resolved(src)
            self.by_path[resolved] = src
            if src.is_dir():
                self.folders.append((resolved, src))
            elif src.exists():
                st = src.stat()
                self.by_inode[(st.st_dev, st.st_ino)] = src


def check_not_input(
    output: str | os.PathLike,
    inputs: Inputs | Iterable[str | os.PathLike],
    what: str = "output",
) -> None:
    """DataError when writing `output` would replace (or write into) one of `inputs`.

    An input is a file, or a folder that is read as one input (a DICOM series): an output
    equal to it, the same file through a symlink or hardlink (`os.path.samefile`'s test:
    the same device and inode), or inside such a folder is refused.
    """
    if is_remote(output):
        return
    inputs = inputs if isinstance(inputs, Inputs) else Inputs(inputs)
    out = Path(output)
    out_resolved = _resolved(out)
    src = inputs.by_path.get(out_resolved)
    if src is None and out.exists():
        st = out.stat()
        src = inputs.by_inode.get((st.st_dev, st.st_ino))
    if src is not None:
        raise DataError(
            f"{what} {out} is the input {src} (the same file); writing there would "
            "overwrite your data. Choose another output path."
        )
    for resolved, folder in inputs.folders:
        if out_resolved.is_relative_to(resolved):
            raise DataError(
                f"{what} {out} is inside the input folder {folder}, which is read as one input "
                "(a DICOM series); writing there would change it. Choose another output path."
            )


def check_output_file(
    path: str | os.PathLike,
    *,
    inputs: Inputs | Iterable[str | os.PathLike] = (),
    what: str = "output",
) -> None:
    """An output file: not an existing folder, not an input, and writable."""
    if is_remote(path):
        return
    path = Path(path)
    if path.is_dir():
        raise DataError(
            f"{what} {path} is a folder; give a file name (for example {path}/NAME.nii.gz)."
        )
    check_not_input(path, inputs, what)
    check_writable(path, what)


def check_output_dir(
    path: str | os.PathLike,
    *,
    inputs: Inputs | Iterable[str | os.PathLike] = (),
    what: str = "output folder",
) -> None:
    """An output folder: not an existing file, not an input, and writable."""
    if is_remote(path):
        return
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise DataError(f"{what} {path} is a file; give a folder.")
    check_not_input(path, inputs, what)
    check_writable(path, what)


def check_export_dir(
    path: str | os.PathLike, *, marker: str, protect: Iterable[str | os.PathLike] = ()
) -> None:
    """A folder that export replaces as a whole: missing, empty, or a previous export (it
    holds `marker`, the export's metadata file); never a file, never one of `protect` (the
    workdir) or a folder holding one of them; writable.

    A non-empty folder without the marker (a workdir, a dataset, another tool's SavedModel)
    would be deleted by the replacement, so it is refused.
    """
    if is_remote(path):
        return
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise DataError(f"export output {path} is a file; give a folder for the SavedModel.")
    here = _resolved(path)
    for kept in protect:
        kept_resolved = _resolved(Path(kept))
        if here == kept_resolved or kept_resolved.is_relative_to(here):
            raise DataError(
                f"export output {path} is or holds the run {kept}; replacing it would delete "
                f"the run. Choose another output path (for example {kept}/saved_model)."
            )
    if path.is_dir() and any(path.iterdir()) and not (path / marker).is_file():
        raise DataError(
            f"export output {path} is a non-empty folder that is not a jaxseg export (no "
            f"{marker}); export replaces its output folder as a whole, so it refuses to "
            "delete it. Choose a new or empty folder, or a previous export."
        )
    check_writable(path, "export output")


def check_not_dataset(
    path: str | os.PathLike, data_root: str | os.PathLike, what: str = "output folder"
) -> None:
    """DataError when `path` is the dataset folder `data_root`, or inside its image or
    label folders (written files would mix with the data, or replace it)."""
    if is_remote(path) or is_remote(data_root):
        return
    here, root = _resolved(Path(path)), _resolved(Path(data_root))
    if here == root or (
        here.is_relative_to(root)
        and here.relative_to(root).parts[0].startswith(("images", "labels"))
    ):
        raise DataError(
            f"{what} {path} is the dataset folder {data_root} (or one of its image or label "
            "folders); writing there could replace your data. Choose a folder outside it."
        )
