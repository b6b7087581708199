"""Load MONAI PyTorch weights (SwinUNETR, UNETR) into jaxseg's Flax parameters.

    import torch
    from jaxseg.models.convert import from_monai, load_monai
    ckpt = torch.load("model.pt", map_location="cpu", weights_only=True)
    model, params = load_monai(ckpt)                   # architecture inferred from the weights
    params = from_monai(ckpt, model)                   # or: into a model you built yourself
    logits = model.apply({"params": params}, x_nhwc)   # channels-last input

Accepted layouts (checked in tests/models/test_monai_parity.py):
  * a plain MONAI `model.state_dict()` (torch tensors or numpy arrays);
  * a checkpoint dict wrapping it under "state_dict" (research-contributions, Lightning)
    or "model"/"net" (other trainers);
  * DataParallel/DDP's "module." prefix; the research-contributions pretraining names
    "swin_vit." (for "swinViT.") and timm's "mlp.fc1"/"mlp.fc2" (for MONAI's
    "mlp.linear1"/"mlp.linear2"); encoder-only SwinViT checkpoints ("patch_embed.",
    "layers1.0.", ... without "swinViT.", e.g. the self-supervised model_swinvit.pt) load
    with `strict=False` and `params=` to supply the decoder;
  * buffers that are not parameters are ignored ("relative_position_index"), and so are
    the stale "cross_attn.*" keys of some MONAI 1.x ViT checkpoints; checkpoints older
    than MONAI's always-present "norm_cross_attn" LayerNorm (unused in the forward pass)
    get it filled with ones/zeros.

Key rule: a MONAI key maps to a Flax path by splitting on ".", joining each list index
to the name before it with "_" and renaming the leaf: "weight" -> "kernel" (Linear:
transposed; Conv `[out, in, *k]` -> `[*k, in, out]`; ConvTranspose `[in, out, *k]` ->
`[*k, in, out]`) or "scale" (norms); "bias" and the named parameters keep their names.
Anything that does not fit raises `ConfigError` naming the missing, unexpected and
mismatched keys.
"""

from __future__ import annotations

import math
import re
import warnings
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxseg.errors import ConfigError

_WRAPPERS = ("state_dict", "model", "net", "model_state_dict")
_IGNORED = (re.compile(r"(^|\.)relative_position_index$"), re.compile(r"(^|\.)cross_attn\."))
_SWIN_ENCODER_ROOTS = (
    "patch_embed.",
    "layers1.",
    "layers2.",
    "layers3.",
    "layers4.",
    "layers1c.",
    "layers2c.",
    "layers3c.",
    "layers4c.",
)
# MONAI transposed convolutions: UnetrUpBlock/UnetrPrUpBlock "transp_conv(_init)" and the
# up-convs inside UnetrPrUpBlock.blocks (blocks.i.conv or blocks.i.0.conv).
_TRANSPOSED = re.compile(
    r"(transp_conv(_init)?\.conv\.weight$)|(^encoder\d+\.blocks\.\d+\.(0\.)?conv\.weight$)"
)


def _to_numpy(v) -> np.ndarray:
    if hasattr(v, "detach"):  # torch.Tensor, without importing torch
        v = v.detach().cpu()
        if v.is_floating_point():
            v = v.float()
        return v.numpy()
    return np.asarray(v)


def _is_array(v) -> bool:
    return hasattr(v, "shape") and hasattr(v, "dtype")


def unwrap_state_dict(obj) -> dict[str, Any]:
    """The tensor mapping inside a checkpoint (a state dict, or one wrapped by a trainer)."""
    if not isinstance(obj, Mapping):
        raise ConfigError(
            f"from_monai: expected a state dict (a mapping of names to tensors); got {type(obj).__name__}."
        )
    for _ in range(3):
        if obj and all(_is_array(v) for v in obj.values()):
            return dict(obj)
        inner = [k for k in _WRAPPERS if isinstance(obj.get(k), Mapping)]
        if not inner:
            break
        obj = obj[inner[0]]
    tensors = {k: v for k, v in obj.items() if _is_array(v)}
    if not tensors:
        raise ConfigError(
            "from_monai: no tensors found; expected a MONAI state_dict or a checkpoint dict with one under "
            f"{_WRAPPERS}. Top-level keys: {sorted(map(str, obj))[:20]}."
        )
    return tensors


