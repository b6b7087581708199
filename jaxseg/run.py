"""A training run's workdir: what it holds and how to rebuild its model from it.

    workdir/config.json    the full config the run was trained with
    workdir/run.json       dataset facts the model needs (dims, channels, classes, labels,
                           the class -> label-file value table)
    workdir/splits.json    the case ids of the train / val / test splits
    workdir/checkpoints/   latest train states;  workdir/best/  best by validation Dice

evaluate, predict and export need only `--workdir`: everything else is read from here.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections

from jaxseg import models
from jaxseg.config import config_from_json
from jaxseg.data.dataset import check_label_values
from jaxseg.errors import ConfigError, JaxsegError
from jaxseg.training import checkpoint
from jaxseg.training import mesh as mesh_lib
from jaxseg.training import optimizer as optimizer_lib
from jaxseg.training.state import TrainState, init_train_state


@dataclasses.dataclass(frozen=True)
class RunInfo:
    """What the model and the pre-processing need to know about the training data.

    `labels` maps class index -> name; `label_values[k]` is the value class k has in the
    dataset's label files, so predictions are written in those values (empty, as in
    run.json files written before it existed: the identity).
    """

    dims: int
    in_channels: int
    num_classes: int
    labels: dict[int, str]
    modalities: tuple[str, ...]
    dataset_root: str
    label_values: tuple[int, ...] = ()

    def __post_init__(self):
        object.__setattr__(
            self,
            "label_values",
            check_label_values(self.label_values, self.num_classes, "run.json"),
        )

    @classmethod
    def from_spec(cls, spec) -> RunInfo:
        return cls(
            dims=spec.dims,
            in_channels=len(spec.modalities),
            num_classes=spec.num_classes,
            labels=dict(spec.labels),
            modalities=tuple(spec.modalities),
            dataset_root=str(spec.root),
            label_values=tuple(spec.label_values),
        )

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2)

    @classmethod
    def from_json(cls, text: str) -> RunInfo:
        d = json.loads(text)
        d["labels"] = {int(k): v for k, v in d["labels"].items()}
        d["modalities"] = tuple(d["modalities"])
        d["label_values"] = tuple(d.get("label_values", ()))
        return cls(**d)


def save_run(
    workdir: Path, config: ml_collections.ConfigDict, info: RunInfo, splits: dict[str, list[str]]
) -> None:
    """Writes config.json, run.json and splits.json; refuses a workdir of another model.

    A rerun may change training fields (more steps, another learning rate) but not the
    model or the data, or the checkpoints would not fit. Model arguments that only choose
    how the same parameters are computed (`COMPUTE_ONLY_ARGS`: remat, kernel choices) may
    change, so a run trained with remat on a pod can resume without it, and vice versa.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    config_path = workdir / "config.json"
    if config_path.exists():
        old = config_from_json(config_path.read_text())
        for section in ("model", "data"):
            fixed = ("name", "args") if section == "model" else ("root", "split_seed", "patch_size")
            for key in fixed:
                was, now = old[section][key], config[section][key]
                if section == "model" and key == "args":
                    was, now = _structural_args(was), _structural_args(now)
                if _normalise(was) != _normalise(now):
                    raise ConfigError(
                        f"{section}.{key} is {now!r} but the run in {workdir} was trained "
                        f"with {was!r}; use a new --workdir or the original value"
                    )
    if jax.process_index() == 0:
        _write_atomic(config_path, config.to_json(indent=2))
        _write_atomic(workdir / "run.json", info.to_json())
        _write_atomic(workdir / "splits.json", json.dumps(splits, indent=2))


# Model arguments that change how parameters are computed, never which parameters exist.
COMPUTE_ONLY_ARGS = frozenset(
    {"remat", "use_checkpoint", "attention_impl", "depthwise_impl", "dynamic_impl"}
)


def _structural_args(args: Any) -> Any:
    return {k: v for k, v in _normalise(args).items() if k not in COMPUTE_ONLY_ARGS}


def _normalise(value: Any) -> Any:
    if isinstance(value, ml_collections.ConfigDict):
        return {k: _normalise(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_normalise(v) for v in value]
    return value


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)


def load_run(workdir: str | Path) -> tuple[ml_collections.ConfigDict, RunInfo]:
    workdir = Path(workdir)
    for name in ("config.json", "run.json"):
        if not (workdir / name).is_file():
            raise JaxsegError(
                f"{workdir / name} is missing: {workdir} is not a jaxseg "
                "training workdir (train with python -m jaxseg.train first)"
            )
    return (
        config_from_json((workdir / "config.json").read_text()),
        RunInfo.from_json((workdir / "run.json").read_text()),
    )


def load_splits(workdir: str | Path) -> dict[str, list[str]]:
    path = Path(workdir) / "splits.json"
    if not path.is_file():
        raise JaxsegError(f"{path} is missing; it is written by python -m jaxseg.train")
    return json.loads(path.read_text())


COMPUTE_DTYPES = ("float32", "bfloat16")


def build_model(config: ml_collections.ConfigDict, info: RunInfo):
    """The model named by `config.model` for the data described by `info`, computing in
    `train.compute_dtype` (its parameters stay float32)."""
    args = {k: (tuple(v) if isinstance(v, list) else v) for k, v in config.model.args.items()}
    dtype = config.train.get("compute_dtype", "float32")
    if dtype not in COMPUTE_DTYPES:
        raise ConfigError(f"train.compute_dtype={dtype!r}; use one of {COMPUTE_DTYPES}")
    args.setdefault("dtype", jnp.dtype(dtype))
    return models.build_model(
        config.model.name,
        dims=info.dims,
        in_channels=info.in_channels,
        num_classes=info.num_classes,
        **args,
    )


def abstract_state(model, optimizer, config, info: RunInfo, mesh) -> TrainState:
    """Shapes, dtypes and shardings (`mesh.param_rules`) of the train state, uncomputed."""
    sample = jnp.zeros((1, *config.data.patch_size, info.in_channels), jnp.float32)
    shapes = jax.eval_shape(lambda: init_train_state(model, optimizer, jax.random.key(0), sample))
    shardings = mesh_lib.state_shardings(shapes, mesh, config.mesh)
    return jax.tree_util.tree_map(
        lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh), shapes, shardings
    )


def load_trained(workdir: str | Path, which: str = "auto"):
    """Loads a trained run: (config, info, model, params).

    which: "best" (highest validation Dice), "latest", or "auto" (best if there is one).
    """
    config, info = load_run(workdir)
    model = build_model(config, info)
    optimizer = optimizer_lib.make_optimizer(config.train)
    # Inference restores onto this process's first device, whatever the training mesh was.
    mesh = mesh_lib.make_mesh(ml_collections.ConfigDict({"data": 1}), jax.local_devices()[:1])
    ckpts = checkpoint.Checkpoints(workdir, read_only=True)
    try:
        if which == "auto":
            which = checkpoint.BEST if ckpts.available(checkpoint.BEST) else checkpoint.LATEST
        state = ckpts.restore(abstract_state(model, optimizer, config, info, mesh), which=which)
    finally:
        ckpts.close()
    return config, info, model, state.params
