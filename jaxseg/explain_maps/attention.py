"""Window-attention maps of lightseg (see the package docstring): the attention of one
query token over its window, recomputed from a block's captured projections."""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxseg.errors import JaxsegError
from jaxseg.explain_maps.gradcam import LayerInfo, module_path, upsample_map
from jaxseg.models.layers import (
    halo_partition_heads,
    relative_position_index,
    window_partition_heads,
)
from jaxseg.models.lightseg import LightBlock


def attention_blocks(model: nn.Module, variables, x, **apply_kwargs) -> list[LayerInfo]:
    """The window-attention blocks (`LightBlock`) of `model`, in call order, with their
    (window-padded) input shapes; empty for a model without window attention."""
    found: dict[str, tuple[int, ...]] = {}

    def interceptor(next_fun, args, kwargs, context):
        if context.method_name == "__call__" and isinstance(context.module, LightBlock):
            name = module_path(context.module)
            found.pop(name, None)
            found[name] = tuple(int(v) for v in args[0].shape)
        return next_fun(*args, **kwargs)

    with nn.intercept_methods(interceptor):
        jax.eval_shape(lambda v, x: model.apply(v, x, **apply_kwargs), variables, x)
    return [LayerInfo(n, s) for n, s in found.items()]


@dataclasses.dataclass(frozen=True)
class QueryAttention:
    """One query token's attention in a block: `weights [H, M]` over its M keys (softmax
    per head), the keys' positions `[M, d]` on the block's (window-padded) map in the
    map's own order (the shift undone), `valid [M]` (keys on the map) and the values
    `[H, M, D]`, so that `sum_m weights[h, m] * values[h, m]` is the block's attention
    output for that token and head."""

    weights: np.ndarray
    positions: np.ndarray
    valid: np.ndarray
    values: np.ndarray
    map_shape: tuple[int, ...]


@functools.lru_cache(maxsize=8)
def _block_capture_fn(model: nn.Module, block: str, apply_items: tuple) -> tuple[Callable, dict]:
    """A jitted `(variables, x) -> {qkv, mask, table}` of `block`'s last call, and the
    dict its trace fills with the block module and its shift (compiled once per model,
    block and input shape)."""
    static: dict = {}

    def run(variables, x):
        seen: dict = {}

        def interceptor(next_fun, args, kwargs, context):
            name = module_path(context.module)
            out = next_fun(*args, **kwargs)
            if context.method_name != "__call__":
                return out
            if name == block:
                static["module"] = context.module
                static["shift"] = tuple(int(s) for s in args[2])
                seen["mask"] = None if args[1] is None else jnp.asarray(args[1])
                seen["table"] = context.module.variables["params"]["relative_position_bias_table"]
            elif name == f"{block}/qkv":
                seen["qkv"] = out
            return out

        with nn.intercept_methods(interceptor):
            model.apply(variables, x, **dict(apply_items))
        return seen

    return jax.jit(run), static


def _capture_block(model, variables, x, block: str, apply_kwargs) -> dict:
    """Runs the model once; returns the last call of `block`'s qkv projection, mask,
    shift, relative position bias table and the block module."""
    run, static = _block_capture_fn(model, block, tuple(sorted(apply_kwargs.items())))
    seen = run(variables, x)
    return {**{k: None if v is None else np.asarray(v) for k, v in seen.items()}, **static}


def query_attention(
    model: nn.Module, variables, x, block: str, query: Sequence[int], **apply_kwargs
) -> QueryAttention:
    """The attention of the token at `query` (voxel indices on `x`'s grid, batch item 0)
    in lightseg block `block`, recomputed as the block computes it."""
    cap = _capture_block(model, variables, x, block, apply_kwargs)
    m: LightBlock = cap["module"]
    if m.topk is not None or m.topk_windows is not None:
        raise JaxsegError(
            f"block {block}: attention maps need dense window attention; this model uses "
            f"top-k (topk={m.topk}) or routed (topk_windows={m.topk_windows}) attention"
        )
    qkv, shift = cap["qkv"][:1], cap["shift"]
    fp = qkv.shape[1:-1]
    d = len(fp)
    window = tuple(m.window)
    heads = m.num_heads
    head_dim = m.dim // heads if m.head_dim is None else m.head_dim
    inner = heads * head_dim
    halo = (0,) * d if m.halo is None else tuple(m.halo)
    # The token under the query voxel, then its place after the block's cyclic shift.
    stride = [2 ** max(0, round(math.log2(n / f))) for n, f in zip(x.shape[1:-1], fp)]
    token = np.array([min(q // s, f - 1) for q, s, f in zip(query, stride, fp)])
    rolled = (token - np.array(shift)) % np.array(fp)
    grid = tuple(f // w for f, w in zip(fp, window))
    w_index = int(np.ravel_multi_index(tuple(rolled // window), grid))
    n_index = int(np.ravel_multi_index(tuple(rolled % window), window))
    if any(halo):
        q = window_partition_heads(jnp.asarray(qkv[..., :inner]), window, 1, heads)[0]
        k, v = halo_partition_heads(jnp.asarray(qkv[..., inner:]), window, halo, 2, heads)
        key_extent = tuple(w + 2 * h for w, h in zip(window, halo))
    else:
        q, k, v = window_partition_heads(jnp.asarray(qkv), window, 3, heads)
        key_extent = window
    q = np.asarray(q[w_index, :, n_index]) * head_dim**-0.5  # [H, D]
    k, v = np.asarray(k[w_index]), np.asarray(v[w_index])  # [H, M, D]
    tw = window if m.table_window is None else tuple(m.table_window)
    th = halo if m.table_halo is None else tuple(m.table_halo)
    index = relative_position_index(window, tuple(t + e for t, e in zip(tw, th)), halo)
    bias = cap["table"][index[n_index]].T  # [H, M]
    logits = np.einsum("hd,hmd->hm", q, k) + bias
    mask = cap["mask"]
    if mask is not None:  # [nW, N, M] (shift regions, padding) or a key mask [nW, M]
        row = mask[w_index % mask.shape[0]]
        logits = logits + (row[n_index] if row.ndim == 2 else row)[None]
    logits = logits - logits.max(axis=-1, keepdims=True)
    weights = np.exp(logits)
    weights /= weights.sum(axis=-1, keepdims=True)
    offsets = np.stack(np.unravel_index(np.arange(math.prod(key_extent)), key_extent), -1)
    keys = (rolled // window) * window - np.array(halo) + offsets
    valid = np.all((keys >= 0) & (keys < np.array(fp)), axis=-1)
    positions = (keys + np.array(shift)) % np.array(fp)  # undo the cyclic shift
    return QueryAttention(weights, positions, valid, v, tuple(fp))


def attention_map(
    model: nn.Module, variables, x, block: str, query: Sequence[int], **apply_kwargs
) -> np.ndarray:
    """`[*X]` float32: the head-averaged attention of the `query` token over its keys in
    `block`, on the block's grid, upsampled linearly to `x`'s grid (not normalised)."""
    att = query_attention(model, variables, x, block, query, **apply_kwargs)
    grid = np.zeros(att.map_shape, np.float32)
    keep = att.valid
    np.add.at(grid, tuple(att.positions[keep].T), att.weights.mean(axis=0)[keep])
    return np.asarray(upsample_map(grid[None], x.shape[1:-1])[0])