def normalize_monai_keys(state_dict) -> dict[str, np.ndarray]:
    """Unwrap, drop non-parameter buffers and rename legacy keys to MONAI 1.6.1's names.

    Returns `{monai_key: float32/int numpy array}`.
    """
    sd = unwrap_state_dict(state_dict)
    out: dict[str, np.ndarray] = {}
    for key, value in sd.items():
        k = str(key)
        while k.startswith("module."):  # DataParallel / DDP
            k = k[len("module.") :]
        if k.startswith("swin_vit."):  # research-contributions pretraining name
            k = "swinViT." + k[len("swin_vit.") :]
        if k.startswith(_SWIN_ENCODER_ROOTS):  # encoder-only SwinViT checkpoint
            k = "swinViT." + k
        if k.startswith("swinViT."):
            k = k.replace(".mlp.fc1.", ".mlp.linear1.").replace(".mlp.fc2.", ".mlp.linear2.")
        if any(p.search(k) for p in _IGNORED):
            continue
        if k in out:
            raise ConfigError(
                f"from_monai: two checkpoint keys map to {k!r} after renaming legacy names; "
                "the checkpoint mixes layouts."
            )
        out[k] = _to_numpy(value)
    return out


def _flax_path(key: str) -> tuple[str, ...]:
    parts: list[str] = []
    for p in key.split("."):
        if p.isdigit() and parts:
            parts[-1] = f"{parts[-1]}_{p}"
        else:
            parts.append(p)
    return tuple(parts)


def _convert(key: str, value: np.ndarray, leaf: str) -> np.ndarray:
    if leaf == "kernel":
        if value.ndim == 2:
            value = value.T
        elif value.ndim >= 3:
            d = value.ndim - 2
            if _TRANSPOSED.search(key):  # [in, out, *k]
                value = value.transpose(*range(2, 2 + d), 0, 1)
            else:  # [out, in, *k]
                value = value.transpose(*range(2, 2 + d), 1, 0)
    return value


def _target_shapes(model: nn.Module) -> dict[tuple[str, ...], tuple[int, ...]]:
    if hasattr(model, "img_shape"):  # UNETR: the position embeddings follow img_size
        spatial = model.img_shape()
    else:
        spatial = (getattr(model, "total_stride", 32),) * model.dims
    x = jax.ShapeDtypeStruct((1, *spatial, model.in_channels), jnp.float32)
    shapes = jax.eval_shape(lambda x: model.init(jax.random.key(0), x), x)["params"]
    flat = jax.tree_util.tree_flatten_with_path(shapes)[0]
    return {tuple(p.key for p in path): tuple(leaf.shape) for path, leaf in flat}


def _unflatten(flat: dict[tuple[str, ...], Any]) -> dict:
    tree: dict = {}
    for path, v in flat.items():
        node = tree
        for p in path[:-1]:
            node = node.setdefault(p, {})
        node[path[-1]] = v
    return tree


def _fmt(keys, n: int = 25) -> str:
    keys = sorted(keys)
    more = f" ... and {len(keys) - n} more" if len(keys) > n else ""
    return ", ".join(keys[:n]) + more


def monai_to_flax(
    state_dict, targets
) -> tuple[dict[tuple[str, ...], tuple[str, tuple[int, ...], np.ndarray]], list[str]]:
    """MONAI weights in Flax layout, by the Flax path among `targets` (a model's parameter
    paths, tuples of names) each key maps to: `{path: (key, MONAI shape, array)}`, shapes
    unchecked; and the keys that map to none of `targets`."""
    out, unexpected = {}, []
    for key, value in normalize_monai_keys(state_dict).items():
        path = _flax_path(key)
        candidates = (
            [path[:-1] + ("kernel",), path[:-1] + ("scale",)] if path[-1] == "weight" else [path]
        )
        hit = next((c for c in candidates if c in targets), None)
        if hit is None:
            unexpected.append(key)
            continue
        out[hit] = (key, tuple(value.shape), _convert(key, value, hit[-1]))
    return out, unexpected


