"""The ordered postprocessing chain of `eval.postprocess`: parsing, checking, applying.

A chain is a list of steps, each a mapping with a `step` name and its options
(docs/postprocessing.md has the table):

    {"step": "crf", "iterations": 5, "window_mm": 3.0, ...}          probabilities -> labels
    {"step": "open", "radius_mm": 1.0, "classes": None}              per class
    {"step": "close", "radius_mm": 1.0, "classes": None}             per class
    {"step": "fill_holes", "classes": None, "axis": None}            per class; axis: 2D slices
    {"step": "keep_components", "top_k": 1, "min_volume_mm3": 0.0,
     "classes": None, "foreground": False, "connectivity": None}
    {"step": "hierarchy", "constraints": {"core": "inside:tumour"}, "outside": "background"}

`classes` lists class names (or indices) from dataset.json; None is every foreground
class. The order of a case's postprocessing is:

1. `crf`, if the chain has one (it must be the first step): it replaces the argmax of the
   softmax with the CRF's labels;
2. the run's validated largest-component decision (`postprocessing.json`), if any;
3. the chain's label steps, in the order written.

Parsing fills every option's default, so `Chain.to_json()` records exactly what ran.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from etils import epath

from jaxseg.errors import ConfigError, DataError
from jaxseg.postprocess import crf as crf_lib
from jaxseg.postprocess import hierarchy as hierarchy_lib
from jaxseg.postprocess import morphology
from jaxseg.postprocess.components import keep_components

_NONE = object()  # a required option
STEP_OPTIONS: dict[str, dict[str, Any]] = {
    "crf": dict(crf_lib.DEFAULTS),
    "open": dict(radius_mm=_NONE, classes=None),
    "close": dict(radius_mm=_NONE, classes=None),
    "fill_holes": dict(classes=None, axis=None),
    "keep_components": dict(
        top_k=None, min_volume_mm3=0.0, classes=None, foreground=False, connectivity=None
    ),
    "hierarchy": dict(constraints=_NONE, outside="background"),
}
STEP_NAMES = tuple(STEP_OPTIONS)


def plain(value: Any) -> Any:
    """ConfigDicts and mappings -> dicts, tuples -> lists, recursively (JSON-ready)."""
    if hasattr(value, "items") and callable(value.items):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


def _classes(value, labels: Mapping[int, str], what: str) -> list[int] | None:
    if value is None:
        return None
    if isinstance(value, str | int) and not isinstance(value, bool):
        value = [value]
    names = {str(n): int(k) for k, n in labels.items() if int(k) != 0}
    out = []
    for v in value:
        if isinstance(v, str) and v in names:
            out.append(names[v])
        elif isinstance(v, int) and not isinstance(v, bool) and v in names.values():
            out.append(v)
        else:
            raise ConfigError(
                f"{what}: classes: {v!r} is not a foreground class of the dataset "
                f"({', '.join(repr(n) for n in names)})."
            )
    return out


def _number(value, what: str, *, minimum: float, strict: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float | np.number):
        raise ConfigError(f"{what}={value!r}; expected a number.")
    ok = value > minimum if strict else value >= minimum
    if not np.isfinite(value) or not ok:
        raise ConfigError(f"{what}={value!r}; it must be {'>' if strict else '>='} {minimum}.")
    return float(value)


def parse_step(step: Any, labels: Mapping[int, str], where: str) -> dict[str, Any]:
    """One step -> a dict with every option (defaults filled, classes as indices)."""
    step = plain(step)
    if not isinstance(step, dict) or "step" not in step:
        raise ConfigError(
            f"{where}: {step!r}; each step is a mapping with a 'step' name "
            f"({', '.join(STEP_NAMES)})."
        )
    name = step["step"]
    if name not in STEP_OPTIONS:
        raise ConfigError(
            f"{where}: unknown postprocessing step {name!r}; valid steps: {', '.join(STEP_NAMES)}."
        )
    what = f"{where} ({name})"
    options = STEP_OPTIONS[name]
    unknown = sorted(set(step) - set(options) - {"step"})
    if unknown:
        raise ConfigError(f"{what}: unknown options {unknown}; valid: {', '.join(options)}.")
    out = {"step": name}
    for key, default in options.items():
        if key not in step and default is _NONE:
            raise ConfigError(f"{what}: the option {key!r} is required.")
        out[key] = step.get(key, default)
    if "classes" in out:
        out["classes"] = _classes(out["classes"], labels, what)
    if name in ("open", "close"):
        out["radius_mm"] = morphology.check_radius(out["radius_mm"], what)
    elif name == "fill_holes":
        axis = out["axis"]
        if axis is not None and (isinstance(axis, bool) or not isinstance(axis, int) or axis < 0):
            raise ConfigError(f"{what}: axis={axis!r}; use None or a spatial axis index.")
    elif name == "keep_components":
        top_k, foreground = out["top_k"], out["foreground"]
        if top_k is not None and (
            isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1
        ):
            raise ConfigError(f"{what}: top_k={top_k!r}; use None or an int >= 1.")
        out["min_volume_mm3"] = _number(out["min_volume_mm3"], f"{what}: min_volume_mm3", minimum=0)
        if top_k is None and out["min_volume_mm3"] == 0:
            raise ConfigError(f"{what}: set top_k or min_volume_mm3, or it keeps everything.")
        if not isinstance(foreground, bool):
            raise ConfigError(f"{what}: foreground={foreground!r}; use true or false.")
        conn = out["connectivity"]
        if conn is not None and (isinstance(conn, bool) or not isinstance(conn, int) or conn < 1):
            raise ConfigError(f"{what}: connectivity={conn!r}; use None (full) or 1..ndim.")
    elif name == "crf":
        out = {
            "step": name,
            **crf_lib.check_params({k: v for k, v in out.items() if k != "step"}, what),
        }
    elif name == "hierarchy":
        if out["outside"] not in hierarchy_lib.OUTSIDE:
            raise ConfigError(
                f"{what}: outside={out['outside']!r}; use one of {hierarchy_lib.OUTSIDE}."
            )
        hierarchy_lib.parse_constraints(out["constraints"], labels, what)
    return out


class Chain:
    """A checked postprocessing chain for one dataset's classes (module docstring)."""

    def __init__(
        self, steps: Sequence[Any], labels: Mapping[int, str], where: str = "eval.postprocess"
    ):
        if isinstance(steps, str | bytes | Mapping) or not isinstance(steps, Sequence):
            raise ConfigError(f"{where}: {steps!r}; expected a list of steps.")
        self.labels = {int(k): str(v) for k, v in labels.items()}
        self.steps = tuple(parse_step(s, self.labels, f"{where}[{i}]") for i, s in enumerate(steps))
        crfs = [i for i, s in enumerate(self.steps) if s["step"] == "crf"]
        if crfs and crfs != [0]:
            raise ConfigError(
                f"{where}: 'crf' works on probabilities, so it must be the first step and "
                f"appear once (it is at position(s) {crfs})."
            )
        self._hierarchies = {
            i: hierarchy_lib.parse_constraints(s["constraints"], self.labels)
            for i, s in enumerate(self.steps)
            if s["step"] == "hierarchy"
        }

    def __bool__(self) -> bool:
        return bool(self.steps)

    def __repr__(self) -> str:
        return f"Chain({self.to_json()})"

    @property
    def crf(self) -> dict | None:
        """The CRF's parameters when the chain starts with one, else None."""
        if self.steps and self.steps[0]["step"] == "crf":
            return {k: v for k, v in self.steps[0].items() if k != "step"}
        return None

    def labels_from_probabilities(
        self, probs: np.ndarray, image: np.ndarray, spacing
    ) -> np.ndarray:
        """Class map `[*S]` of probabilities `[*S, K]`: the CRF's (image `[*S, C]` on the
        same grid) if the chain has one, else the argmax."""
        params = self.crf
        if params is None:
            return np.argmax(probs, axis=-1).astype(
                np.uint8 if probs.shape[-1] <= 256 else np.uint16
            )
        return crf_lib.crf_labels(probs, image, spacing, **params)

    def apply(self, labels: np.ndarray, spacing: Sequence[float]) -> np.ndarray:
        """The label steps, in order, on an int `[*S]` map at `spacing` (mm); same dtype."""
        out = labels
        for i, s in enumerate(self.steps):
            name = s["step"]
            if name == "open":
                out = morphology.open_labels(out, spacing, s["radius_mm"], s["classes"])
            elif name == "close":
                out = morphology.close_labels(out, spacing, s["radius_mm"], s["classes"])
            elif name == "fill_holes":
                if s["axis"] is not None and s["axis"] >= np.ndim(out):
                    raise DataError(
                        f"fill_holes: axis={s['axis']} for a {np.ndim(out)}D label map."
                    )
                out = morphology.fill_holes(out, s["classes"], s["axis"])
            elif name == "keep_components":
                out = keep_components(
                    out,
                    spacing,
                    top_k=s["top_k"],
                    min_volume_mm3=s["min_volume_mm3"],
                    classes=s["classes"],
                    foreground=s["foreground"],
                    connectivity=s["connectivity"],
                )
            elif name == "hierarchy":
                out = hierarchy_lib.apply_hierarchy(out, self._hierarchies[i], s["outside"])
        return out

    def to_json(self) -> list[dict]:
        """The steps with every option, classes by name: what ran, re-parseable."""
        out = []
        for s in self.steps:
            s = dict(s)
            if s.get("classes") is not None:
                s["classes"] = [self.labels[k] for k in s["classes"]]
            out.append(plain(s))
        return out


def save_chain(chain: Chain, path: str | os.PathLike) -> None:
    """Writes `chain.to_json()` atomically (a temporary file beside `path`, renamed)."""
    path = epath.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.{uuid.uuid4().hex}.tmp"
    try:
        tmp.write_text(json.dumps({"steps": chain.to_json()}, indent=2) + "\n")
        tmp.replace(path)
    finally:
        if tmp.exists():
            tmp.unlink()


def load_chain(path: str | os.PathLike, labels: Mapping[int, str]) -> Chain:
    """Reads a chain written by `save_chain`; errors name the file."""
    path = epath.Path(path)
    try:
        steps = json.loads(path.read_text())["steps"]
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as err:
        raise DataError(
            f'{path}: not a postprocessing chain ({err}); expected {{"steps": [...]}}.'
        ) from None
    return Chain(steps, labels, where=str(path))
