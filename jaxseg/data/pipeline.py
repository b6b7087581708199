"""grain input pipeline: cases -> normalised arrays (cached) -> random patches -> batches.

The pipeline is a `grain.MapDataset` chain, so every element is a pure function of
`(seed, global element index)`:

    range(2**62)                                   # this process's j-th example ...
      .map(j -> g = (j // b) * B + p * b + j % b)  # ... is global element g
      .map(g -> case perm(seed, g // n)[g % n], patch with rng (seed, g))
      .batch(b)                                    # b = B / P examples per process
      [start_step:]                                # resume: batch k is the same as in an unbroken run
      .to_iter_dataset(ReadOptions(num_threads, prefetch))
      [.mp_prefetch(MultiprocessingOptions(num_workers))]  # only with num_workers > 0

Global batch `k` consists of the global elements `k*B .. (k+1)*B - 1` (an epoch visits each
case once, in an order drawn from the seed); process `p` of `P` gets the contiguous block
`k*B + p*b .. k*B + (p+1)*b - 1`. Those blocks are the rows of the global array that
`jax.make_array_from_process_local_data` puts on the process's own devices, so the global
batch, row for row, does not depend on the number of processes.

With `num_workers = N > 0`, grain's `mp_prefetch` starts N worker processes (start method
"spawn"); worker i computes batches i, i + N, i + 2N, ... with its own `num_threads` threads
and `prefetch` buffer, and the batches are interleaved back round-robin, so the sequence is
bitwise the one `num_workers = 0` yields. The map functions, and with them the normalised
arrays of every training case, are pickled into each worker: N workers hold N more copies of
the training set in host memory. The iterator's state is the index of the next batch
(`BatchIterator`), so a checkpoint does not depend on `num_workers` or `num_threads`.

Patch sampling (nnU-Net style): with probability `foreground_fraction` the patch is centred,
with a uniform jitter of up to a quarter patch per axis, on a random voxel of a random
foreground class present in the case (the voxel is always inside the patch); otherwise
the patch position is uniform. Images smaller than the patch are padded at a random offset:
the image with `preprocess.PAD_VALUE` (0 after normalisation, the value sliding-window
inference pads with), the label with 0 (background).
"""

from __future__ import annotations

import dataclasses
import functools
import warnings
from collections.abc import Callable, Iterator, Sequence

import grain
import numpy as np
import tqdm

from jaxseg.data import preprocess
from jaxseg.data.dataset import Case, DatasetSpec, load_case
from jaxseg.data.distance_maps import signed_distance_maps
from jaxseg.data.io import Image
from jaxseg.errors import ConfigError, DataError

__all__ = [
    "BatchIterator",
    "check_patch_size",
    "train_batches",
    "eval_cases",
    "load_training_arrays",
    "sample_patch",
]


@dataclasses.dataclass(frozen=True, eq=False)
class _CaseArrays:
    case_id: str
    image: np.ndarray  # float32 [*S, C], normalised
    label: np.ndarray  # int32 [*S]
    fg: tuple[np.ndarray, ...]  # per present foreground class: flat voxel indices


def load_training_arrays(
    spec: DatasetSpec,
    cases: Sequence[Case],
    preprocessing: preprocess.Preprocessing | None = None,
    *,
    labels: bool = True,
) -> list[_CaseArrays]:
    """Loads, validates and preprocesses labelled cases once (kept in memory): cropped,
    normalised and resampled to the model's grid (`preprocess.Preprocessing`; default:
    normalisation only). A class that resampling makes vanish from a case is warned about.
    labels=False (pretraining): the cases' labels are not read, and every label is 0."""
    prep = preprocessing or preprocess.Preprocessing(spec.modalities)
    out = []
    for case in tqdm.tqdm(cases, desc="load", unit="case", leave=False, disable=len(cases) < 20):
        if not labels:
            case = dataclasses.replace(case, label_path=None)
        image, label = load_case(spec, case)
        if label is None and not labels:
            label = np.zeros(image.data.shape[:-1], np.int32)
        elif label is None:
            raise DataError(
                f"case '{case.case_id}': has no label file; training cases need labels."
            )
        # the label only for data.normalize_mask="label" (training cases alone have it here)
        data, grid = prep.image(image.data, image.spacing, case=case.case_id, label=label)
        label, vanished = prep.label(label, grid, spec.num_classes)
        for k in vanished:
            warnings.warn(
                f"case '{case.case_id}': class {k} ({spec.labels.get(k, k)}) vanished when "
                f"resampled to {grid.model_spacing} mm (smaller than one target voxel).",
                stacklevel=2,
            )
        flat = label.reshape(-1)
        fg = tuple(np.flatnonzero(flat == k) for k in range(1, spec.num_classes))
        fg = tuple(f for f in fg if f.size)
        out.append(_CaseArrays(case.case_id, data, label, fg))
    return out


