"""Structured pruning of LightSeg: attention heads and MLP hidden channels are REMOVED.

The pruned model is a smaller architecture (`block_heads`, `block_mlp_hidden` in its config,
one entry per block) whose parameters are the kept slices of the trained ones:

  qkv kernel `[C, 3 H D]` (layout (q|k|v, head, d))  -> columns of the kept heads in q, k, v
  qkv bias   `[3 H D]`                               -> the same entries
  proj kernel `[H D, C]`                             -> rows of the kept heads (bias as is)
  relative_position_bias_table `[T, H]`              -> columns of the kept heads
  fc1 kernel `[C, M]`, bias `[M]`                    -> columns / entries of the kept channels
  fc2 kernel `[M, C]`                                -> rows of the kept channels (bias as is)

The residual width C, the norms, the cross-window exchange and the decoder are untouched:
only the inner widths shrink, so no coupled residual or skip axis changes.

Importance (first-order Taylor, on training batches): a head mask xi_h scaling head h's
output is the same as scaling head h's rows of the proj kernel, so
dL/dxi_h = sum over those rows of W * dL/dW (Michel et al. 2019, "Are Sixteen Heads Really
Better than One?"). Likewise an MLP channel's score is the sum of fc2's row j times its
gradient ("taylor"), or the L1 norm of fc1's column j ("l1", Li et al. 2017). Scores are
|per-batch value| averaged over batches. Each block drops round(ratio * count) of its lowest.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import jax
import numpy as np

from jaxseg import losses
from jaxseg.compress.common import check_new_workdir, training_patches, write_workdir
from jaxseg.errors import ConfigError
from jaxseg.models.lightseg import LightSeg
from jaxseg.workdir import is_quantized, load_trained

CHANNEL_SCORES = ("taylor", "l1")


@dataclasses.dataclass(frozen=True)
class Block:
    """One prunable Transformer block: its param name and global block indices (several
    when a stage shares one block), heads, head width and MLP hidden channels."""

    name: str
    block_ids: tuple[int, ...]
    heads: int
    head_dim: int
    mlp_hidden: int


def prunable_blocks(model: LightSeg) -> list[Block]:
    """The blocks of `model`, stage 0 first."""
    if not isinstance(model, LightSeg):
        raise ConfigError(
            f"structured pruning supports the lightseg models; got {type(model).__name__}"
        )
    if model.rank is not None:
        raise ConfigError(
            f"{model.model_name}: pruning a low-rank model (rank={model.rank}) is not supported; "
            "its factorised projections change layout as widths shrink"
        )
    out, block_id = [], 0
    for i, (dim, depth, heads) in enumerate(zip(model.embed_dims, model.depths, model.num_heads)):
        ids = tuple(range(block_id, block_id + depth))
        names = (
            [f"stage{i}_block"]
            if model.share_params
            else [f"stage{i}_block{j}" for j in range(depth)]
        )
        groups = [ids] if model.share_params else [(b,) for b in ids]
        for name, group in zip(names, groups):
            b = group[0]
            h = heads if model.block_heads is None else int(model.block_heads[b])
            m = (
                int(dim * model.mlp_ratio)
                if model.block_mlp_hidden is None
                else int(model.block_mlp_hidden[b])
            )
            out.append(Block(name, group, h, dim // heads, m))
        block_id += depth
    return out


def _grad_fn(model, loss_config):
    def loss(params, image, label):
        logits = model.apply({"params": params}, image, train=False)
        value, _ = losses.dice_ce_loss(
            logits,
            label,
            dice_weight=loss_config.get("dice_weight", 1.0),
            ce_weight=loss_config.get("ce_weight", 1.0),
        )
        return value

    return jax.jit(jax.grad(loss))


def taylor_scores(
    model: LightSeg,
    params: Any,
    images: np.ndarray,
    labels: np.ndarray,
    *,
    batch_size: int = 4,
    loss_config: Any = None,
) -> dict[str, dict[str, np.ndarray]]:
    """`{block: {"heads": [H], "channels": [M]}}`: mean over batches of |dL/dxi| for a head
    mask and an MLP-channel mask at 1 (images `[N, *S, C]`, labels `[N, *S]`)."""
    blocks = prunable_blocks(model)
    grad = _grad_fn(model, loss_config or {})
    sums = {b.name: {"heads": 0.0, "channels": 0.0} for b in blocks}
    n = 0
    for start in range(0, len(images), batch_size):
        g = grad(params, images[start : start + batch_size], labels[start : start + batch_size])
        for b in blocks:
            w_proj = np.asarray(params[b.name]["proj"]["kernel"], np.float64)
            g_proj = np.asarray(g[b.name]["proj"]["kernel"], np.float64)
            per_head = (w_proj * g_proj).reshape(b.heads, b.head_dim, -1).sum(axis=(1, 2))
            w2 = np.asarray(params[b.name]["fc2"]["kernel"], np.float64)
            g2 = np.asarray(g[b.name]["fc2"]["kernel"], np.float64)
            sums[b.name]["heads"] = sums[b.name]["heads"] + np.abs(per_head)
            sums[b.name]["channels"] = sums[b.name]["channels"] + np.abs((w2 * g2).sum(axis=1))
        n += 1
    return {k: {kk: vv / n for kk, vv in v.items()} for k, v in sums.items()}


def head_importance(model, params, images, labels, **kw) -> dict[str, np.ndarray]:
    """`{block: [H]}`: each head's Taylor importance |dL/dxi_h| (Michel et al. 2019)."""
    return {k: v["heads"] for k, v in taylor_scores(model, params, images, labels, **kw).items()}


