"""Parameter-efficient fine-tuning: LoRA and bottleneck adapters on any Linen model.

`LoraModel(inner, ...)` and `AdapterModel(inner, ...)` share `inner`'s scope
(`nn.share_scope`), so their parameter tree is `inner`'s, plus new leaves inside the
modules they adapt (an `nn.intercept_methods` interceptor adds them as the module runs):

  LoRA     `<module path>/lora_a` `[d_in, r]` (a convolution: `[*k, d_in, r]`) and
           `<module path>/lora_b` `[r, d_out]`; the module's output `y` becomes
           `y + (alpha / r) * (x A) B`. B starts at zero, so at step 0 the model is `inner`.
  adapter  `<module path>/adapter_down` `[d, m]`, `adapter_down_bias` `[m]`, `adapter_up`
           `[m, d]`, `adapter_up_bias` `[d]`; `y` becomes `y + up(gelu(down(y)))`
           (Houlsby et al.), `up` starting at zero.

A module is adapted when its name is one of `targets` and it is a Dense layer (`nn.Dense`,
LightSeg's `LowRankDense`), or, with LoRA's `convs`, any one-group `nn.Conv`. Which
parameters train is the optimiser's business (`jaxseg.training.finetune`); these modules
only add the parameters and the arithmetic. `merge_lora` folds LoRA back into the kernels
(`W + (alpha / r) A B`), so the merged tree runs on `inner` alone.
"""

from __future__ import annotations

import re
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from jaxseg.errors import ConfigError

METHODS = ("full", "lora", "adapter", "decoder_only")
LORA_PARAMS = ("lora_a", "lora_b")
ADAPTER_PARAMS = ("adapter_down", "adapter_down_bias", "adapter_up", "adapter_up_bias")
PEFT_PARAMS = frozenset(LORA_PARAMS + ADAPTER_PARAMS)
# The module classes whose output is x @ kernel (+ bias), matched by class name so that the
# zoo needs no import here. Conv is separate: it is adapted only with `convs`.
DENSE_MODULES = ("Dense", "LowRankDense")

# The encoder of each model family, as a regex on parameter paths ("stage0_block0/qkv/
# kernel"): what `decoder_only` freezes and what a SimMIM pretraining run provides. Keyed
# by the start of the registry name. UNet-style models with auto-named layers have no
# clean split: give `finetune.encoder_paths` for them.
ENCODER_PATHS = {
    "lightseg": r"^(stem_|merge\d|stage\d)",
    "swinunetr": r"^swinViT/",
    "unetr": r"^vit/",
    "transunet": r"^(root_|stage\d|patch_embed/|pos_embedding|vit)",
    "resunet": r"^enc",
    "transmed": r"^(enc|down)",
    "mobilenetv3_unet": r"^(stem_|block\d)",
    "shufflenetv2_unet": r"^(stem_|stage\d)",
}


def method_of(config: ml_collections.ConfigDict) -> str:
    """`config.finetune.method`, checked ("full" for configs written before it existed)."""
    finetune = config.get("finetune")
    method = "full" if finetune is None else finetune.get("method", "full")
    if method not in METHODS:
        raise ConfigError(f"finetune.method={method!r} is unknown; use one of {METHODS}")
    return method


def encoder_pattern(config: ml_collections.ConfigDict) -> str:
    """The regex on parameter paths that is the encoder of `config.model.name`
    (`finetune.encoder_paths`, else `ENCODER_PATHS`)."""
    given = config.finetune.get("encoder_paths")
    if given:
        return given
    name = config.model.name
    for prefix, pattern in ENCODER_PATHS.items():
        if name.startswith(prefix):
            return pattern
    raise ConfigError(
        f"finetune.encoder_paths: no encoder is known for model {name!r}; set it to a regex "
        "on parameter paths (e.g. '^enc') that matches the encoder's parameters"
    )


def finetune_model(
    model: nn.Module, config: ml_collections.ConfigDict, model_name: str
) -> nn.Module:
    """`model` with the parameters `config.finetune.method` adds: a `LoraModel` or an
    `AdapterModel` around it, else `model` itself (full, decoder_only)."""
    method = method_of(config)
    ft = config.get("finetune")
    if method == "lora":
        rank, alpha = int(ft.rank), float(ft.alpha)
        if rank < 1 or alpha <= 0:
            raise ConfigError(
                f"finetune.rank={ft.rank} and finetune.alpha={ft.alpha}: need rank >= 1 and alpha > 0"
            )
        targets = tuple(ft.lora_targets)
        return LoraModel(model, rank, alpha, targets, bool(ft.lora_convs), model_name)
    if method == "adapter":
        if int(ft.adapter_dim) < 1:
            raise ConfigError(f"finetune.adapter_dim={ft.adapter_dim}: need >= 1")
        return AdapterModel(model, int(ft.adapter_dim), tuple(ft.adapter_targets), model_name)
    return model


class _Adapted(nn.Module):
    """`inner` in its own scope (its parameter paths unchanged), with `adapt(module, x, y)`
    applied to the output `y` of every module `matches`. Subclasses add the parameters."""

    inner: nn.Module

    def setup(self):
        nn.share_scope(self, self.inner)

    def matches(self, module: nn.Module) -> bool:
        raise NotImplementedError

    def adapt(self, module: nn.Module, x: jax.Array, y: jax.Array) -> jax.Array:
        raise NotImplementedError

    def describe_targets(self) -> str:
        raise NotImplementedError

    def __call__(self, x, *, train: bool = False):
        """x `[B, *S, C]` -> `inner`'s logits `[B, *S, K]`."""
        adapted, dense_names, busy = [], set(), []

        def interceptor(next_fun, args, kwargs, context):
            y = next_fun(*args, **kwargs)
            module = context.module
            if context.method_name != "__call__" or busy or not args:
                return y
            if type(module).__name__ in DENSE_MODULES:
                dense_names.add(module.name)
            if not self.matches(module):
                return y
            adapted.append(module.name)
            busy.append(True)  # the adaptation's own layers are not adapted again
            try:
                return self.adapt(module, args[0], y)
            finally:
                busy.pop()

        with nn.intercept_methods(interceptor):
            out = self.inner(x, train=train)
        if self.is_initializing() and not adapted:
            raise ConfigError(
                f"finetune.method: model {self.model_name!r} has no layer that "
                f"{self.describe_targets()}; its Dense layers are named "
                f"{sorted(n for n in dense_names if n)[:20]}"
            )
        return out


