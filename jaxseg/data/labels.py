"""Label values: the table between the values in label files and the classes jaxseg trains.

A dataset declares its label values in dataset.json (`jaxseg.data.dataset` reads them,
in either orientation). They need not be consecutive: sorted, they are the classes
0..K-1, and `label_values[k]` is the file value of class k (0/255 masks -> classes 0/1,
BraTS 0,1,2,4 -> 0,1,2,3). Value 0 must be declared and is class 0, the background. An
empty table is the identity.

`values_to_classes` maps a label file's values to classes when a case is loaded (and
reports values that are not declared); `classes_to_values` maps predicted classes back to
file values when a mask is written, so a DRIVE prediction holds 0/255 again. Training
records the table in `workdir/run.json`; `check_label_values` validates it wherever it
comes from.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from jaxseg.data import io
from jaxseg.errors import DataError

__all__ = ["check_label_values", "values_to_classes", "classes_to_values"]


def check_label_values(values: Sequence[int], num_classes: int, where: str) -> tuple[int, ...]:
    """Validates a class -> file value table (empty = identity); returns it as a tuple."""
    values = tuple(int(v) for v in values) or tuple(range(num_classes))
    if (
        len(values) != num_classes
        or values[0] != 0
        or any(b <= a for a, b in zip(values, values[1:]))
    ):
        raise DataError(
            f"{where}: label_values {list(values)} must be {num_classes} ascending "
            "integers starting at 0, one per class."
        )
    return values


def values_to_classes(
    label: np.ndarray, label_values: Sequence[int]
) -> tuple[np.ndarray, list[int]]:
    """File values -> class indices.

    Args:
      label: integer `[X, Y, (Z)]` as in the label file.
      label_values: ascending declared values; class k has file value `label_values[k]`.

    Returns (int32 classes `[X, Y, (Z)]`, sorted undeclared values found; [] when none).
    """
    values = np.asarray(label_values, np.int64)
    label = np.asarray(label)
    if np.array_equal(values, np.arange(values.size)):  # identity: skip the search
        bad = (label < 0) | (label >= values.size)
        classes = label
    else:
        classes = np.minimum(np.searchsorted(values, label), values.size - 1)
        bad = values[classes] != label
    undeclared = np.unique(label[bad]).tolist() if bad.any() else []
    return np.ascontiguousarray(classes, dtype=np.int32), [int(v) for v in undeclared]


def classes_to_values(classes: np.ndarray, label_values: Sequence[int]) -> np.ndarray:
    """Class indices `[X, Y, (Z)]` -> file values, in the narrowest type that holds every
    declared value: uint8 up to 255, uint16 up to 65535, else int32 (`io.mask_dtype`)."""
    values = np.asarray(label_values)
    return values.astype(io.mask_dtype(int(values.max())))[np.asarray(classes)]
