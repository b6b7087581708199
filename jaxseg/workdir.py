"""A training run's workdir: what it holds, and how a trained model is read back from it.

    workdir/config.json          the full config the run was trained with
    workdir/run.json             dataset facts the model needs (dims, channels, classes,
                                 labels, the class -> label-file value table)
    workdir/splits.json          the case ids of the train / val / test splits
    workdir/checkpoints/<step>/  the latest train states ("state") and input positions ("data")
    workdir/best/<step>/         the train state with the best validation Dice ("state")

evaluate, predict and export need only `--workdir`: everything else is read from here.
Every path is an `etils.epath.Path`, orbax's own path type, so a workdir may be local or
on a bucket (`gs://bucket/run`) alike. This module knows the layout and the reading;
`jaxseg.training.checkpoint` writes the checkpoints into it.
"""

from __future__ import annotations

import dataclasses
import json
import os
import warnings
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from etils import epath

from jaxseg import models, ops, postprocess
from jaxseg.config import config_from_json
from jaxseg.data.labels import check_label_values
from jaxseg.errors import ConfigError, JaxsegError
from jaxseg.models.peft import finetune_model
from jaxseg.models.quantized import QuantizedModel

CONFIG_FILE, RUN_FILE, SPLITS_FILE = "config.json", "run.json", "splits.json"
# The largest-component decision cross-validation took (jaxseg.evaluate over the folds);
# evaluate and predict apply it when it is there.
POSTPROCESSING_FILE = "postprocessing.json"
# The ordered postprocessing chain chosen for the run (tools/postprocessing_table.py
# --write); when absent, the config's eval.postprocess is the chain.
POSTPROCESS_CHAIN_FILE = "postprocess_chain.json"
# The softmax temperature jaxseg.calibrate fitted on the validation split, for one checkpoint.
CALIBRATION_FILE = "calibration.json"
CHECKPOINTS_DIR, BEST_DIR = "checkpoints", "best"
STATE_ITEM, DATA_ITEM = "state", "data"  # the items of one checkpoint step
LATEST, BEST, AUTO = "latest", "best", "auto"
BEST_METRIC = "val_dice"

# Model arguments that change how parameters are computed, never which parameters exist:
# rematerialisation, and the operator implementations `jaxseg.ops` chooses between.
COMPUTE_ONLY_ARGS = frozenset({"remat", "use_checkpoint", *ops.IMPL_ARGS})
COMPUTE_DTYPES = ("float32", "bfloat16")
# The config block that marks an int8 workdir: weights, activations and act_scales.
QUANTIZATION_KEY = "quantization"


def as_path(path: str | os.PathLike) -> epath.Path:
    """`path` as an epath: a URI (`gs://...`) as it is, a local path made absolute."""
    path = epath.Path(path)
    return path if str(path).startswith(("gs://", "s3://")) else path.absolute()


@dataclasses.dataclass(frozen=True)
class RunInfo:
    """What the model and the pre-processing need to know about the training data.

    `labels` maps class index -> name; `label_values[k]` is the value class k has in the
    dataset's label files, so predictions are written in those values (empty, as in
    run.json files written before it existed: the identity). `channel_names` are
    dataset.json's names of the input channels, in order (`predict --modalities`), and
    `case_classes` its case class names (a class head's); both empty in older run.json files.
    """

    dims: int
    in_channels: int
    num_classes: int
    labels: dict[int, str]
    modalities: tuple[str, ...]
    dataset_root: str
    label_values: tuple[int, ...] = ()
    channel_names: tuple[str, ...] = ()
    case_classes: tuple[str, ...] = ()

    def __post_init__(self):
        object.__setattr__(
            self,
            "label_values",
            check_label_values(self.label_values, self.num_classes, RUN_FILE),
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
            channel_names=tuple(spec.channel_names),
            case_classes=tuple(spec.case_classes),
        )

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2)

    @classmethod
    def from_json(cls, text: str) -> RunInfo:
        d = json.loads(text)
        d["labels"] = {int(k): v for k, v in d["labels"].items()}
        d["modalities"] = tuple(d["modalities"])
        for key in ("label_values", "channel_names", "case_classes"):
            d[key] = tuple(d.get(key, ()))
        return cls(**d)


