"""plan -> an ordinary config file (starts from `base_config()`, like configs/*.py) whose
comments say why each value was chosen. `jaxseg.config.load_config` loads it."""

from __future__ import annotations

import textwrap
from pathlib import Path

__all__ = ["write_config", "config_text"]


def _literal(value):
    """Python literal of a JSON plan value: lists become tuples, floats 7 digits."""
    if isinstance(value, (list, tuple)):
        return tuple(_literal(v) for v in value)
    if isinstance(value, float):
        return float(f"{value:.7g}")
    return value


def _line(key: str, value, why: str) -> list[str]:
    return _comment(why) + [f"    c.{key} = {_literal(value)!r}"]


def _comment(why: str) -> list[str]:
    return [f"    # {c}" for c in textwrap.wrap(why, width=92, break_on_hyphens=False)]


def _norm_why(plan: dict) -> str:
    parts = []
    for ch in plan["normalization"]:
        what = {
            "CTNormalization": "clipped to the dataset's foreground p0.5..p99.5, then "
            "z-scored with its foreground mean and std",
            "ZScoreNormalization": "z-scored per image"
            + (" over the nonzero mask" if ch["use_nonzero_mask"] else ""),
            "NoNormalization": "left as it is",
            "RGBTo01Normalization": "divided by 255",
        }[ch["scheme"]]
        parts.append(f"channel {ch['channel']} ({ch['name']}): {what}")
    why = "; ".join(parts) + " (nnU-Net's scheme for each channel name)"
    if plan["intensity_stats"] is None:
        why += "; no CT channel, so no dataset statistics"
    return why


def config_text(plan: dict) -> str:
    """The config file's source for `plan` (a `jaxseg.planning.make_plan` result)."""
    mem = plan["memory"]
    tr = plan["training"]
    body = [*_comment(f"{plan['dims']}D: {plan['dims_reason']}"), ""]
    body += _line("data.root", plan["root"], "the dataset this plan was made for")
    body += _line(
        "data.target_spacing",
        plan["target_spacing"],
        f"mm per canonical axis: {plan['spacing_reason']}",
    )
    body += _line("data.crop_nonzero", plan["crop_nonzero"], plan["crop_reason"])
    body += _line("data.intensity_stats", plan["intensity_stats"], _norm_why(plan))
    body += _line(
        "data.patch_size",
        plan["patch_size"],
        f"{plan['patch_reason']}; it covers {plan['patch_coverage']:.0%} of the median case",
    )
    body += _line(
        "data.batch_size",
        plan["batch_size"],
        f"{plan['batch_reason']}; the measured train step needs {mem['train_step_gib']:.2f} "
        f"GiB of the {mem['budget_gib']:.2f} GiB budget ({mem['budget_reason']})",
    )
    body += [""]
    body += _line("model.name", plan["model"], "the model planned for (--model)")
    for i, (key, value) in enumerate(plan["model_args"].items()):
        why = (
            plan["stages_reason"]
            if i == 0
            else f"{key} cut to {plan['stages']} of {plan['model']}'s {plan['max_stages']} stages"
        )
        body += _line(f"model.args.{key}", value, why)
    body += [""]
    body += _line("train.steps", tr["steps"], f"{tr['reason']}; {tr['meaning']}")
    body += _line("train.warmup_steps", tr["warmup_steps"], "1% of the steps, 50 to 1000")
    body += _line(
        "train.eval_every", tr["eval_every"], "50 validations per run, at most every 250 steps"
    )
    body += _line("train.checkpoint_every", tr["eval_every"], "with each validation")
    body += _line(
        "eval.batch_size",
        plan["batch_size"],
        "windows per forward pass: a forward pass of the training batch needs less "
        "memory than its train step",
    )
    head = (
        f'"""Planned by `python -m jaxseg.plan` for {plan["dataset"]} ({plan["root"]}), '
        f"{plan['dims']}D {plan['model']}.\n\n"
        "plan.json and fingerprint.json beside this file hold the numbers behind each choice\n"
        "(docs/planning.md explains the rules). An ordinary config file: edit it freely.\n\n"
        "    python -m jaxseg.train --config THIS_FILE --workdir runs/NAME [--config.data.fold=0]\n"
        '"""\n\n'
        "import ml_collections\n\n"
        "from jaxseg.defaults import base_config\n\n\n"
        "def get_config() -> ml_collections.ConfigDict:\n"
        "    c = base_config()\n"
    )
    return head + "\n".join(body) + "\n    return c\n"


def write_config(plan: dict, path: str | Path) -> Path:
    """Writes `plan` as a config file at `path`; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Atomic: `jaxseg.train --data` takes an existing config.py as a finished plan.
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(config_text(plan))
    tmp.replace(path)
    return path
