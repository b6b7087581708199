"""An on-disk cache of per-case preprocessing results (numpy arrays), written atomically.

Slow per-case steps (CLAHE, non-local-means denoising: seconds per volume) run once per
case and input, not once per epoch, validation round, evaluate or predict call. An entry
is `<cache_dir>/<key>.npy`; the key (`array_key`) is a hash of the input array's bytes,
dtype and shape, its spacing, and the JSON description of the step, so an edited image
file, another crop, or a changed step parameter is a different entry. Hashing the content
rather than the file's path and mtime lets predict, evaluate and training share entries,
and a copied or touched dataset keeps them.

Writes go to a temporary file in the same folder, then `os.replace`: an interrupted run
leaves the previous state (no entry, or the whole old one), never a half-written entry.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

__all__ = ["ArrayCache", "array_key", "default_cache_dir"]

# Bump when what a cached step computes changes without its description changing.
_FORMAT = 1


def default_cache_dir() -> Path:
    """`$XDG_CACHE_HOME/jaxseg/preprocess` (default `~/.cache/jaxseg/preprocess`)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "jaxseg" / "preprocess"


def array_key(data: np.ndarray, spacing: Sequence[float], description: dict) -> str:
    """A hex key for `data` (any shape and dtype) at `spacing` under the step `description`
    (JSON-ready)."""
    data = np.ascontiguousarray(data)
    head = json.dumps(
        {
            "format": _FORMAT,
            "shape": list(data.shape),
            "dtype": data.dtype.str,
            "spacing": [float(s) for s in spacing],
            "step": description,
        },
        sort_keys=True,
    )
    h = hashlib.blake2b(head.encode(), digest_size=20)
    h.update(memoryview(data).cast("B"))
    return h.hexdigest()


class ArrayCache:
    """`get_or_compute(key, compute)` -> the cached array, or `compute()` stored under key.

    root: the folder (created on first write). `hits` and `misses` count lookups.
    """

    def __init__(self, root: str | os.PathLike):
        self.root = Path(os.path.expanduser(str(root)))
        self.hits = 0
        self.misses = 0

    def path(self, key: str) -> Path:
        return self.root / f"{key}.npy"

    def get_or_compute(self, key: str, compute: Callable[[], np.ndarray]) -> np.ndarray:
        path = self.path(key)
        if path.exists():
            try:
                out = np.load(path, allow_pickle=False)
                self.hits += 1
                return out
            except (OSError, ValueError) as e:  # unreadable (e.g. a disk error): recompute
                warnings.warn(
                    f"preprocessing cache entry {path} is unreadable ({e}); recomputing it.",
                    stacklevel=2,
                )
        self.misses += 1
        out = compute()
        self._store(path, out)
        return out

    def _store(self, path: Path, array: np.ndarray) -> None:
        tmp = None
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=".tmp")
            with os.fdopen(fd, "wb") as f:
                np.save(f, np.ascontiguousarray(array), allow_pickle=False)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
            tmp = None
        except OSError as e:
            # The result is correct without the cache; only the next run is slower.
            warnings.warn(
                f"could not write the preprocessing cache entry {path} ({e}); set "
                "data.cache_dir to a writable folder to keep CLAHE/denoising results.",
                stacklevel=3,
            )
        finally:
            if tmp is not None and os.path.exists(tmp):
                os.unlink(tmp)