class LoraModel(_Adapted):
    """`inner` with LoRA (see the module docstring); `[B, *S, C]` -> `[B, *S, K]`."""

    rank: int = 8
    alpha: float = 16.0
    targets: tuple[str, ...] = ()
    convs: bool = False
    model_name: str = ""

    def matches(self, module):
        kind = type(module).__name__
        if kind in DENSE_MODULES:
            return module.name in self.targets
        return self.convs and kind == "Conv" and module.feature_group_count == 1

    def describe_targets(self):
        convs = " nor a one-group convolution (finetune.lora_convs)" if self.convs else ""
        return f"is named one of finetune.lora_targets={list(self.targets)}{convs}"

    def adapt(self, module, x, y):
        x = x.astype(y.dtype)
        scale = jnp.asarray(self.alpha / self.rank, y.dtype)
        b = module.param("lora_b", nn.initializers.zeros, (self.rank, y.shape[-1]))
        if type(module).__name__ == "Conv":
            # A is a rank-r convolution with the module's own strides and padding; B mixes
            # its r channels: together the rank-r kernel A.B, applied as two cheap steps.
            kernel = module.get_variable("params", "kernel")
            shape = (*kernel.shape[:-1], self.rank)
            a = module.param("lora_a", nn.initializers.he_uniform(), shape)
            low = module.clone(parent=None, features=self.rank, use_bias=False)
            h = low.apply({"params": {"kernel": a}}, x)
        else:
            a = module.param("lora_a", nn.initializers.he_uniform(), (x.shape[-1], self.rank))
            h = x @ a.astype(y.dtype)
        return y + (h @ b.astype(y.dtype)) * scale


class AdapterModel(_Adapted):
    """`inner` with bottleneck adapters (see the module docstring); `[B, *S, C]` -> `[B, *S, K]`."""

    dim: int = 16
    targets: tuple[str, ...] = ()
    model_name: str = ""

    def matches(self, module):
        return type(module).__name__ in DENSE_MODULES and module.name in self.targets

    def describe_targets(self):
        return f"is named one of finetune.adapter_targets={list(self.targets)}"

    def adapt(self, module, x, y):
        d, dt = y.shape[-1], y.dtype
        down = module.param("adapter_down", nn.initializers.lecun_normal(), (d, self.dim))
        down_b = module.param("adapter_down_bias", nn.initializers.zeros, (self.dim,))
        up = module.param("adapter_up", nn.initializers.zeros, (self.dim, d))
        up_b = module.param("adapter_up_bias", nn.initializers.zeros, (d,))
        h = nn.gelu(y @ down.astype(dt) + down_b.astype(dt))
        return y + h @ up.astype(dt) + up_b.astype(dt)


def _is_dict(node) -> bool:
    return hasattr(node, "keys") and hasattr(node, "items")


def has_lora(params: Any) -> bool:
    """Whether the tree holds LoRA factors."""
    if not _is_dict(params):
        return False
    return "lora_a" in params or any(has_lora(v) for v in params.values())


def merge_lora(params: Any, alpha: float) -> Any:
    """The tree without LoRA leaves, each adapted kernel replaced by `W + (alpha / r) A B`
    (`A [..., d_in, r]`, `B [r, d_out]`; r from A). Runs on the model without LoRA."""
    if not _is_dict(params):
        return params
    out = {k: merge_lora(v, alpha) for k, v in params.items() if k not in LORA_PARAMS}
    if "lora_a" in params:
        if "kernel" not in params:
            raise ConfigError(
                "LoRA cannot merge into a factorised projection (model.args.rank: kernel_down, "
                "kernel_up); export the LoRA model unmerged"
            )
        a, b = jnp.asarray(params["lora_a"]), jnp.asarray(params["lora_b"])
        kernel = jnp.asarray(params["kernel"])
        delta = jnp.tensordot(a, b, axes=1) * (alpha / a.shape[-1])
        out["kernel"] = (kernel + delta.astype(kernel.dtype)).astype(kernel.dtype)
    return out


def mergeable(params: Any) -> bool:
    """Whether every LoRA pair sits next to a full kernel (`merge_lora` can fold it)."""
    if not _is_dict(params):
        return True
    if "lora_a" in params and "kernel" not in params:
        return False
    return all(mergeable(v) for v in params.values())


def is_peft_path(path: str) -> bool:
    """Whether the "/"-joined parameter path is a LoRA or adapter parameter."""
    return path.rsplit("/", 1)[-1] in PEFT_PARAMS


def matching(pattern: str, path: str) -> bool:
    """`re.search(pattern, path)`, a bad pattern a ConfigError naming it."""
    try:
        return re.search(pattern, path) is not None
    except re.error as e:
        raise ConfigError(f"finetune: {pattern!r} is not a regex ({e})") from None


def param_count(tree: Any) -> int:
    """Scalars in a tree of arrays or shapes."""
    return sum(int(np.prod(leaf.shape)) for leaf in jax.tree_util.tree_leaves(tree))