def sample_patch(
    arrays: _CaseArrays,
    patch_size: Sequence[int],
    rng: np.random.Generator,
    foreground_fraction: float,
) -> dict[str, np.ndarray]:
    """One random patch -> {"image": f32 [*patch, C], "label": int32 [*patch]}."""
    shape = arrays.label.shape
    patch = tuple(int(p) for p in patch_size)
    lo = [min(0, s - p) for s, p in zip(shape, patch)]
    hi = [max(0, s - p) for s, p in zip(shape, patch)]
    forced = rng.random() < foreground_fraction
    if forced and arrays.fg:
        cls = arrays.fg[int(rng.integers(len(arrays.fg)))]
        voxel = np.unravel_index(int(cls[int(rng.integers(cls.size))]), shape)
        start = []
        for d, p in enumerate(patch):
            j = p // 4
            s0 = int(voxel[d]) - p // 2 + (int(rng.integers(-j, j + 1)) if j else 0)
            start.append(int(np.clip(s0, lo[d], hi[d])))
    else:
        start = [int(rng.integers(lo[d], hi[d] + 1)) for d in range(len(patch))]
    src, dst = [], []
    for s0, p, s in zip(start, patch, shape):
        a, b = max(s0, 0), min(s0 + p, s)
        src.append(slice(a, b))
        dst.append(slice(a - s0, b - s0))
    img = np.empty(patch + (arrays.image.shape[-1],), np.float32)
    img[...] = preprocess.PAD_VALUE
    lab = np.zeros(patch, np.int32)
    img[tuple(dst)] = arrays.image[tuple(src)]
    lab[tuple(dst)] = arrays.label[tuple(src)]
    return {"image": img, "label": lab}


@functools.lru_cache(maxsize=64)
def _epoch_permutation(seed: int, epoch: int, n: int) -> np.ndarray:
    # Same role as `MapDataset.shuffle(seed).repeat()`, whose per-element index_shuffle costs
    # ~3 ms for datasets of a handful of cases; this is a cached numpy permutation per epoch.
    return np.random.default_rng([seed, epoch]).permutation(n)


class BatchIterator(grain.DatasetIterator):
    """This process's training batches, checkpointable by batch index.

    The state is `{"next_index": i}`: the next batch is batch `i` of an unbroken run. Every
    batch is a pure function of its index, so `set_state` only rebuilds grain's iterator at
    `i` (restarting any worker processes lazily, on the next `next()` or `start_prefetch()`).
    The state is the one grain's own iterator had before workers existed, so older
    checkpoints restore, and it does not depend on `num_workers` or `num_threads`: a run
    may resume with different ones.
    """

    def __init__(self, make: Callable[[int], grain.DatasetIterator], start: int):
        self._make, self._next, self._it = make, start, None
        super().__init__()

    def __next__(self) -> dict:
        self._assert_not_closed()
        if self._it is None:
            self._it = self._make(self._next)
        batch = next(self._it)
        self._next += 1
        return batch

    def get_state(self) -> dict:
        return {"next_index": self._next}

    def set_state(self, state: dict) -> None:
        index = state.get("next_index") if isinstance(state, dict) else None
        if not isinstance(index, int) or index < 0:
            raise DataError(
                f"input-pipeline state {state!r} has no batch index "
                "'next_index' >= 0; it was not written by jaxseg's train_batches."
            )
        self._close_inner()
        self._next = index

    def start_prefetch(self) -> None:
        self._assert_not_closed()
        if self._it is None:
            self._it = self._make(self._next)
        self._it.start_prefetch()

    def close(self) -> None:
        """Stops grain's threads and joins its worker processes; idempotent."""
        self._close_inner()
        self._closed = True

    def _close_inner(self) -> None:
        it, self._it = getattr(self, "_it", None), None
        if it is not None:
            it.close()


def check_patch_size(patch_size: Sequence[int], spec: DatasetSpec) -> tuple[int, ...]:
    """`data.patch_size` as a tuple of ints; ConfigError unless it has one positive entry per
    spatial axis of the dataset."""
    try:
        patch = tuple(int(p) for p in patch_size)
    except (TypeError, ValueError):
        patch = ()
    if len(patch) != spec.dims or min(patch) < 1:
        raise ConfigError(
            f"data.patch_size = {patch_size!r}: expected {spec.dims} positive integers for the "
            f"{spec.dims}D dataset {spec.root}."
        )
    return patch