def from_monai(
    state_dict, model: nn.Module | None = None, *, params=None, strict: bool = True
) -> dict:
    """Convert MONAI SwinUNETR/UNETR weights into Flax params for `model`.

    Args:
      state_dict: a MONAI `state_dict()` or a checkpoint wrapping one (see the module doc).
      model: a `jaxseg.models.SwinUNETR` or `UNETR` built with the MONAI model's settings;
        None infers them from the weights (`infer_monai_config`).
      params: Flax params supplying every parameter the checkpoint lacks (strict=False).
      strict: True: every parameter must come from the checkpoint and every checkpoint key
        must be used, else `ConfigError` listing the missing and unexpected keys. False:
        missing ones come from `params`, unexpected keys are reported with a warning.

    Returns:
      the params pytree (`model.apply({"params": params}, x)`), float32 jax arrays.
    """
    sd = normalize_monai_keys(state_dict)
    if model is None:
        name, kwargs = infer_monai_config(sd)
        from jaxseg.models import build_model

        model = build_model(name, **kwargs)
    targets = _target_shapes(model)
    converted, unexpected = monai_to_flax(sd, targets)
    out: dict[tuple[str, ...], Any] = {}
    mismatched = []
    for hit, (key, shape, v) in converted.items():
        if tuple(v.shape) != targets[hit]:
            mismatched.append(f"{key} {shape} -> {'/'.join(hit)} expects {targets[hit]}")
            continue
        out[hit] = jnp.asarray(v, jnp.float32)
    missing = [p for p in targets if p not in out]
    # Checkpoints older than MONAI's always-allocated (unused) norm_cross_attn LayerNorm.
    for p in [p for p in missing if len(p) >= 2 and p[-2] == "norm_cross_attn"]:
        out[p] = (jnp.ones if p[-1] == "scale" else jnp.zeros)(targets[p], jnp.float32)
        missing.remove(p)
    model_name = type(model).__name__
    if mismatched:
        raise ConfigError(
            f"from_monai: {len(mismatched)} shape mismatch(es) for {model_name}: "
            f"{'; '.join(mismatched[:15])}. Build the model with the checkpoint's settings "
            "(feature_size, depths, num_heads, window_size, in_channels, num_classes, ...)."
        )
    if strict and (missing or unexpected):
        raise ConfigError(
            f"from_monai: the checkpoint does not match {model_name}.\n"
            f"  missing ({len(missing)}): {_fmt(['.'.join(p) for p in missing])}\n"
            f"  unexpected ({len(unexpected)}): {_fmt(unexpected)}\n"
            "Check the model settings (use_v2, qkv_bias, patch_norm, norm_name, conv_block, res_block, ...), or "
            "pass strict=False with params= to load a partial checkpoint (e.g. a pretrained encoder)."
        )
    if missing:
        if params is None:
            raise ConfigError(
                f"from_monai: {len(missing)} parameter(s) are not in the checkpoint "
                f"({_fmt(['.'.join(p) for p in missing], 10)}); pass params= (e.g. from model.init) "
                "to supply them."
            )
        given = {
            tuple(k.key for k in path): leaf
            for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]
        }
        for p in missing:
            if p not in given:
                raise ConfigError(
                    f"from_monai: params= has no {'/'.join(p)}; it must be {model_name}'s params."
                )
            out[p] = jnp.asarray(given[p])
    if unexpected:
        warnings.warn(
            f"from_monai: ignored {len(unexpected)} checkpoint key(s) that {model_name} does not have: "
            f"{_fmt(unexpected, 10)}",
            stacklevel=2,
        )
    return _unflatten(out)


def _count_indices(sd, prefix: str) -> int:
    pat = re.compile(re.escape(prefix) + r"(\d+)\.")
    found = {int(m.group(1)) for k in sd for m in [pat.match(k)] if m}
    return max(found) + 1 if found else 0


def _norm_from(sd, key_prefix: str):
    # Instance norm without affine parameters is MONAI's default; affine weights may also be
    # a group norm, which the weights cannot tell apart: pass norm_name= to override.
    return ("instance", {"affine": True}) if f"{key_prefix}.weight" in sd else "instance"