def mlp_channel_importance(
    model, params, images=None, labels=None, *, score: str = "taylor", **kw
) -> dict[str, np.ndarray]:
    """`{block: [M]}`: each MLP hidden channel's importance, "taylor" (needs images and
    labels) or "l1" (the L1 norm of fc1's column, from the weights alone)."""
    if score not in CHANNEL_SCORES:
        raise ConfigError(f"channel score {score!r}; use one of {CHANNEL_SCORES}")
    if score == "l1":
        return {
            b.name: np.abs(np.asarray(params[b.name]["fc1"]["kernel"], np.float64)).sum(axis=0)
            for b in prunable_blocks(model)
        }
    return {k: v["channels"] for k, v in taylor_scores(model, params, images, labels, **kw).items()}


def _check_ratio(name: str, ratio: float) -> float:
    if not 0.0 <= float(ratio) < 1.0:
        raise ConfigError(f"--{name} {ratio}: a pruning ratio must be in [0, 1)")
    return float(ratio)


def pruning_plan(
    model: LightSeg,
    head_scores: dict[str, np.ndarray],
    channel_scores: dict[str, np.ndarray],
    *,
    heads: float,
    channels: float,
) -> dict[str, dict[str, np.ndarray]]:
    """`{block: {"heads": kept head indices, "channels": kept channel indices}}` (sorted):
    each block drops round(ratio * count) of its lowest-scoring heads and channels.
    A ratio outside [0, 1), or one that leaves a block no head or channel, is a ConfigError
    naming the block."""
    heads, channels = _check_ratio("heads", heads), _check_ratio("channels", channels)
    plan = {}
    for b in prunable_blocks(model):
        kept = {}
        for what, ratio, count, scores in (
            ("heads", heads, b.heads, head_scores[b.name]),
            ("channels", channels, b.mlp_hidden, channel_scores[b.name]),
        ):
            drop = int(round(ratio * count))
            if drop >= count:
                raise ConfigError(
                    f"{b.name}: pruning {ratio:g} of its {count} {what} would leave none; "
                    f"lower --{what}"
                )
            if len(scores) != count:
                raise ConfigError(f"{b.name}: {len(scores)} {what} scores for {count} {what}")
            # Stable order: ties keep the lower index.
            order = np.argsort(-np.asarray(scores, np.float64), kind="stable")
            kept[what] = np.sort(order[: count - drop])
        plan[b.name] = kept
    return plan