def train_batches(
    spec: DatasetSpec,
    cases: Sequence[Case],
    *,
    patch_size: Sequence[int],
    batch_size: int,
    seed: int,
    start_step: int = 0,
    foreground_fraction: float = 0.33,
    num_threads: int = 2,
    prefetch: int = 4,
    num_workers: int = 0,
    preprocessing: preprocess.Preprocessing | None = None,
    distance_maps: bool = False,
    labels: bool = True,
    case_classes: bool = False,
) -> BatchIterator:
    """An endless iterator of this process's training batches.

    Yields `{"image": f32 [b, *patch_size, C], "label": int32 [b, *patch_size]}` with
    `b = batch_size // jax.process_count()`. Batch `i` (counting from 0 in an unbroken run)
    is a pure function of `(seed, i)` and the cases; starting at `start_step` yields batches
    `start_step, start_step + 1, ...` of that run. `num_workers > 0` computes the batches in
    that many worker processes (each with `num_threads` threads and `prefetch` batches
    buffered) instead of in threads of this process; the batches are the same. Close the
    iterator (`.close()`) to stop the threads and join the workers. `distance_maps=True`
    (the boundary loss asks for it) adds `"distance_maps": f32 [b, *patch_size, K - 1]`, the
    signed distance maps of each patch's label (`data.distance_maps`, in voxels); without
    it nothing is computed. `labels=False` (pretraining) reads no label files: every
    label is 0 (use foreground_fraction=0). `case_classes=True` (a class head trained on
    dataset.json's `class`) adds `"case_class": int32 [b]`, each patch's `Case.case_class`.
    """
    patch = check_patch_size(patch_size, spec)
    if not 0.0 <= foreground_fraction <= 1.0:
        raise ConfigError(f"foreground_fraction must be in [0, 1], got {foreground_fraction}.")
    if not cases:
        raise DataError(f"{spec.root}: no training cases to sample from.")
    if start_step < 0:
        raise ConfigError(f"start_step must be >= 0, got {start_step}.")
    if not isinstance(num_workers, int) or num_workers < 0:
        raise ConfigError(
            f"data.num_workers must be an integer >= 0 (0: threads in this "
            f"process), got {num_workers!r}."
        )
    shard = grain.sharding.ShardByJaxProcess()
    nproc, pidx = int(shard.shard_count), int(shard.shard_index)
    if batch_size < 1 or batch_size % nproc:
        raise ConfigError(
            f"batch_size {batch_size} must be a positive multiple of the number of "
            f"processes ({nproc})."
        )
    per_process = batch_size // nproc
    if case_classes:
        unclassed = [c.case_id for c in cases if c.case_class is None]
        if unclassed:
            raise DataError(
                f"{spec.root}: training case '{unclassed[0]}' has no 'class' in dataset.json; "
                'loss.class_target "field" needs one per training case.'
            )
    classes = np.asarray([c.case_class or 0 for c in cases], np.int32)
    arrays = load_training_arrays(spec, cases, preprocessing, labels=labels)

    n = len(arrays)

    # Closures are fine for worker processes: grain pickles the dataset with cloudpickle.
    def _global_index(j: int) -> int:
        return (j // per_process) * batch_size + pidx * per_process + j % per_process

    def _element(g: int) -> dict:
        case = int(_epoch_permutation(seed, g // n, n)[g % n])
        out = sample_patch(
            arrays[case], patch, np.random.default_rng([seed, g]), foreground_fraction
        )
        if distance_maps:
            out["distance_maps"] = signed_distance_maps(out["label"], spec.num_classes)
        if case_classes:
            out["case_class"] = classes[case]
        return out

    ds = (
        grain.MapDataset.range(2**62)
        .map(_global_index)
        .map(_element)
        .batch(per_process, drop_remainder=True)
    )

    def make(start: int) -> grain.DatasetIterator:
        it = (ds.slice(slice(start, None)) if start else ds).to_iter_dataset(
            grain.ReadOptions(num_threads=num_threads, prefetch_buffer_size=prefetch)
        )
        if num_workers:
            _absl_flags_parsed()
            # Worker i computes batches i, i + N, ...; grain interleaves them round-robin,
            # so the order is that of one process. One finished batch waits per worker:
            # each worker already computes ahead into its own `prefetch` buffer.
            it = it.mp_prefetch(
                grain.MultiprocessingOptions(num_workers=num_workers, per_worker_buffer_size=1)
            )
        return iter(it)

    return BatchIterator(make, start_step)


def _absl_flags_parsed() -> None:
    # grain 0.2.18 reads an absl flag when it starts a worker process and raises
    # UnparsedFlagAccessError unless absl parsed the command line (google/grain#1355); the
    # flags' defaults are what jaxseg wants, so mark them parsed as they are.
    from absl import flags

    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()


def eval_cases(
    spec: DatasetSpec, cases: Sequence[Case]
) -> Iterator[tuple[str, Image, np.ndarray | None]]:
    """Yields `(case_id, Image [*S, C] as read, label int32 [*S] or None)` per case, on the
    file's own grid, loading lazily (one case in memory at a time); inference preprocesses
    (`inference.predict_case`) so that predictions and metrics stay on this grid."""
    for case in cases:
        image, label = load_case(spec, case)
        yield case.case_id, image, label