def infer_monai_config(state_dict, **overrides) -> tuple[str, dict]:
    """`(registry name, build_model kwargs)` of the MONAI model the weights come from.

    SwinUNETR: everything except `downsample` ("merging" vs "mergingv2" have identical
    shapes; MONAI's default "merging" is assumed) and group-vs-affine-instance norms.
    UNETR: everything except `num_heads` (assumed 12 only for MONAI's default
    hidden_size 768) and a non-cubic `img_size`. `overrides` replace inferred values.
    """
    sd = normalize_monai_keys(state_dict)
    if "swinViT.patch_embed.proj.weight" in sd:
        if "out.conv.conv.weight" not in sd:
            raise ConfigError(
                "infer_monai_config: this is an encoder-only SwinViT checkpoint (no decoder). "
                "Build SwinUNETR yourself and call from_monai(ckpt, model, params=..., strict=False)."
            )
        w = sd["swinViT.patch_embed.proj.weight"]
        dims = w.ndim - 2
        fs = w.shape[0]
        depths = tuple(_count_indices(sd, f"swinViT.layers{i}.0.blocks.") for i in range(1, 5))
        heads = tuple(
            sd[f"swinViT.layers{i}.0.blocks.0.attn.relative_position_bias_table"].shape[1]
            for i in range(1, 5)
        )
        rows = sd["swinViT.layers1.0.blocks.0.attn.relative_position_bias_table"].shape[0]
        side = round(rows ** (1.0 / dims))
        if side**dims != rows or side % 2 == 0:
            raise ConfigError(
                f"infer_monai_config: cannot infer an isotropic window from a bias table of {rows} "
                "rows; pass window_size=."
            )
        kwargs = dict(
            dims=dims,
            in_channels=w.shape[1],
            num_classes=sd["out.conv.conv.weight"].shape[0],
            feature_size=fs,
            patch_size=int(w.shape[2]),
            depths=depths,
            num_heads=heads,
            window_size=(side + 1) // 2,
            qkv_bias="swinViT.layers1.0.blocks.0.attn.qkv.bias" in sd,
            mlp_ratio=sd["swinViT.layers1.0.blocks.0.mlp.linear1.weight"].shape[0] / fs,
            patch_norm="swinViT.patch_embed.norm.weight" in sd,
            use_v2="swinViT.layers1c.0.layer.conv1.conv.weight" in sd,
            norm_name=_norm_from(sd, "encoder1.layer.norm1"),
        )
        kwargs.update(overrides)
        return "swinunetr", kwargs
    if any(k.startswith("vit.patch_embedding.") for k in sd):
        e1 = sd["encoder1.layer.conv1.conv.weight"]
        dims = e1.ndim - 2
        pos = sd["vit.patch_embedding.position_embeddings"]
        hidden = pos.shape[-1]
        kwargs: dict[str, Any] = dict(
            dims=dims,
            in_channels=e1.shape[1],
            num_classes=sd["out.conv.conv.weight"].shape[0],
            feature_size=e1.shape[0],
            hidden_size=hidden,
            mlp_dim=sd["vit.blocks.0.mlp.linear1.weight"].shape[0],
            proj_type="perceptron"
            if "vit.patch_embedding.patch_embeddings.1.weight" in sd
            else "conv",
            conv_block=any(k.startswith("encoder2.blocks.0.0.") for k in sd),
            res_block="decoder2.conv_block.conv3.conv.weight" in sd,
            qkv_bias="vit.blocks.0.attn.qkv.bias" in sd,
            norm_name=_norm_from(sd, "encoder1.layer.norm1"),
        )
        kwargs.update(overrides)
        if "img_size" not in kwargs:
            n = pos.shape[1]
            side = round(n ** (1.0 / dims))
            if side**dims != n:
                raise ConfigError(
                    f"infer_monai_config: {n} position embeddings are not a cubic/square patch "
                    "grid; pass img_size=."
                )
            kwargs["img_size"] = side * 16
        if "num_heads" not in kwargs:
            if hidden != 768:
                raise ConfigError(
                    "infer_monai_config: UNETR's num_heads cannot be read from the weights; pass "
                    f"num_heads= (hidden_size is {hidden})."
                )
            kwargs["num_heads"] = 12
        return "unetr", kwargs
    raise ConfigError(
        "infer_monai_config: the weights are neither a MONAI SwinUNETR (swinViT.*) nor a UNETR "
        f"(vit.*); first keys: {_fmt(list(sd)[:10])}."
    )


def load_monai(state_dict, **overrides) -> tuple[nn.Module, dict]:
    """`(model, params)` from MONAI weights, the architecture inferred (`infer_monai_config`)."""
    from jaxseg.models import build_model

    name, kwargs = infer_monai_config(state_dict, **overrides)
    model = build_model(name, **kwargs)
    return model, from_monai(state_dict, model)


def param_count(model: nn.Module, params=None) -> int:
    """Number of scalars in `params` (or in `model`'s params, by shape only)."""
    if params is None:
        return sum(math.prod(s) for s in _target_shapes(model).values())
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params))
