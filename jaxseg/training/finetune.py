"""Which parameters train (`finetune.method`), and what freezing the others saves.

`trainable_mask(params, config, fresh)` is one bool per parameter leaf, from its path
("stage0_block0/qkv/lora_a"):

  full          None: everything trains (the optimiser is AdamW over the whole tree);
  lora          the LoRA factors (`lora_a`, `lora_b`; `jaxseg.models.peft` adds them);
  adapter       the adapter leaves (`adapter_*`);
  decoder_only  every path the encoder regex (`peft.encoder_pattern`) does not match;

plus, for lora and adapter, the `fresh` paths (those `train.init_from`'s source lacks,
with `finetune.train_fresh`), and for every method but full the paths matching
`finetune.train_also`. The optimiser turns the mask into `optax.multi_transform` labels,
so frozen leaves get `optax.set_to_zero` and no optimiser state at all.
"""

from __future__ import annotations

from typing import Any

import jax
import ml_collections

from jaxseg.errors import ConfigError
from jaxseg.models import peft
from jaxseg.training import optimizer as optimizer_lib
from jaxseg.training.mesh import path_name

_OWN = {"lora": peft.LORA_PARAMS, "adapter": peft.ADAPTER_PARAMS}


def trainable_mask(
    params: Any, config: ml_collections.ConfigDict, fresh: tuple[str, ...] = ()
) -> Any | None:
    """A bool per leaf of `params` (arrays or shapes): True where it trains; None for
    `full` (everything trains)."""
    method = peft.method_of(config)
    if method == "full":
        return None
    ft = config.finetune
    also = ft.get("train_also") or ""
    fresh = set(fresh) if method in _OWN and ft.get("train_fresh", True) else set()
    encoder = peft.encoder_pattern(config) if method == "decoder_only" else None

    def trains(path, _):
        name = path_name(path)
        if also and peft.matching(also, name):
            return True
        if encoder is not None:
            return not peft.matching(encoder, name)
        return name.rsplit("/", 1)[-1] in _OWN[method] or name in fresh

    mask = jax.tree_util.tree_map_with_path(trains, params)
    if not any(jax.tree_util.tree_leaves(mask)):
        raise ConfigError(
            f"finetune.method={method}: no parameter of model {config.model.name} trains "
            "(check finetune.encoder_paths and finetune.train_also)"
        )
    if all(jax.tree_util.tree_leaves(mask)) and method == "decoder_only":
        raise ConfigError(
            f"finetune.encoder_paths={encoder!r} matches no parameter of model "
            f"{config.model.name}: decoder_only would train everything"
        )
    return mask


def _bytes(tree: Any) -> int:
    return sum(leaf.size * leaf.dtype.itemsize for leaf in jax.tree_util.tree_leaves(tree))


def summary(params: Any, trainable: Any | None, train: ml_collections.ConfigDict) -> dict:
    """Counts and optimiser-state bytes (by shape, nothing computed) for `params` with
    `trainable` (None: all), next to full fine-tuning's: {"trainable", "total",
    "fraction", "opt_state_bytes", "full_opt_state_bytes"}."""
    leaves = jax.tree_util.tree_leaves(params)
    total = sum(leaf.size for leaf in leaves)
    if trainable is None:
        n = total
    else:
        n = sum(leaf.size for leaf, t in zip(leaves, jax.tree_util.tree_leaves(trainable)) if t)

    def opt_bytes(mask):
        opt = optimizer_lib.make_optimizer(train, trainable=mask)
        return _bytes(jax.eval_shape(opt.init, params))

    full = opt_bytes(None)
    return {
        "trainable": int(n),
        "total": int(total),
        "fraction": n / max(total, 1),
        "opt_state_bytes": full if trainable is None else opt_bytes(trainable),
        "full_opt_state_bytes": full,
    }


def describe(method: str, facts: dict) -> str:
    """One line for the start of training."""
    mb = lambda b: f"{b / 2**20:.2f} MiB"
    return (
        f"finetune.method={method}: {facts['trainable']:,} of {facts['total']:,} parameters "
        f"train ({100 * facts['fraction']:.2f}%); optimiser state "
        f"{mb(facts['opt_state_bytes'])} (full fine-tuning: {mb(facts['full_opt_state_bytes'])})"
    )
