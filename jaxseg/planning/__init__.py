"""Automatic planning: dataset fingerprint -> plan -> config file (docs/planning.md).

    fingerprint = fingerprint_dataset(load_dataset(root))     # what the data is
    plan = make_plan(fingerprint)                             # what to train, and why
    write_config(plan, "plans/NAME/config.py")                # an ordinary config file

`plan_dataset(root, out_dir)` does all three and writes fingerprint.json, plan.json and
config.py into `out_dir` (`python -m jaxseg.plan` is its face).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from pathlib import Path

from jaxseg.errors import ConfigError
from jaxseg.planning.config_file import config_text, write_config
from jaxseg.planning.fingerprint import fingerprint_dataset
from jaxseg.planning.memory import GIB
from jaxseg.planning.plan import DEFAULT_MODEL, check_dims, make_plan

__all__ = [
    "DEFAULT_MAX_CASES",
    "DEFAULT_MODEL",
    "config_text",
    "fingerprint_dataset",
    "make_plan",
    "plan_dataset",
    "write_config",
]

DEFAULT_MAX_CASES = 100  # cases read for the fingerprint (a 1,000-case CT set in minutes)
FINGERPRINT_FILE, PLAN_FILE, CONFIG_FILE = "fingerprint.json", "plan.json", "config.py"


def check_out_dir(out_dir: str | Path, force: bool = False) -> Path:
    """`out_dir`, unless it is a non-empty folder (or a file) and not `force`: ConfigError."""
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is a file; give a folder for the plan.")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise ConfigError(
            f"--out {out} already holds files; pass --force to overwrite them, or choose "
            "another folder."
        )
    return out


def plan_dataset(
    data_root: str | Path,
    out_dir: str | Path,
    *,
    model: str = DEFAULT_MODEL,
    dims: int | None = None,
    memory_budget_gib: float | None = None,
    platform: str | None = None,
    steps: int | None = None,
    max_cases: int | None = DEFAULT_MAX_CASES,
    seed: int = 0,
    progress: bool = True,
    time_step: bool = True,
    force: bool = False,
    measure: Callable,
) -> tuple[dict, dict, Path]:
    """Fingerprints the dataset at `data_root`, plans it and writes fingerprint.json,
    plan.json and config.py into `out_dir`. Returns (fingerprint, plan, config path).

    Refuses (ConfigError) a non-empty `out_dir` unless `force`, before any work.
    """
    from jaxseg.data.dataset import load_dataset
    from jaxseg.data.splits import make_splits

    out = check_out_dir(out_dir, force)
    if memory_budget_gib is not None and not memory_budget_gib > 0:
        raise ConfigError(f"memory budget {memory_budget_gib} GiB: give a positive number.")
    spec = load_dataset(data_root)
    check_dims(dims, spec.dims, f"{spec.root}: ")  # before the fingerprint's minutes
    # The held-out test split (data.split_seed 0, the written config's) stays unseen, as
    # nnU-Net never sees imagesTs: the plan's statistics come from train + val only.
    test = {c.case_id for c in make_splits(spec.training, seed=0)["test"]}
    pool = dataclasses.replace(
        spec, training=tuple(c for c in spec.training if c.case_id not in test)
    )
    fingerprint = fingerprint_dataset(pool, max_cases=max_cases, seed=seed, progress=progress)
    plan = make_plan(
        fingerprint,
        model=model,
        dims=dims,
        memory_budget=None if memory_budget_gib is None else int(memory_budget_gib * GIB),
        platform=platform,
        steps=steps,
        time_step=time_step,
        progress=progress,
        measure=measure,
    )
    out.mkdir(parents=True, exist_ok=True)
    (out / FINGERPRINT_FILE).write_text(json.dumps(fingerprint, indent=1) + "\n")
    (out / PLAN_FILE).write_text(json.dumps(plan, indent=1) + "\n")
    return fingerprint, plan, write_config(plan, out / CONFIG_FILE)