# Fields a rerun in the same workdir must keep, or the checkpoints and splits would not fit.
_FIXED_FIELDS = {"model": ("name", "args"), "data": ("root", "split_seed", "patch_size", "fold")}


def save_run(
    workdir: str | os.PathLike,
    config: ml_collections.ConfigDict,
    info: RunInfo,
    splits: dict[str, list[str]],
) -> None:
    """Writes config.json, run.json and splits.json; refuses a workdir of another model.

    A rerun may change training fields (more steps, another learning rate) but not the
    model or the data, or the checkpoints would not fit. Model arguments that only choose
    how the same parameters are computed (`COMPUTE_ONLY_ARGS`: remat, kernel choices) may
    change, so a run trained with remat on a pod can resume without it, and vice versa.
    """
    workdir = as_path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    config_path = workdir / CONFIG_FILE
    if config_path.exists():
        old = config_from_json(config_path.read_text())
        for section, keys in _FIXED_FIELDS.items():
            for key in keys:
                was, now = old[section].get(key), config[section].get(key)
                if (section, key) == ("model", "args"):
                    was, now = _structural_args(was), _structural_args(now)
                if _normalise(was) != _normalise(now):
                    raise ConfigError(
                        f"{section}.{key} is {now!r} but the run in {workdir} was trained "
                        f"with {was!r}; use a new --workdir or the original value"
                    )
    if jax.process_index() == 0:
        _write_atomic(config_path, config.to_json(indent=2))
        _write_atomic(workdir / RUN_FILE, info.to_json())
        _write_atomic(workdir / SPLITS_FILE, json.dumps(splits, indent=2))


def _structural_args(args: Any) -> Any:
    return {k: v for k, v in _normalise(args).items() if k not in COMPUTE_ONLY_ARGS}


