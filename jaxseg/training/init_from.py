"""`train.init_from`: start a run from another run's parameters, matched by path.

A source is
  * a workdir with a checkpoint (`checkpoints/` or `best/`, as `jaxseg.training.checkpoint`
    writes them): a training run, or a pretraining run (`jaxseg.pretrain`), whose train
    state's `params` keeps the segmentation model's parameter paths for what it shares
    with it (a SimMIM encoder under "stage0_block0/qkv/kernel", "swinViT/...", ...). The
    tree is read as stored (`workdir.read_params`), with no model built. A source trained
    with LoRA is merged first (`peft.merge_lora`, its `finetune.alpha`) unless this run
    has LoRA too;
  * a MONAI SwinUNETR / UNETR checkpoint file (`.pt`, `.pth`), mapped onto this model's
    paths by `jaxseg.models.convert.monai_to_flax`.

Every path of this model the source has must have the same shape there, or a ConfigError
lists all that differ with both shapes. Paths the source lacks keep their fresh
initialisation and paths only the source has are ignored; both are listed at the start.
A source sharing no path with the model is another architecture: an error naming both.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import numpy as np
from etils import epath

from jaxseg.config import config_from_json
from jaxseg.errors import ConfigError
from jaxseg.models import convert, peft
from jaxseg.training.mesh import path_name
from jaxseg.workdir import CONFIG_FILE, as_path, read_params

MONAI_SUFFIXES = (".pt", ".pth")
_SHOWN = 20  # paths printed per list


@dataclasses.dataclass(frozen=True)
class Match:
    """How a source's parameters (`{path: array}`, "a/b/kernel") fit a model's."""

    source: str
    model: str
    loaded: dict[str, Any]  # model path -> the source's array, same shape
    missing: tuple[str, ...]  # model paths the source lacks: initialised fresh
    extra: tuple[str, ...]  # source paths (MONAI keys) the model lacks: ignored

    def describe(self) -> str:
        """Lines for the log: counts, then the missing and extra paths (LoRA and adapter
        leaves are new by design and only counted)."""
        new = [p for p in self.missing if peft.is_peft_path(p)]
        missing = [p for p in self.missing if not peft.is_peft_path(p)]
        lines = [
            f"train.init_from={self.source}: {len(self.loaded)} parameter arrays loaded into "
            f"{self.model}, {len(missing)} initialised fresh"
            + (f" (plus {len(new)} LoRA/adapter arrays)" if new else "")
            + f", {len(self.extra)} of the source's ignored."
        ]
        for title, paths in (("fresh (not in the source)", missing), ("ignored", self.extra)):
            if paths:
                more = f" ... and {len(paths) - _SHOWN} more" if len(paths) > _SHOWN else ""
                lines.append(f"  {title}: {', '.join(paths[:_SHOWN])}{more}")
        return "\n".join(lines)


def _flat(tree: Any) -> dict[str, Any]:
    return {path_name(p): leaf for p, leaf in jax.tree_util.tree_leaves_with_path(tree)}


def read_source(source: str, like: Any) -> dict[str, Any]:
    """The source's parameters as `{path: numpy array}` (paths "a/b/kernel"); `like` is
    this model's parameter tree (arrays or shapes), which a MONAI file is mapped onto."""
    path = as_path(source)
    if str(source).endswith(MONAI_SUFFIXES):
        if not path.is_file():
            raise ConfigError(f"train.init_from={source}: no such file")
        return _read_monai(path, like)
    if not path.is_dir():
        raise ConfigError(
            f"train.init_from={source}: neither a workdir nor a MONAI checkpoint "
            f"({'/'.join(MONAI_SUFFIXES)} file)"
        )
    params, _, _ = read_params(path)
    if peft.has_lora(params) and not any(peft.is_peft_path(p) for p in _flat(like)):
        params = peft.merge_lora(params, _source_alpha(path))
    return _flat(jax.device_get(params))


def _source_alpha(workdir: epath.Path) -> float:
    config_file = workdir / CONFIG_FILE
    config = config_from_json(config_file.read_text()) if config_file.exists() else None
    finetune = None if config is None else config.get("finetune")
    if finetune is None:
        raise ConfigError(f"train.init_from={workdir}: LoRA factors but no finetune.alpha")
    return float(finetune.alpha)


def _read_monai(path: epath.Path, like: Any) -> dict[str, Any]:
    import torch  # only for MONAI checkpoints

    with path.open("rb") as f:
        state = torch.load(f, map_location="cpu", weights_only=True)
    targets = {tuple(p.split("/")): None for p in _flat(like)}
    converted, unexpected = convert.monai_to_flax(state, targets)
    flat = {"/".join(p): v for p, (_, _, v) in converted.items()}
    # MONAI keys no parameter path takes: reported among the source's extra paths.
    flat.update({f"(MONAI) {key}": np.zeros(0, np.float32) for key in unexpected})
    return flat


def match(source: str, theirs: dict[str, Any], like: Any, model_name: str) -> Match:
    """Matches the source's `{path: array}` against the model's tree `like` (arrays or
    shapes); ConfigError on any shape mismatch (all listed) or on no common path."""
    ours = _flat(like)
    common = [p for p in ours if p in theirs]
    mismatched = [
        f"{p}: {tuple(np.shape(theirs[p]))} in the source, {tuple(ours[p].shape)} in {model_name}"
        for p in common
        if tuple(np.shape(theirs[p])) != tuple(ours[p].shape)
    ]
    if mismatched:
        raise ConfigError(
            f"train.init_from={source}: {len(mismatched)} parameter(s) differ in shape from "
            f"model {model_name} (same model.args, num_classes and channels?): "
            + "; ".join(mismatched)
        )
    if not common:
        raise ConfigError(
            f"train.init_from={source} shares no parameter path with model {model_name}: "
            f"another architecture (source e.g. {sorted(theirs)[:3]}, model e.g. "
            f"{sorted(ours)[:3]})"
        )
    return Match(
        source=str(source),
        model=model_name,
        loaded={p: theirs[p] for p in common},
        missing=tuple(p for p in ours if p not in theirs),
        extra=tuple(p for p in theirs if p not in ours),
    )


def place(found: Match, like: Any) -> Any:
    """`like` (this run's freshly initialised, sharded parameters) with the matched leaves
    replaced by the source's, laid out as `like`'s."""

    def one(path, a):
        value = found.loaded.get(path_name(path))
        if value is None:
            return a
        # make_array_from_callback: each process places only its own shards (multi-host safe).
        return jax.make_array_from_callback(
            a.shape, a.sharding, lambda idx: np.asarray(value, a.dtype)[idx]
        )

    return jax.tree_util.tree_map_with_path(one, like)
