"""The tiny-U-Net config file the end-to-end tests train from: seconds on a phantom."""

from pathlib import Path

_TEMPLATE = """
from jaxseg.defaults import base_config

def get_config():
    c = base_config()
{lines}
    return c
"""


def write_tiny_config(
    path: Path,
    root: Path,
    *,
    steps: int,
    warmup: int = 1,
    every: int | None = None,
    features: tuple[int, ...] | None = (8, 16),
    patch_size: tuple[int, ...] = (32, 32),
    batch_size: int = 2,
    max_val_cases: int = 1,
    settings: dict[str, object] | None = None,
) -> Path:
    """Writes a `get_config()` file training `unet(features)` for `steps` steps on `root`,
    validating and checkpointing every `every` steps (default: once, at the end).
    `settings` (dotted key -> value, e.g. `{"eval.tta": False}`) come last and win;
    `features=None` leaves model.args empty for another model named in `settings`."""
    every = every or steps
    values = {
        "data.root": str(root),
        "data.patch_size": tuple(patch_size),
        "data.batch_size": batch_size,
        "data.num_threads": 1,
        "model.name": "unet",
        **({} if features is None else {"model.args.features": tuple(features)}),
        "train.steps": steps,
        "train.warmup_steps": warmup,
        "train.log_every": every,
        "train.eval_every": every,
        "train.checkpoint_every": every,
        "eval.max_val_cases": max_val_cases,
        **(settings or {}),
    }
    lines = "\n".join(f"    c.{key} = {value!r}" for key, value in values.items())
    path.write_text(_TEMPLATE.format(lines=lines))
    return path
