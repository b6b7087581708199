"""The plan: fingerprint -> target spacing, dims, normalisation, depth, patch, batch, steps.

Every rule, and how it differs from nnU-Net v2's ExperimentPlanner, is in docs/planning.md.
`make_plan(fingerprint)` returns a JSON-ready dict whose `*_reason` entries say why each
value was chosen; `jaxseg.planning.config_file.write_config` turns it into a config file.
The model's depth rules are in `depth`; patch and batch come from the measured memory of
the real train step on the first local device (`memory`).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence

import numpy as np

from jaxseg.errors import ConfigError, DataError
from jaxseg.planning.depth import MIN_FEATURE_MAP, Depth, model_depth
from jaxseg.planning.memory import GIB, MemoryProbe, default_memory_budget, device_name
from jaxseg.planning.memory import fmt_shape as _fmt
from jaxseg.workdir import RunInfo

__all__ = [
    "check_dims",
    "choose_dims",
    "make_plan",
    "normalization",
    "patch_candidates",
    "target_spacing",
]

ANISO_THRESHOLD = 3.0  # nnU-Net's: coarse axis spacing > 3x the next coarsest
MIN_BATCH = 2
MAX_DATASET_COVERED = 0.05  # a batch holds at most 5% of the dataset's voxels (nnU-Net)
NONZERO_MASK_THRESHOLD = 0.75  # cropping to nonzero leaves < 75% of the median case (nnU-Net)
LOWRES_THRESHOLD = 0.25  # patch < 25% of the median shape: downsample (nnU-Net's 3d_lowres cue)
MIN_THICKNESS_VOXELS = 8.0  # thinnest class keeps >= 8 voxels of 2 x volume / surface
DEFAULT_MODEL = "lightseg_small"
DEFAULT_STEPS = 50_000  # 200 nnU-Net epochs of 250 steps (nnU-Net trains 1000)
_NORM = {"ct": "CTNormalization", "nonorm": "NoNormalization", "rgb_to_0_1": "RGBTo01Normalization"}


# ----------------------------------------------------------------------------- spacing, norm


def target_spacing(fingerprint: dict) -> tuple[list[float], str]:
    """nnU-Net's fullres target spacing: the median per axis; when the coarsest axis is both
    > 3x the next coarsest spacing and < 1/3 of the fewest voxels of the others (median
    shapes after cropping), that axis takes the 10th percentile of its spacings instead
    (never finer than the other axes)."""
    spacings = np.asarray(fingerprint["spacings"], np.float64)
    sizes = np.asarray(fingerprint["shapes_after_crop"], np.float64)
    target = np.percentile(spacings, 50, axis=0)
    size = np.percentile(sizes, 50, axis=0)
    worst = int(np.argmax(target))
    others = [i for i in range(len(target)) if i != worst]
    coarse = target[worst] > ANISO_THRESHOLD * max(target[i] for i in others)
    few = size[worst] * ANISO_THRESHOLD < min(size[i] for i in others)
    reason = f"the median spacing per axis ({_fmt(target)} mm)"
    if coarse and few:
        p10 = float(np.percentile(spacings[:, worst], 10))
        finest_allowed = max(target[i] for i in others)
        if p10 < finest_allowed:
            p10 = max(finest_allowed, p10) + 1e-5
        reason += (
            f"; axis {worst} is anisotropic ({target[worst]:g} mm > {ANISO_THRESHOLD:g}x, "
            f"{size[worst]:g} voxels < 1/{ANISO_THRESHOLD:g} of the others), so it takes the "
            f"10th percentile of its spacings, {p10:g} mm"
        )
        target[worst] = p10
    elif coarse:
        reason += f"; axis {worst} is coarse but not short, so the median stays"
    return [float(v) for v in target], reason


def normalization(fingerprint: dict) -> tuple[list[dict], tuple | None, bool, str]:
    """Per channel: the scheme nnU-Net would use for its channel name, the nonzero mask
    rule (z-score channels, when cropping leaves < 75% of the median case) and, for CT,
    (p0.5, p99.5, mean, std) of the foreground. Returns (channels, intensity_stats,
    crop_nonzero, reason)."""
    rel = float(fingerprint["median_relative_size_after_cropping"])
    mask = rel < NONZERO_MASK_THRESHOLD
    props = fingerprint["foreground_intensity_properties_per_channel"]
    channels, stats = [], []
    for c, (name, modality) in enumerate(
        zip(fingerprint["channel_names"], fingerprint["modalities"])
    ):
        key = str(modality).casefold()
        scheme = _NORM.get(key, "ZScoreNormalization")
        entry = {"channel": c, "name": name, "modality": modality, "scheme": scheme}
        entry["use_nonzero_mask"] = bool(mask and scheme == "ZScoreNormalization")
        if scheme == "CTNormalization":
            p = props[str(c)]
            if not p.get("num_samples"):
                raise DataError(
                    f"{fingerprint['root']}: CT channel {c} ({name}) has no foreground "
                    "voxels in the analysed cases, so its clip range and z-score cannot be "
                    "planned; check the labels (or analyse more cases)."
                )
            s = (p["percentile_00_5"], p["percentile_99_5"], p["mean"], p["std"])
            entry["stats"] = dict(zip(("p0.5", "p99.5", "mean", "std"), s))
            stats.append(tuple(float(v) for v in s))
        else:
            stats.append(None)
        channels.append(entry)
    intensity_stats = tuple(stats) if any(s is not None for s in stats) else None
    reason = (
        f"cropping to the nonzero box leaves {rel:.0%} of the median case "
        f"({'<' if mask else '>='} {NONZERO_MASK_THRESHOLD:.0%}): "
        + ("crop, and z-score over the nonzero mask" if mask else "no crop, no nonzero mask")
    )
    return channels, intensity_stats, bool(mask), reason


# ----------------------------------------------------------------------------- patch, batch


def _round_up(x: float, m: int) -> int:
    return max(m, int(math.ceil(x / m - 1e-9)) * m)


def _topology(depth: Depth, raw: Sequence[float]) -> tuple[int, tuple[int, ...]]:
    k = depth.stages_for(raw)
    return k, tuple(_round_up(p, depth.stride(k)) for p in raw)


def patch_candidates(
    depth: Depth, median: Sequence[float], spacing: Sequence[float]
) -> list[tuple[int, tuple[int, ...]]]:
    """(stages, patch) from the largest to the smallest: first nnU-Net's initial patch (the
    1/spacing aspect scaled to 256^3 or 2048^2 voxels, clipped to the median shape) rounded
    up to the stride, then one stride off the axis largest relative to the median shape,
    and so on, down to the smallest stride on every axis."""
    median = np.maximum(np.asarray(median, np.float64), 1)
    inv = 1 / np.asarray(spacing, np.float64)
    d = len(median)
    volume = 256**3 if d == 3 else 2048**2
    init = np.minimum(np.round(inv * (volume / np.prod(inv)) ** (1 / d)), median)
    k, patch = _topology(depth, init)
    out = [(k, patch)]
    floor = depth.stride(depth.min_stages)
    while True:
        order = np.argsort([p / m for p, m in zip(patch, median)], kind="stable")[::-1]
        for axis in order:
            trial = list(patch)
            trial[axis] -= depth.stride(k)
            if trial[axis] < floor:
                continue
            # nnU-Net's detail: step by the stride of the shallower net the cut may allow.
            finer = list(patch)
            finer[axis] -= depth.stride(depth.stages_for(trial))
            k2, p2 = _topology(depth, finer)
            if math.prod(p2) >= math.prod(patch):
                k2, p2 = _topology(depth, trial)
            if math.prod(p2) < math.prod(patch):
                k, patch = k2, p2
                out.append((k, patch))
                break
        else:
            return out


def _search_patch(probe: MemoryProbe, depth: Depth, cands, budget: int) -> int:
    """Index of the first candidate whose measured step at batch MIN_BATCH fits `budget`;
    the prediction from earlier measurements picks what to measure next."""
    lo, hi, i = -1, None, 0
    while True:
        k, patch = cands[i]
        if probe.measure(depth.args(k), patch, MIN_BATCH, k) <= budget:
            hi = i
        else:
            lo = i
        upper = len(cands) if hi is None else hi
        pred = [probe.predict(depth.args(k), p, MIN_BATCH) for k, p in cands[lo + 1 : upper]]
        slack = 1.0 if hi is None else 1.03  # with a fitting candidate known, skip near misses
        nxt = next((lo + 1 + j for j, b in enumerate(pred) if b <= budget * slack), None)
        if nxt is None and hi is None:
            nxt = len(cands) - 1 if lo < len(cands) - 1 else None
        if nxt is None:
            if hi is None:
                k, patch = cands[-1]
                raise ConfigError(
                    f"the smallest patch {_fmt(patch)} at batch {MIN_BATCH} needs "
                    f"{probe.log[-1]['bytes'] / GIB:.2f} GiB, over the memory budget of "
                    f"{budget / GIB:.2f} GiB; raise --memory-budget-gib or pick a smaller model."
                )
            return hi
        i = nxt


def _batch(probe, args, patch, budget, dataset_voxels) -> tuple[int, str]:
    """At least MIN_BATCH; grown while the measured step fits, up to 5% of the dataset."""
    cap = round(dataset_voxels * MAX_DATASET_COVERED / math.prod(patch))
    e = probe.entry(args, patch, MIN_BATCH)
    per = (e["bytes"] - e["state"]) / MIN_BATCH
    by_memory = int((budget - e["state"]) // per) if per > 0 else MIN_BATCH
    b = max(MIN_BATCH, min(by_memory, cap))
    while b > MIN_BATCH and probe.measure(args, patch, b) > budget:
        fits = [n for n in range(MIN_BATCH, b) if probe.predict(args, patch, n) <= budget]
        b = fits[-1] if fits else MIN_BATCH
    reason = (
        f"memory allows {by_memory}, and 5% of the dataset's voxels allow {cap} patches; "
        f"at least {MIN_BATCH}"
    )
    return b, reason


def _resampled_median(fingerprint: dict, spacing: Sequence[float], cropped: bool) -> list[float]:
    shapes = np.asarray(fingerprint["shapes_after_crop" if cropped else "shapes"], np.float64)
    old = np.asarray(fingerprint["spacings"], np.float64)
    new = np.round(shapes * old / np.asarray(spacing, np.float64))
    return np.median(np.maximum(new, 1), axis=0).tolist()


def _plan_patch(probe, depth, median, spacing, budget):
    cands = patch_candidates(depth, median, spacing)
    k, patch = cands[_search_patch(probe, depth, cands, budget)]
    first = cands[0][1]
    stride = f"the total stride {depth.stride(k)} of {k} stage{'s' * (k != 1)}"
    if patch == first:
        why = (
            f"the median shape {_fmt(median)} at the target spacing"
            if all(p >= m for p, m in zip(patch, median))
            else f"nnU-Net's initial patch (the median shape {_fmt(median)}, capped)"
        )
        why += f", rounded up to a multiple of {stride}"
    else:
        why = (
            f"shrunk from {_fmt(first)} (the median shape {_fmt(median)} rounded up) until "
            f"the measured train step fits the budget, the axis largest relative to the "
            f"median shape first; a multiple of {stride}"
        )
    return k, patch, why


# ----------------------------------------------------------------------------- dims


def check_dims(dims: int | None, data_dims: int, where: str = "") -> None:
    """ConfigError unless `dims` (the --dims override) is None or the data's own dims: 2D
    training on slices of 3D volumes needs a pipeline that cuts slices, which it lacks."""
    if dims is None or dims == data_dims:
        return
    if dims == 2 and data_dims == 3:
        raise ConfigError(
            f"{where}dims=2: 2D training on slices of 3D volumes is not supported yet; "
            "plan this 3D dataset in 3D (drop --dims 2)."
        )
    raise ConfigError(
        f"{where}dims={dims!r}: a {data_dims}D dataset can be planned as {data_dims}D only."
    )


def choose_dims(
    median: Sequence[float], spacing: Sequence[float], depth3: Depth, depth2: Depth
) -> tuple[int | None, str]:
    """3D data is planned 3D. The rule of docs/planning.md would prefer 2D on slices across
    the coarsest axis when that axis is so short that the 3D network gets fewer stages than
    the 2D one on the slices; that preference is reported, not followed, until the pipeline
    trains on slices. Returns (the preferred slice axis or None, reason)."""
    coarse = int(np.argmax(spacing))
    inplane = [m for i, m in enumerate(median) if i != coarse]
    k3, k2 = depth3.stages_for(median), depth2.stages_for(inplane)
    reason = (
        f"3D data; the shortest axis of the median shape {_fmt(median)} allows {k3} "
        f"stage(s) in 3D, the slices across axis {coarse} allow {k2} in 2D"
    )
    if k3 >= k2:
        return None, reason + ": 3D"
    return coarse, reason + (
        f": the rule would prefer 2D on slices across axis {coarse}, as the thin axis costs "
        "the 3D network depth; planned 3D, because 2D training on slices of 3D volumes is "
        "not supported yet"
    )


# ----------------------------------------------------------------------------- the plan


def make_plan(
    fingerprint: dict,
    *,
    model: str = DEFAULT_MODEL,
    model_args: dict | None = None,
    dims: int | None = None,
    memory_budget: int | None = None,
    platform: str | None = None,
    steps: int | None = None,
    time_step: bool = False,
    progress: bool = False,
    measure: Callable,
) -> dict:
    """The plan for `fingerprint` (see the module docstring and docs/planning.md).

    `measure(config, info) -> {"bytes", "state", ...}` compiles and measures the train step
    (`jaxseg.training.memory.measure_train_step`; tests pass a formula).
    `dims` must be the data's own (`check_dims`); `memory_budget` (bytes per device)
    overrides the platform's default; `steps` the default schedule; `time_step` runs the
    planned step once to report its time; `progress` reports each measurement on stderr.
    Raises ConfigError when even the smallest patch does not fit.
    """
    t0 = time.perf_counter()
    data_dims = int(fingerprint["dims"])
    check_dims(dims, data_dims)
    steps = DEFAULT_STEPS if steps is None else int(steps)
    if steps < 1:
        raise ConfigError(f"steps={steps}: give a positive number of optimiser steps.")
    model_args = dict(model_args or {})
    info = RunInfo(
        dims=data_dims,
        in_channels=len(fingerprint["channel_names"]),
        num_classes=int(fingerprint["num_classes"]),
        labels={int(k): v for k, v in fingerprint["labels"].items()},
        modalities=tuple(fingerprint["modalities"]),
        dataset_root=fingerprint["root"],
        label_values=tuple(fingerprint["label_values"]),
    )
    spacing, spacing_reason = target_spacing(fingerprint)
    channels, intensity_stats, crop, crop_reason = normalization(fingerprint)
    median = _resampled_median(fingerprint, spacing, crop)
    depth = model_depth(model, data_dims, info, model_args)
    if data_dims == 3:
        depth_2d = model_depth(model, 2, info, model_args)
        slice_axis, dims_reason = choose_dims(median, spacing, depth, depth_2d)
    else:
        slice_axis, dims_reason = None, "2D data"
    if memory_budget is None:
        budget, budget_reason = default_memory_budget(platform)
    else:
        budget, budget_reason = int(memory_budget), "given"
    probe = MemoryProbe(model, info, model_args, measure, progress)
    k, patch, patch_reason = _plan_patch(probe, depth, median, spacing, budget)

    down = {"applied": False, "factor": 1.0}
    if data_dims == 2:
        down = _downsample(fingerprint, probe, depth, spacing, median, patch, budget, crop)
        if down["applied"]:
            spacing, median = down.pop("spacing"), down.pop("median")
            k, patch, patch_reason = down.pop("patch")
            spacing_reason += f"; then x{down['factor']:.3g} in-plane: {down['reason']}"
    args = depth.args(k)
    dataset_voxels = math.prod(median) * int(fingerprint["num_training_cases"])
    batch, batch_reason = _batch(probe, args, patch, budget, dataset_voxels)
    used = probe.measure(args, patch, batch)
    training = {
        "steps": steps,
        "warmup_steps": min(1000, max(50, steps // 100), max(steps - 1, 1)),
        "eval_every": min(steps, max(250, steps // 50)),
        "reason": (
            "the given --steps"
            if steps != DEFAULT_STEPS
            else f"the default {DEFAULT_STEPS} steps: 200 nnU-Net epochs of 250 steps "
            "(nnU-Net trains 1000 epochs), one schedule for every dataset"
        ),
        "meaning": "the step was not timed (time_step=False, --no-timing)",
    }
    if time_step:
        sec = probe.step_seconds(args, patch, batch)
        training.update(
            step_seconds=round(sec, 3),
            eta_hours=round(sec * steps / 3600, 2),
            meaning=f"on the device the plan was made on, {device_name()}, one step took "
            f"{sec:.2f} s, so {steps} steps take about {sec * steps / 3600:.1f} h",
        )
    stride = depth.stride(k)
    bottleneck = [p // stride for p in patch]
    return {
        "dataset": fingerprint["dataset"],
        "root": fingerprint["root"],
        "model": model,
        "data_dims": data_dims,
        "dims": data_dims,
        "preferred_slice_axis": slice_axis,
        "dims_reason": dims_reason,
        "target_spacing": [float(s) for s in spacing],
        "spacing_reason": spacing_reason,
        "median_shape": [float(m) for m in median],
        "median_shape_reason": (
            "median over cases, "
            + ("cropped to nonzero, " if crop else "")
            + "resampled to the target spacing"
        ),
        "normalization": channels,
        "intensity_stats": intensity_stats,
        "crop_nonzero": crop,
        "crop_reason": crop_reason,
        "stages": k,
        "max_stages": depth.max_stages,
        "total_stride": stride,
        "model_args": args,
        "stages_reason": (
            f"{k} of {depth.max_stages} stages: the bottleneck of the patch is "
            f"{_fmt(bottleneck)} voxels (>= {MIN_FEATURE_MAP} per axis where the "
            "patch allows it)"
            if depth.kind != "fixed"
            else f"{model} has one depth; total stride {stride}"
        ),
        "patch_size": list(patch),
        "patch_reason": patch_reason,
        "patch_coverage": math.prod(patch) / math.prod(median),
        "batch_size": batch,
        "batch_reason": batch_reason,
        "downsampling": down,
        "memory": {
            "budget_bytes": budget,
            "budget_gib": round(budget / GIB, 3),
            "budget_reason": budget_reason,
            "measured_on": device_name(),
            "train_step_bytes": used,
            "train_step_gib": round(used / GIB, 3),
            "measurements": probe.log,
        },
        "training": training,
        "planning_seconds": round(time.perf_counter() - t0, 1),
    }


def _downsample(fp, probe, depth, spacing, median, patch, budget, crop) -> dict:
    """2D: when the patch that fits covers < 25% of the median image, coarsen the spacing
    until it covers 25%, as far as the thinnest class keeps MIN_THICKNESS_VOXELS."""
    coverage = math.prod(patch) / math.prod(median)
    out = {"applied": False, "factor": 1.0, "coverage_before": coverage}
    if coverage >= LOWRES_THRESHOLD:
        out["reason"] = f"the patch covers {coverage:.0%} of the median image (>= 25%)"
        return out
    thick = [t for t in fp["class_thickness_mm"] if t]
    allowed = min(thick) / (MIN_THICKNESS_VOXELS * max(spacing)) if thick else math.inf
    factor, plan = 1.0, None
    for _ in range(4):
        want = factor * math.sqrt(LOWRES_THRESHOLD / coverage)
        new = min(want, allowed)
        if new < 1.1 * factor:
            break
        factor = new
        sp = [s * factor for s in spacing]
        med = _resampled_median(fp, sp, crop)
        plan = (sp, med, _plan_patch(probe, depth, med, sp, budget))
        coverage = math.prod(plan[2][1]) / math.prod(med)
        if coverage >= LOWRES_THRESHOLD:
            break
    why = (
        f"the patch that fits covers {out['coverage_before']:.0%} of the median image "
        f"(< 25%); the thinnest class is {min(thick) if thick else math.inf:.3g} mm thick, "
        f"so the spacing may grow x{allowed:.3g} while it keeps >= "
        f"{MIN_THICKNESS_VOXELS:g} voxels"
    )
    if plan is None:
        out["reason"] = why + "; no downsampling"
        return out
    sp, med, patch_plan = plan
    return {
        "applied": True,
        "factor": factor,
        "coverage_before": out["coverage_before"],
        "coverage_after": coverage,
        "reason": why,
        "spacing": sp,
        "median": med,
        "patch": patch_plan,
    }
