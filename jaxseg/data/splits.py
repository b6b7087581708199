"""Patient-level splits of a dataset's training cases: 7:1:2 train/val/test, or k folds.

`make_splits(cases, seed=..., fold=..., num_folds=...)` is the one entry point; training
calls it with `data.split_seed`, `data.fold` and `data.num_folds` and records the case ids
in `workdir/splits.json`. It returns `{"train": cases, "val": cases, "test": cases}`.
`labelled_subset` keeps a fraction of the training split's patients (`data.train_fraction`,
for learning curves); val and test are never subsampled.

fold None: the 7:1:2 split (`split_cases`)
    Patients (not cases) are shuffled by `seed` (from their sorted ids, so the input order
    does not matter) and divided 7:1:2 (largest-remainder rounding). With >= 3 patients
    every split gets at least one patient. The same seed gives the same split, case for
    case, as in every earlier version, so an existing workdir's splits.json is reproduced.
fold k: cross-validation over the training pool (nnU-Net style)
    "test" is the 7:1:2 split's test split, untouched: the same cases for every fold and
    for fold None, so every fold (and a fold ensemble) is scored on the same held-out
    cases. The remaining patients (the 7:1:2 split's train + val, the training pool) are
    shuffled by `seed` and dealt into `num_folds` folds whose sizes differ by at most one
    patient; fold k is "val" and the other folds are "train". Across the folds every pool
    case is in "val" exactly once.

All cases of one patient land in one split (`Case.patient_id`: the case id unless the
dataset.json entry names a "patient"); within a split, cases keep their input order. A
split that would be empty is an error naming the number of cases and what is needed (at
least 3 patients; with folds, at least `num_folds` patients in the training pool).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from jaxseg.data.dataset import Case
from jaxseg.errors import ConfigError, DataError

__all__ = ["make_splits", "split_cases", "split_requirement"]

_NAMES = ("train", "val", "test")


def make_splits(
    cases: Sequence[Case], *, seed: int, fold: int | None = None, num_folds: int = 5
) -> dict[str, tuple[Case, ...]]:
    """The train/val/test splits of `cases`: the 7:1:2 split (`fold=None`) or fold `fold`
    of `num_folds` over its training pool, the test split kept (see the module docstring).

    Raises ConfigError for a fold outside 0..num_folds-1 or num_folds < 2, DataError when
    there are too few patients for every split to get one.
    """
    if not _is_int(num_folds) or num_folds < 2:
        raise ConfigError(
            f"data.num_folds = {num_folds!r}: cross-validation needs an integer >= 2."
        )
    if fold is not None and (not _is_int(fold) or not 0 <= fold < num_folds):
        raise ConfigError(
            f"data.fold = {fold!r}: expected None (the 7:1:2 split) or a fold in "
            f"0..{num_folds - 1} (data.num_folds = {num_folds})."
        )
    patients = {c.patient_id for c in cases}
    if len(patients) < len(_NAMES):
        raise DataError(
            f"{len(cases)} training case(s) of {len(patients)} patient(s): the 7:1:2 "
            "train/val/test split needs at least 3 patients (one per split); add training cases."
        )
    splits = split_cases(cases, seed=seed)
    if fold is None:
        return splits
    test = splits["test"]
    held_out = {c.patient_id for c in test}
    pool = [c for c in cases if c.patient_id not in held_out]
    pool_patients = sorted({c.patient_id for c in pool})
    if len(pool_patients) < num_folds:
        raise DataError(
            f"data.num_folds = {num_folds}: {num_folds}-fold cross-validation needs at least "
            f"{num_folds} patients in the training pool (train + val of the 7:1:2 split), but "
            f"it holds {len(pool_patients)} ({len(cases)} training cases of {len(patients)} "
            f"patients, {len(patients) - len(pool_patients)} held out for test); lower "
            "data.num_folds or add training cases."
        )
    perm = np.random.default_rng(seed).permutation(len(pool_patients))
    val = {pool_patients[int(i)] for i in np.array_split(perm, num_folds)[fold]}
    return {
        "train": tuple(c for c in pool if c.patient_id not in val),
        "val": tuple(c for c in pool if c.patient_id in val),
        "test": test,
    }


def labelled_subset(cases: Sequence[Case], fraction: float, *, seed: int) -> tuple[Case, ...]:
    """`ceil(fraction * patients)` patients of `cases` (at least one), drawn by `seed`, with
    all their cases, in input order: the training split of a learning curve
    (`data.train_fraction`). fraction 1 returns `cases` unchanged."""
    if not 0.0 < float(fraction) <= 1.0:
        raise ConfigError(f"data.train_fraction = {fraction!r}: expected a fraction in (0, 1].")
    if float(fraction) == 1.0:
        return tuple(cases)
    patients = sorted({c.patient_id for c in cases})
    keep = max(1, int(np.ceil(float(fraction) * len(patients))))
    chosen = set(np.random.default_rng(seed).permutation(patients)[:keep].tolist())
    return tuple(c for c in cases if c.patient_id in chosen)


def split_requirement(fold: int | None, num_folds: int = 5) -> str:
    """What a dataset needs for every split of `fold` (None: the 7:1:2 split) to hold a
    case, in words for an error message."""
    if fold is None:
        return "the 7:1:2 train/val/test split needs at least 3 patients (one per split)"
    return (
        f"fold {fold} of {num_folds}-fold cross-validation needs at least 3 patients and "
        f"{num_folds} in the training pool (train + val of the 7:1:2 split)"
    )


def _is_int(x: Any) -> bool:
    return isinstance(x, (int, np.integer)) and not isinstance(x, bool)


def _split_counts(n: int, fractions: Sequence[float]) -> list[int]:
    raw = [f * n for f in fractions]
    counts = [int(np.floor(r)) for r in raw]
    # Largest remainders get the leftover patients (ties: earlier split first).
    order = sorted(range(3), key=lambda i: (-(raw[i] - counts[i]), i))
    for i in order[: n - sum(counts)]:
        counts[i] += 1
    if n >= sum(f > 0 for f in fractions):
        for i in range(3):
            if counts[i] == 0 and fractions[i] > 0:
                donor = max(range(3), key=lambda j: counts[j])
                counts[donor] -= 1
                counts[i] += 1
    return counts


def split_cases(
    cases: Sequence[Case], seed: int = 0, fractions: Sequence[float] = (0.7, 0.1, 0.2)
) -> dict[str, tuple[Case, ...]]:
    """Patient-level split into {"train", "val", "test"}.

    Patients (not cases) are shuffled by `seed` (from their sorted ids, so the input order
    does not matter) and divided by `fractions` (largest-remainder rounding). Every split
    with a positive fraction gets at least one patient; fewer patients than such splits is
    a DataError (an empty split would be scored as "nan over 0 cases"). All cases of
    one patient land in one split; within a split, cases keep their input order.
    """
    fractions = tuple(float(f) for f in fractions)
    if len(fractions) != 3 or min(fractions) < 0 or abs(sum(fractions) - 1.0) > 1e-6:
        raise ConfigError(
            f"split fractions must be three non-negative numbers summing to 1, got {fractions}."
        )
    patients = sorted({c.patient_id for c in cases})
    wanted = sum(f > 0 for f in fractions)
    if len(patients) < wanted:
        raise DataError(
            f"{len(cases)} case(s) of {len(patients)} patient(s): a split by {fractions} "
            f"needs at least {wanted} patients (one per split with a share > 0); an empty "
            "split would be scored as nan over 0 cases. Add cases."
        )
    perm = np.random.default_rng(seed).permutation(len(patients))
    counts = _split_counts(len(patients), fractions)
    assign: dict[str, str] = {}
    start = 0
    for name, n in zip(_NAMES, counts):
        for k in perm[start : start + n]:
            assign[patients[int(k)]] = name
        start += n
    return {name: tuple(c for c in cases if assign[c.patient_id] == name) for name in _NAMES}