def _normalise(value: Any) -> Any:
    if isinstance(value, ml_collections.ConfigDict):
        return {k: _normalise(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_normalise(v) for v in value]
    return value


def _write_atomic(path: epath.Path, text: str) -> None:
    tmp = path.parent / (path.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)


def load_run(workdir: str | os.PathLike) -> tuple[ml_collections.ConfigDict, RunInfo]:
    """(config, info) of the run in `workdir`."""
    workdir = as_path(workdir)
    for name in (CONFIG_FILE, RUN_FILE):
        if not (workdir / name).is_file():
            raise JaxsegError(
                f"{workdir / name} is missing: {workdir} is not a jaxseg "
                "training workdir (train with python -m jaxseg.train first)"
            )
    return (
        config_from_json((workdir / CONFIG_FILE).read_text()),
        RunInfo.from_json((workdir / RUN_FILE).read_text()),
    )


def load_splits(workdir: str | os.PathLike) -> dict[str, list[str]]:
    """`{"train": [case ids], "val": [...], "test": [...]}` as the run was trained."""
    path = as_path(workdir) / SPLITS_FILE
    if not path.is_file():
        raise JaxsegError(f"{path} is missing; it is written by python -m jaxseg.train")
    return json.loads(path.read_text())


def load_postprocessing(workdir: str | os.PathLike) -> dict | None:
    """The run's postprocessing decision (`jaxseg.postprocess`), or None before one was
    taken."""
    path = as_path(workdir) / POSTPROCESSING_FILE
    return postprocess.load_decision(path) if path.exists() else None


def load_postprocess_chain(
    workdir: str | os.PathLike, config: ml_collections.ConfigDict, info: RunInfo
) -> postprocess.Chain:
    """The run's postprocessing chain (`jaxseg.postprocess.Chain`, possibly empty):
    `postprocess_chain.json` if the run has one, else the config's `eval.postprocess`.
    Checked against the run's classes (an undeclared class or step is a ConfigError)."""
    path = as_path(workdir) / POSTPROCESS_CHAIN_FILE
    if path.exists():
        return postprocess.load_chain(path, info.labels)
    steps = config.eval.get("postprocess", ())
    return postprocess.Chain(steps or (), info.labels, where=f"{workdir}: eval.postprocess")


def save_calibration(workdir: str | os.PathLike, calibration: dict) -> epath.Path:
    """Writes `calibration.json` (`jaxseg.calibrate`'s result: `temperature`, `step`,
    `checkpoint`, ...) atomically, a temporary file renamed over the old one."""
    path = as_path(workdir) / CALIBRATION_FILE
    tmp = path.parent / f".{path.name}.tmp"
    tmp.write_text(json.dumps(calibration, indent=2) + "\n")
    tmp.replace(path)
    return path


def load_temperature(run: TrainedRun) -> float:
    """The softmax temperature `jaxseg.calibrate` fitted for `run`'s checkpoint, or 1 when
    the run was never calibrated. A temperature fitted on another checkpoint (the run
    trained on since) is not applied: it warns and returns 1."""
    path = run.workdir / CALIBRATION_FILE
    if not path.exists():
        return 1.0
    fitted = json.loads(path.read_text())
    if (fitted.get("step"), fitted.get("checkpoint")) != (run.step, run.checkpoint):
        warnings.warn(
            f"{path} was fitted on the {fitted.get('checkpoint')} checkpoint of step "
            f"{fitted.get('step')}, not on this {run.checkpoint} checkpoint of step "
            f"{run.step}; using temperature 1. Rerun python -m jaxseg.calibrate.",
            stacklevel=2,
        )
        return 1.0
    return float(fitted["temperature"])


def model_from_config(config: ml_collections.ConfigDict, info: RunInfo) -> nn.Module:
    """The model `config.model` names, for the data `info` describes, computing in
    `train.compute_dtype` (its parameters stay float32), with the LoRA or adapter layers
    `finetune.method` adds (`jaxseg.models.peft`)."""
    args = {k: (tuple(v) if isinstance(v, list) else v) for k, v in config.model.args.items()}
    dtype = config.train.get("compute_dtype", "float32")
    if dtype not in COMPUTE_DTYPES:
        raise ConfigError(f"train.compute_dtype={dtype!r}; use one of {COMPUTE_DTYPES}")
    args.setdefault("dtype", jnp.dtype(dtype))
    model = models.build_model(
        config.model.name,
        dims=info.dims,
        in_channels=info.in_channels,
        num_classes=info.num_classes,
        **args,
    )
    # finetune.method lora / adapter: the same tree plus the LoRA or adapter leaves.
    model = finetune_model(model, config, config.model.name)
    if is_quantized(config):  # written by python -m jaxseg.compress quantize
        scales = tuple((str(k), float(v)) for k, v in config[QUANTIZATION_KEY].act_scales)
        model = QuantizedModel(inner=model, act_scales=scales)
    return model


def is_quantized(config: ml_collections.ConfigDict) -> bool:
    """Whether the run's weights are stored int8 (`config.quantization`, set by
    `python -m jaxseg.compress quantize`; `jaxseg.models.quantized`)."""
    return config.get(QUANTIZATION_KEY) is not None


def checkpoint_dir(workdir: str | os.PathLike, which: str) -> epath.Path:
    """`workdir/checkpoints` (`which="latest"`) or `workdir/best`."""
    if which not in (LATEST, BEST):
        raise JaxsegError(f"unknown checkpoint {which!r}; use {LATEST!r} or {BEST!r}")
    return as_path(workdir) / (CHECKPOINTS_DIR if which == LATEST else BEST_DIR)


def best_options(**common) -> ocp.CheckpointManagerOptions:
    """The best slot's options: one step kept, the one with the highest `val_dice`."""
    return ocp.CheckpointManagerOptions(
        max_to_keep=1,
        best_fn=lambda metrics: metrics[BEST_METRIC],
        best_mode="max",
        keep_checkpoints_without_metrics=False,
        **common,
    )


def checkpoint_step(manager: ocp.CheckpointManager, which: str) -> int | None:
    """The step `manager` holds for `which` (the best, or the latest), None if empty."""
    return manager.best_step() if which == BEST else manager.latest_step()


@dataclasses.dataclass(frozen=True)
class TrainedRun:
    """A trained run ready for inference: its config, data facts, model and parameters."""

    workdir: epath.Path
    config: ml_collections.ConfigDict
    info: RunInfo
    model: nn.Module
    params: Any
    step: int
    checkpoint: str  # "best" or "latest"


def load_trained(workdir: str | os.PathLike, which: str = AUTO) -> TrainedRun:
    """Reads a trained run's parameters onto this process's first device.

    which: "best" (highest validation Dice), "latest", or "auto" (best if there is one).
    Only the parameters are read (an orbax partial restore of the train state's
    `params`), so neither the optimiser nor the training mesh is needed.
    """
    workdir = as_path(workdir)
    config, info = load_run(workdir)
    model = model_from_config(config, info)
    if which not in (AUTO, LATEST, BEST):
        raise JaxsegError(f"unknown checkpoint {which!r}; use {AUTO!r}, {LATEST!r} or {BEST!r}")
    order = (BEST, LATEST) if which == AUTO else (which,)
    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    sample = jnp.zeros((1, *config.data.patch_size, info.in_channels), jnp.float32)
    shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), sample, train=False))["params"]
    abstract = jax.tree_util.tree_map(
        lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=device), shapes
    )
    restore_args = jax.tree_util.tree_map(lambda s: ocp.ArrayRestoreArgs(sharding=device), shapes)
    for slot in order:
        manager = _params_reader(workdir, slot)
        try:
            step = checkpoint_step(manager, slot)
            if step is None:
                continue
            restored = manager.restore(
                step,
                args=ocp.args.Composite(
                    **{
                        STATE_ITEM: ocp.args.PyTreeRestore(
                            item={"params": abstract},
                            restore_args={"params": restore_args},
                            partial_restore=True,
                        )
                    }
                ),
            )
        finally:
            manager.close()
        params = restored[STATE_ITEM]["params"]
        return TrainedRun(workdir, config, info, model, params, int(step), slot)
    what = "" if which == AUTO else f"{which} "
    raise JaxsegError(
        f"no {what}checkpoint in {workdir}; train first with "
        f"python -m jaxseg.train --workdir {workdir}"
    )