def _slice_block(p: dict, block: Block, keep_heads: np.ndarray, keep_channels: np.ndarray):
    hd, inner = block.head_dim, block.heads * block.head_dim
    within = (keep_heads[:, None] * hd + np.arange(hd)[None, :]).reshape(-1)  # head-major
    qkv_cols = np.concatenate([g * inner + within for g in range(3)])
    out = dict(p)
    out["qkv"] = {"kernel": p["qkv"]["kernel"][:, qkv_cols]}
    if "bias" in p["qkv"]:
        out["qkv"]["bias"] = p["qkv"]["bias"][qkv_cols]
    out["proj"] = {**p["proj"], "kernel": p["proj"]["kernel"][within, :]}
    out["relative_position_bias_table"] = p["relative_position_bias_table"][:, keep_heads]
    out["fc1"] = {"kernel": p["fc1"]["kernel"][:, keep_channels]}
    if "bias" in p["fc1"]:
        out["fc1"]["bias"] = p["fc1"]["bias"][keep_channels]
    out["fc2"] = {**p["fc2"], "kernel": p["fc2"]["kernel"][keep_channels, :]}
    return out


def prune_params(
    model: LightSeg, params: Any, plan: dict[str, dict[str, np.ndarray]]
) -> tuple[dict[str, tuple[int, ...]], Any]:
    """(model arguments `{"block_heads", "block_mlp_hidden"}`, the sliced parameter tree)."""
    blocks = prunable_blocks(model)
    total = sum(model.depths)
    block_heads, block_mlp = [0] * total, [0] * total
    new = dict(params)
    for b in blocks:
        kh = np.asarray(plan[b.name]["heads"], np.int64)
        kc = np.asarray(plan[b.name]["channels"], np.int64)
        new[b.name] = _slice_block(params[b.name], b, kh, kc)
        for i in b.block_ids:
            block_heads[i], block_mlp[i] = len(kh), len(kc)
    return {"block_heads": tuple(block_heads), "block_mlp_hidden": tuple(block_mlp)}, new


def prune_workdir(
    workdir: str | os.PathLike,
    out: str | os.PathLike,
    *,
    heads: float,
    channels: float,
    batches: int = 8,
    batch_size: int = 4,
    channel_score: str = "taylor",
    seed: int = 0,
    which: str = "auto",
) -> dict:
    """Prunes the run in `workdir` into the new workdir `out` (no fine-tune); returns a
    summary: params before and after, and the kept heads and channels per block."""
    _check_ratio("heads", heads), _check_ratio("channels", channels)
    check_new_workdir(out, workdir)
    run = load_trained(workdir, which)
    if is_quantized(run.config):
        raise ConfigError(f"{workdir} is quantised; prune the float run, then quantise")
    model = run.model
    # The ratios against the architecture first, before the (slow) scores.
    zeros = {b.name: np.zeros(b.heads) for b in prunable_blocks(model)}
    zero_channels = {b.name: np.zeros(b.mlp_hidden) for b in prunable_blocks(model)}
    pruning_plan(model, zeros, zero_channels, heads=heads, channels=channels)
    need_data = heads > 0 or channel_score == "taylor"
    images = labels = None
    if need_data:
        images, labels = training_patches(run, batches * batch_size, seed=seed)
    scores = (
        taylor_scores(
            model, run.params, images, labels, batch_size=batch_size, loss_config=run.config.loss
        )
        if need_data
        else None
    )
    head_scores = {k: v["heads"] for k, v in scores.items()} if scores else zeros
    channel_scores = (
        mlp_channel_importance(model, run.params, score="l1")
        if channel_score == "l1"
        else {k: v["channels"] for k, v in scores.items()}
    )
    plan = pruning_plan(model, head_scores, channel_scores, heads=heads, channels=channels)
    args, params = prune_params(model, run.params, plan)
    config = run.config.copy_and_resolve_references()
    with config.unlocked():
        for k, v in args.items():
            config.model.args[k] = list(v)
        config.compress = {
            "pruned_from": str(run.workdir),
            "heads": heads,
            "channels": channels,
            "channel_score": channel_score,
        }
    write_workdir(workdir, out, config, params, run.step)
    count = lambda t: int(sum(np.size(x) for x in jax.tree_util.tree_leaves(t)))  # noqa: E731
    return {
        "params_before": count(run.params),
        "params_after": count(params),
        "kept": {k: {kk: vv.tolist() for kk, vv in v.items()} for k, v in plan.items()},
    }


__all__ = [
    "Block",
    "head_importance",
    "mlp_channel_importance",
    "prunable_blocks",
    "prune_params",
    "prune_workdir",
    "pruning_plan",
    "taylor_scores",
]