def read_params(workdir: str | os.PathLike, which: str = AUTO) -> tuple[Any, int, str]:
    """`(params, step, slot)`: the `params` subtree of a checkpoint's train state as numpy
    arrays, in the tree the checkpoint holds, with no model built (so a pretraining run's
    parameters read back as well). `which` as in `load_trained`."""
    workdir = as_path(workdir)
    if which not in (AUTO, LATEST, BEST):
        raise JaxsegError(f"unknown checkpoint {which!r}; use {AUTO!r}, {LATEST!r} or {BEST!r}")
    for slot in (BEST, LATEST) if which == AUTO else (which,):
        if not checkpoint_dir(workdir, slot).is_dir():
            continue
        manager = _params_reader(workdir, slot)
        try:
            step = checkpoint_step(manager, slot)
            if step is None:
                continue
            stored = manager.item_metadata(step)[STATE_ITEM]
            stored = getattr(stored, "tree", stored)
            if "params" not in stored:
                raise JaxsegError(f"{workdir}: the checkpoint of step {step} holds no params")
            as_numpy = jax.tree_util.tree_map(
                lambda _: ocp.RestoreArgs(restore_type=np.ndarray), stored["params"]
            )
            restored = manager.restore(
                step,
                args=ocp.args.Composite(
                    **{
                        STATE_ITEM: ocp.args.PyTreeRestore(
                            item={"params": stored["params"]},
                            restore_args={"params": as_numpy},
                            partial_restore=True,
                        )
                    }
                ),
            )
        finally:
            manager.close()
        return restored[STATE_ITEM]["params"], int(step), slot
    raise JaxsegError(f"no checkpoint in {workdir}; train (or pretrain) there first")


def _params_reader(workdir: epath.Path, which: str) -> ocp.CheckpointManager:
    # The train state was written by StandardCheckpointHandler, which stores a PyTree; the
    # PyTree handler reads it back and can restore a part of it (the parameters). Read-only:
    # reading creates, cleans and deletes nothing, so it never changes a workdir.
    common = dict(read_only=True, create=False)
    if which == BEST:
        options = best_options(**common)
    else:
        options = ocp.CheckpointManagerOptions(**common)
    return ocp.CheckpointManager(
        checkpoint_dir(workdir, which),
        options=options,
        item_handlers={STATE_ITEM: ocp.PyTreeCheckpointHandler()},
    )
