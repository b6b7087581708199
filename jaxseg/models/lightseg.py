"""LightSeg: a lightweight window-attention Transformer for 2D/3D segmentation.

Layout (strides relative to the input):

  stem     dense 3^d conv -> stem_dims[0]                                 (stride 1, skip)
           2x down (space-to-depth + 1x1) -> stem_dims[1], DS block       (stride 2, skip)
           2x down -> embed_dims[0], DS block                             (stride 4)
  stages   stage i at stride 4 * 2^i: [patch merging,] depths[i] window-attention blocks
           with window window_sizes[i] (multi-scale windows; shifted windows on odd blocks,
           or halo keys, or routed key windows), a cross-window exchange after chosen blocks,
           LayerNorm (skips)
  decoder  fusion modules, deepest first: upsample the deeper map (2x transposed conv as
           1x1 + depth-to-space), concat with the skip, 1x1 projection, dense 3^d conv
           refinement; down to stride 1
  head     1x1 conv -> num_classes

DS block = depthwise kxk (`jaxseg.ops.depthwise_conv`) + pointwise 1x1. Only the stem
uses depthwise convs; the decoder hot path is 1x1 and dense convs.

The switches (constructor fields, so that configs can run ablations):
  shift_windows        Swin shifted windows on every second block (overlapping windows);
                       None (default) = on unless halo or topk_windows is set.
  halo                 HaloNet keys (overlapping windows): each window's queries attend to the
                       window grown by `halo` per side, (w + 2h)^d keys; keys outside the map
                       (the halo's zero padding, the padding to a multiple of the window) are
                       masked; the relative position bias table has (2(w + h) - 1)^d rows.
                       0 = off. Not with shift_windows=True or topk_windows.
  window_sizes         one window size per stage (multi-scale windows).
  cross_window_layers  global block indices followed by a `WindowExchange`: every window's
                       (masked) mean-pooled token and `global_tokens` learnable tokens attend
                       to each other over the whole image; each window's result is added back
                       to all its tokens. None = after the last block of every stage; () = off.
  topk                 dynamic sparse attention: each query keeps only its top-k keys by
                       logit (`jaxseg.ops.window_attention_topk`); None = dense. Combines with
                       halo and topk_windows (top-k among their keys).
  topk_windows         dynamic sparse attention by window (BiFormer bi-level routing,
                       `jaxseg.ops.window_attention_routed`): window affinities from the
                       windows' mean-pooled q and k; each window attends to all tokens of its
                       own window plus its topk_windows - 1 highest-affinity windows (selection
                       without gradient; the relative position bias only on the own window).
                       None = off; >= the number of windows = global attention. Not with
                       shift_windows=True or halo.
  share_params         the blocks of a stage are ONE module called depths[i] times (shift
                       alternation and drop-path rates still per call): one block's params.
  rank                 low-rank factorised projections (qkv, proj, MLP and exchange):
                       Dense(d_in -> rank, no bias) -> Dense(rank -> d_out); None = full rank.

Any spatial shape: the input is zero-padded at the end to a multiple of the total stride
(4 * 2^(stages-1)) and the logits are cropped back. Inside a stage, a window larger than
the feature map is clamped to it (attention over the whole map, no shift); otherwise the
map is padded at the end to a multiple of the window, and padded keys are masked out of
attention (combined with the Swin shift mask) and out of the exchange's pooling, then
cropped back after the stage. A halo or padding key outside the map is masked the same
way; the halo is dropped on an axis the (clamped) window covers whole.
"""

from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from jaxseg import ops
from jaxseg.errors import ConfigError
from jaxseg.models.layers import (
    ConvNormAct,
    DepthwiseSeparable,
    check_input,
    check_norm,
    crop_to,
    depth_to_space,
    drop_path,
    halo_partition_heads,
    pad_to_multiple,
    relative_position_index,
    space_to_depth,
    window_attention_mask,
    window_key_mask,
    window_partition_heads,
    window_reverse_heads,
)

Dtype = Any


def default_window_sizes(dims: int, num_stages: int) -> tuple[int, ...]:
    """2D: 8 for the first two stages, 4 deeper; 3D: 4, then 2."""
    big, small = (8, 4) if dims == 2 else (4, 2)
    return tuple(big if i < 2 else small for i in range(num_stages))


def low_rank_params(d_in: int, d_out: int, rank: int | None, bias: bool = True) -> int:
    """Parameter count of `LowRankDense(d_out, rank)` on `d_in` inputs."""
    b = d_out if bias else 0
    if rank is None or rank >= min(d_in, d_out):
        return d_in * d_out + b
    return d_in * rank + rank * d_out + b


class LowRankDense(nn.Module):
    """`[..., d_in] -> [..., features]`: a Dense, or with `rank` < min(d_in, features) the
    factorisation Dense(d_in -> rank, no bias) -> Dense(rank -> features).

    A rank >= min(d_in, features) factorisation is neither cheaper nor more expressive than
    the full matrix, so it falls back to one (params: kernel, bias; else kernel_down,
    kernel_up, bias). Params float32, compute in `dtype`.
    """

    features: int
    rank: int | None = None
    use_bias: bool = True
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        d_in = x.shape[-1]
        init = nn.initializers.lecun_normal()
        x = x.astype(self.dtype)
        if self.rank is None or self.rank >= min(d_in, self.features):
            y = x @ self.param("kernel", init, (d_in, self.features)).astype(self.dtype)
        else:
            # Both factors fan-in scaled: the product has the variance of a full lecun init.
            y = x @ self.param("kernel_down", init, (d_in, self.rank)).astype(self.dtype)
            y = y @ self.param("kernel_up", init, (self.rank, self.features)).astype(self.dtype)
        if self.use_bias:
            y = y + self.param("bias", nn.initializers.zeros, (self.features,)).astype(self.dtype)
        return y


class LightBlock(nn.Module):
    """Pre-norm window-attention block on `[B, *S, C]`, S a multiple of `window`.

    x + DropPath(W-MSA(LN(x))) then x + DropPath(MLP(LN(x))). The shift, mask and drop-path
    rate are CALL arguments, so one instance can serve every block of a stage
    (`share_params`) while still alternating plain and shifted windows. `shift` > 0 on an
    axis rolls the map by -shift before attention and back after.

    Keys per window (N = prod(window) queries):
      * plain: the window's own N tokens; `mask` `[nW, N, N]` (numpy, from
        `window_attention_mask`) handles shift regions and padded keys;
      * `halo` (any > 0): the window grown by halo[i] on each side, M = prod(w + 2h) keys
        (`halo_partition_heads`); `mask` `[nW, M]` (from `window_key_mask`) masks keys
        outside the map; the bias covers the query-to-halo-key offsets;
      * `topk_windows`: the own window plus the topk_windows - 1 best-routed windows of the
        image (`ops.window_attention_routed`); `mask` `[nW, N]` (`window_key_mask`) masks
        padded keys; the bias applies to the own window only.
    `topk` keeps each query's top-k keys among those; `rank` factorises qkv, proj, fc1 and
    fc2. `table_window` (>= window per axis) and `table_halo` (>= halo) size the relative
    position bias table, `prod(2 (t + h) - 1)` rows.
    """

    dim: int
    num_heads: int
    window: tuple[int, ...]
    mlp_ratio: float = 4.0
    attention_impl: str = "auto"
    dtype: Dtype = jnp.float32
    table_window: tuple[int, ...] | None = None
    rank: int | None = None
    topk: int | None = None
    halo: tuple[int, ...] | None = None
    table_halo: tuple[int, ...] | None = None
    topk_windows: int | None = None
    # Per-head width; None -> dim // num_heads. Set by structured pruning, which keeps the
    # head width and drops heads, so the attention width num_heads * head_dim may be < dim.
    head_dim: int | None = None
    mlp_hidden: int | None = None  # MLP hidden channels; None -> int(dim * mlp_ratio)

    @nn.compact
    def __call__(
        self,
        x,
        mask: np.ndarray | None,
        shift: tuple[int, ...],
        drop_rate: float = 0.0,
        train: bool = False,
    ):
        d = x.ndim - 2
        shape = x.shape[1:-1]
        head_dim = self.dim // self.num_heads if self.head_dim is None else self.head_dim
        inner = self.num_heads * head_dim  # the attention width (= dim unless heads were pruned)
        axes = tuple(range(1, d + 1))
        dense = dict(rank=self.rank, dtype=self.dtype)
        no_halo = (0,) * d
        halo = no_halo if self.halo is None else tuple(self.halo)
        h = nn.LayerNorm(epsilon=1e-5, dtype=self.dtype, name="norm1")(x)
        if any(shift):
            h = jnp.roll(h, [-s for s in shift], axis=axes)
        qkv = LowRankDense(3 * inner, name="qkv", **dense)(h)
        if any(halo):
            q = window_partition_heads(qkv[..., :inner], self.window, 1, self.num_heads)[0]
            k, v = halo_partition_heads(qkv[..., inner:], self.window, halo, 2, self.num_heads)
        else:
            q, k, v = window_partition_heads(qkv, self.window, 3, self.num_heads)
        q = q * jnp.asarray(head_dim**-0.5, q.dtype)
        n, m_keys = q.shape[2], k.shape[2]
        tw = self.window if self.table_window is None else self.table_window
        th = halo if self.table_halo is None else self.table_halo
        extent = tuple(t + e for t, e in zip(tw, th))
        table = self.param(
            "relative_position_bias_table",
            nn.initializers.truncated_normal(0.02),
            (math.prod(2 * t - 1 for t in extent), self.num_heads),
        )
        index = relative_position_index(self.window, extent, halo).reshape(-1)
        bias = jnp.take(table, index, axis=0).reshape(n, m_keys, self.num_heads).transpose(2, 0, 1)
        m = None if mask is None else jnp.asarray(mask)
        if self.topk_windows is not None:
            nw = math.prod(s // w for s, w in zip(shape, self.window))
            o = ops.window_attention_routed(
                q,
                k,
                v,
                bias,
                m,
                windows_per_image=nw,
                topk_windows=self.topk_windows,
                topk=self.topk,
                impl=self.attention_impl,
            )
        else:
            if m is not None and m.ndim == 2:  # a key mask: the same for every query of a window
                m = jnp.broadcast_to(m[:, None, :], (m.shape[0], n, m.shape[1]))
            if self.topk is None:
                o = ops.window_attention(q, k, v, bias, m, impl=self.attention_impl)
            else:
                o = ops.window_attention_topk(
                    q, k, v, bias, m, topk=self.topk, impl=self.attention_impl
                )
        o = window_reverse_heads(o, self.window, shape)
        o = LowRankDense(self.dim, name="proj", **dense)(o)
        if any(shift):
            o = jnp.roll(o, list(shift), axis=axes)
        x = x + drop_path(self, o, drop_rate, train)
        y = nn.LayerNorm(epsilon=1e-5, dtype=self.dtype, name="norm2")(x)
        hidden = int(self.dim * self.mlp_ratio) if self.mlp_hidden is None else self.mlp_hidden
        y = LowRankDense(hidden, name="fc1", **dense)(y)
        y = LowRankDense(self.dim, name="fc2", **dense)(nn.gelu(y))
        return x + drop_path(self, y, drop_rate, train)


def window_pool_weights(padded_shape, valid_shape, window) -> np.ndarray:
    """Mean-pooling weights over each window's valid (non-padding) tokens, laid out as the
    window grid `[g_1, w_1, ..., g_d, w_d]` (g = padded / window); each window sums to 1."""
    d = len(padded_shape)
    valid = np.ones(padded_shape, np.float32)
    for ax in range(d):
        v = (np.arange(padded_shape[ax]) < valid_shape[ax]).astype(np.float32)
        valid = valid * v.reshape([-1 if a == ax else 1 for a in range(d)])
    grid = valid.reshape([v for n, w in zip(padded_shape, window) for v in (n // w, w)])
    count = grid.sum(axis=tuple(range(1, 2 * d, 2)), keepdims=True)
    return grid / np.maximum(count, 1.0)


class WindowExchange(nn.Module):
    """Cross-window information exchange on `[B, *S, C]` (S a multiple of `window`).

    Each window is mean-pooled over its valid tokens (`pool_weights`, from
    `window_pool_weights`) after a LayerNorm, giving nW tokens per image; with
    `global_tokens` G learnable tokens prepended, the G + nW tokens attend to each other
    (multi-head, one "window" per image through `jaxseg.ops.window_attention`). Each window's
    output token is projected and added to every token of that window (a residual
    broadcast). Cost O(B (G + nW)^2 C): negligible next to the window attention.
    """

    dim: int
    num_heads: int
    window: tuple[int, ...]
    global_tokens: int = 1
    rank: int | None = None
    attention_impl: str = "auto"
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x, pool_weights: np.ndarray, drop_rate: float = 0.0, *, train: bool = False):
        b, *s = x.shape[:-1]
        d, c = len(s), self.dim
        grid_shape = [v for n, w in zip(s, self.window) for v in (n // w, w)]
        win_axes = tuple(range(2, 2 * d + 1, 2))  # the within-window axes of the grid layout
        h = nn.LayerNorm(epsilon=1e-5, dtype=self.dtype, name="norm")(x).reshape(b, *grid_shape, c)
        # Weighted sum over the within-window axes: padded tokens get weight 0.
        pooled = jnp.sum(h * jnp.asarray(pool_weights, h.dtype)[None, ..., None], axis=win_axes)
        nw = math.prod(pooled.shape[1:-1])
        tokens = pooled.reshape(b, nw, c)
        g = self.global_tokens
        if g > 0:
            glob = self.param("global_tokens", nn.initializers.truncated_normal(0.02), (g, c))
            tokens = jnp.concatenate(
                [jnp.broadcast_to(glob.astype(tokens.dtype), (b, g, c)), tokens], axis=1
            )
        hd = c // self.num_heads
        qkv = LowRankDense(3 * c, rank=self.rank, dtype=self.dtype, name="qkv")(tokens)
        q, k, v = qkv.reshape(b, g + nw, 3, self.num_heads, hd).transpose(2, 0, 3, 1, 4)
        o = ops.window_attention(q * jnp.asarray(hd**-0.5, q.dtype), k, v, impl=self.attention_impl)
        o = o.transpose(0, 2, 1, 3).reshape(b, g + nw, c)[:, g:]
        o = LowRankDense(c, rank=self.rank, dtype=self.dtype, name="proj")(o)
        o = drop_path(self, o, drop_rate, train)
        # Broadcast each window's token over its window: insert size-1 within-window axes.
        o = o.reshape(b, *[v for n, w in zip(s, self.window) for v in (n // w, 1)], c)
        return (x.reshape(b, *grid_shape, c) + o).reshape(x.shape)


class Downsample(nn.Module):
    """2x downsampling: space-to-depth, then a 1x1 projection (= a 2^d conv with stride 2).

    No norm here: what follows is pre-normed, and a LayerNorm's parameter gradients at high
    resolution cost more than the projection on XLA:CPU."""

    features: int
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        return nn.Dense(self.features, use_bias=False, dtype=self.dtype)(space_to_depth(x, 2))


class FusionBlock(nn.Module):
    """Upsample `deep` 2x (1x1 to 2^d * C, depth-to-space), concat with `skip`, 1x1 project
    -> norm -> act, then a dense 3^d conv -> norm -> act (kernel `refine_kernel`)."""

    features: int
    refine_kernel: int = 3
    norm: str = "instance"
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, deep, skip):
        d = deep.ndim - 2
        up = nn.Dense(self.features * 2**d, dtype=self.dtype, name="up")(deep)
        up = depth_to_space(up, 2)
        x = jnp.concatenate([up, skip.astype(up.dtype)], axis=-1)
        x = ConvNormAct(
            self.features, 1, norm=self.norm, act="gelu", dtype=self.dtype, name="fuse"
        )(x)
        if self.refine_kernel > 0:
            x = ConvNormAct(
                self.features,
                self.refine_kernel,
                norm=self.norm,
                act="gelu",
                dtype=self.dtype,
                name="refine",
            )(x)
        return x


class LightSeg(nn.Module):
    """Lightweight window-attention Transformer segmenter (see the module docstring).

    Input `[B, *S, in_channels]` -> logits `[B, *S, num_classes]` float32.
    """

    dims: int
    in_channels: int
    num_classes: int
    embed_dims: tuple[int, ...] = (32, 64, 128)
    depths: tuple[int, ...] = (2, 2, 2)
    num_heads: tuple[int, ...] = (2, 4, 8)
    # One window size per stage (an int: the same on every axis, or a tuple per axis);
    # None -> default_window_sizes(dims, stages).
    window_sizes: tuple | None = None
    stem_dims: tuple[int, int] = (16, 24)
    mlp_ratio: float = 4.0
    drop_path: float = 0.0  # max stochastic-depth rate, linear over blocks
    # Swin shifted windows on every second block of a stage. None: on, unless halo or
    # topk_windows is set (they do not combine with shifted windows; True with them is an error).
    shift_windows: bool | None = None
    # Halo keys (HaloNet): each window attends to keys of the window grown by `halo` on each
    # side (an int, or one per axis; the same for every stage). 0 = off.
    halo: int | tuple[int, ...] = 0
    # Global block indices (0 .. sum(depths) - 1) each followed by a WindowExchange;
    # None -> the last block of every stage; () -> no cross-window exchange.
    cross_window_layers: tuple[int, ...] | None = None
    global_tokens: int = 1  # learnable tokens in each WindowExchange (0: pooled windows only)
    topk: int | None = None  # keys kept per query (dynamic sparse attention); None = dense
    # Window routing (BiFormer): each window attends to the tokens of itself and of its
    # topk_windows - 1 highest-affinity windows of the image; None = off.
    topk_windows: int | None = None
    share_params: bool = False  # one block's attention + MLP weights per stage, reused
    rank: int | None = None  # low-rank factorised projections; None = full rank
    # Per-block attention heads and MLP hidden channels, one entry per block over all stages
    # (sum(depths) ints, stage 0 first), as structured pruning (jaxseg.compress) writes them;
    # a block's head width stays embed_dims[i] // num_heads[i]. None -> num_heads[i] heads
    # and int(embed_dims[i] * mlp_ratio) channels in every block.
    block_heads: tuple[int, ...] | None = None
    block_mlp_hidden: tuple[int, ...] | None = None
    # Norm of the conv stem and decoder. "instance" by default: LayerNorm over few channels
    # at full resolution has a slow backward on XLA:CPU (~5x instance norm's).
    norm: str = "instance"
    depthwise_kernel: int = 3
    # Dense refinement conv after each fusion: an int for every decoder level, or a tuple per
    # level (full resolution first; 0 = none). None -> 3 everywhere in 2D; in 3D 0 at full
    # resolution and 3 elsewhere: a 3^3 conv at full resolution was ~half of the 96^3 forward
    # time on XLA:CPU (3D convs run at ~5 GFLOP/s there), for a map the 1x1 fusion covers.
    decoder_refine_kernel: int | tuple[int, ...] | None = None
    attention_impl: str = "auto"  # passed to jaxseg.ops.window_attention(_topk)
    depthwise_impl: str = "auto"  # passed to jaxseg.ops.depthwise_conv
    dtype: Dtype = jnp.float32  # compute dtype; params stay float32
    # Recompute each Transformer block's activations in the backward pass (nn.remat):
    # less activation memory for 3D volumes, ~1/3 more compute.
    remat: bool = False
    model_name: str = "lightseg"  # registry name, used in error messages

    def _windows(self) -> list[tuple[int, ...]]:
        ws = (
            self.window_sizes
            if self.window_sizes is not None
            else default_window_sizes(self.dims, len(self.embed_dims))
        )
        out = []
        for w in ws:
            w = (w,) * self.dims if isinstance(w, int) else tuple(w)
            out.append(w)
        return out

    def _halo(self) -> tuple[int, ...]:
        h = self.halo
        return (
            (h,) * self.dims
            if isinstance(h, int)
            else tuple(h)
            if isinstance(h, (tuple, list))
            else (h,)
        )

    def shifts_windows(self) -> bool:
        """`shift_windows` resolved: None -> shifted unless halo or topk_windows is set."""
        if self.shift_windows is None:
            return not any(self._halo()) and self.topk_windows is None
        return bool(self.shift_windows)

    def exchange_layers(self) -> tuple[int, ...]:
        """The global block indices followed by a cross-window exchange."""
        if self.cross_window_layers is None:
            return tuple(int(x) - 1 for x in np.cumsum(self.depths))
        return tuple(self.cross_window_layers)

    def refine_kernels(self) -> tuple[int, ...]:
        """The decoder's refinement kernel per fusion level (full resolution first)."""
        levels = len(self.embed_dims) + 1
        r = self.decoder_refine_kernel
        if r is None:
            return (3 if self.dims == 2 else 0,) + (3,) * (levels - 1)
        return (r,) * levels if isinstance(r, int) else tuple(r)

    def _validate(self):
        n = self.model_name
        levels = len(self.embed_dims) + 1
        if len(self.refine_kernels()) != levels or min(self.refine_kernels()) < 0:
            raise ConfigError(
                f"{n}: decoder_refine_kernel must be None, an int >= 0 or {levels} ints (one per "
                f"decoder level); got {self.decoder_refine_kernel!r}."
            )
        if self.dims not in (2, 3):
            raise ConfigError(f"{n}: dims must be 2 or 3; got {self.dims}.")
        k = len(self.embed_dims)
        ws = (
            self.window_sizes
            if self.window_sizes is not None
            else default_window_sizes(self.dims, k)
        )
        lens = {
            "embed_dims": k,
            "depths": len(self.depths),
            "num_heads": len(self.num_heads),
            "window_sizes": len(ws),
        }
        if k < 1 or len(set(lens.values())) != 1:
            raise ConfigError(
                f"{n}: embed_dims, depths, num_heads and window_sizes need one entry per "
                f"stage; got lengths {lens}."
            )
        for c, h in zip(self.embed_dims, self.num_heads):
            if h < 1 or c % h:
                raise ConfigError(f"{n}: embed dim {c} is not divisible by num_heads {h}.")
        for w in self._windows():
            if len(w) != self.dims or min(w) < 1:
                raise ConfigError(
                    f"{n}: window size {w} must be a positive int or {self.dims} ints."
                )
        if len(self.stem_dims) != 2:
            raise ConfigError(
                f"{n}: stem_dims needs 2 entries (stride 1 and 2); got {self.stem_dims}."
            )
        total = sum(self.depths)
        bad = [i for i in self.exchange_layers() if not 0 <= i < total]
        if bad:
            raise ConfigError(
                f"{n}: cross_window_layers {bad} are not block indices 0..{total - 1} "
                f"(depths {tuple(self.depths)})."
            )
        if self.global_tokens < 0:
            raise ConfigError(f"{n}: global_tokens must be >= 0; got {self.global_tokens}.")
        if self.topk is not None and self.topk < 1:
            raise ConfigError(f"{n}: topk must be None (dense) or >= 1; got {self.topk}.")
        halo = self._halo()
        if len(halo) != self.dims or not all(
            isinstance(h, int) and not isinstance(h, bool) and h >= 0 for h in halo
        ):
            raise ConfigError(
                f"{n}: halo must be an int >= 0 or {self.dims} ints >= 0 (one per axis); "
                f"got {self.halo!r}."
            )
        tw = self.topk_windows
        if tw is not None and (not isinstance(tw, int) or isinstance(tw, bool) or tw < 1):
            raise ConfigError(
                f"{n}: topk_windows must be None (no routing) or an int >= 1; "
                f"got {self.topk_windows!r}."
            )
        if any(halo) and self.topk_windows is not None:
            raise ConfigError(
                f"{n}: halo={self.halo!r} and topk_windows={self.topk_windows} do not combine "
                "(halo keys are local, routed windows are not); set halo=0 or topk_windows=None."
            )
        if self.shift_windows and (any(halo) or self.topk_windows is not None):
            other, why = (
                (
                    f"halo={self.halo!r}",
                    "halo keys already overlap the windows, and under a cyclic "
                    "shift the halo would take keys from across the wrap-around",
                )
                if any(halo)
                else (
                    f"topk_windows={self.topk_windows}",
                    "routed windows already connect the windows, and the "
                    "own window's bias has no shift-region mask",
                )
            )
            raise ConfigError(
                f"{n}: shift_windows=True does not combine with {other}: {why}. "
                "Set shift_windows=False (or None)."
            )
        if self.rank is not None and self.rank < 1:
            raise ConfigError(f"{n}: rank must be None (full rank) or >= 1; got {self.rank}.")
        for key in ("block_heads", "block_mlp_hidden"):
            per_block = getattr(self, key)
            if per_block is None:
                continue
            if len(per_block) != total or min(per_block) < 1:
                raise ConfigError(
                    f"{n}: {key} needs {total} ints >= 1 (one per block, depths "
                    f"{tuple(self.depths)}); got {per_block!r}."
                )
            if self.share_params:
                starts = np.cumsum((0, *self.depths))
                for i in range(k):
                    if len(set(per_block[starts[i] : starts[i + 1]])) > 1:
                        raise ConfigError(
                            f"{n}: share_params=True shares one block per stage, so {key} "
                            f"must be the same for every block of stage {i}; got {per_block!r}."
                        )
        check_norm(self.norm, n)

    def _block_args(self, block_args: dict, block_id: int) -> dict:
        """`block_args` with global block `block_id`'s heads and MLP width (block_heads,
        block_mlp_hidden); the head width stays the stage's dim // num_heads."""
        out = dict(block_args)
        if self.block_heads is not None:
            out["head_dim"] = out["dim"] // out["num_heads"]
            out["num_heads"] = int(self.block_heads[block_id])
        if self.block_mlp_hidden is not None:
            out["mlp_hidden"] = int(self.block_mlp_hidden[block_id])
        return out

    @property
    def total_stride(self) -> int:
        return 4 * 2 ** (len(self.embed_dims) - 1)

    @nn.compact
    def __call__(self, x, *, train: bool = False):
        """x `[B, *S, C]` float -> logits `[B, *S, num_classes]` float32."""
        self._validate()
        check_input(x, model=self.model_name, dims=self.dims, in_channels=self.in_channels)
        x, shape = pad_to_multiple(x.astype(self.dtype), self.total_stride)
        x, skips = self._encode(x, train)
        return self._decode(x, skips, shape)

    def _encode(self, x, train: bool):
        """Stem and stages on `[B, *S, C]` (S a multiple of `total_stride`) -> (the deepest
        stage's map, skips `[stride 1, stride 2, stage 0, ..., stage K-2]`). A helper of a
        compact method: its submodules belong to the caller's scope (`lightseg_fusion` runs
        it per modality through a subclass)."""
        dt = self.dtype

        # ---- stem
        conv = dict(norm=self.norm, dtype=dt)
        ds = dict(
            kernel_size=self.depthwise_kernel,
            norm=self.norm,
            depthwise_impl=self.depthwise_impl,
            dtype=dt,
        )
        x = ConvNormAct(self.stem_dims[0], 3, act="gelu", name="stem_conv", **conv)(x)
        skips = [x]
        x = Downsample(self.stem_dims[1], dt, name="stem_down1")(x)
        x = DepthwiseSeparable(self.stem_dims[1], name="stem_ds1", **ds)(x)
        skips.append(x)
        x = Downsample(self.embed_dims[0], dt, name="stem_down2")(x)
        x = DepthwiseSeparable(self.embed_dims[0], name="stem_ds2", **ds)(x)

        # ---- transformer stages
        total_blocks = sum(self.depths)
        exchange_after = set(self.exchange_layers())
        block_id = 0
        for i, (dim, depth, heads, win) in enumerate(
            zip(self.embed_dims, self.depths, self.num_heads, self._windows())
        ):
            if i > 0:
                skips.append(x)
                x = Downsample(dim, dt, name=f"merge{i}")(x)
            f = x.shape[1:-1]
            table_win = win
            win = tuple(min(w, n) for w, n in zip(win, f))
            no_shift = (0,) * self.dims
            shift = (
                tuple(w // 2 if n > w else 0 for w, n in zip(win, f))
                if self.shifts_windows()
                else no_shift
            )
            # No halo on an axis the window already covers: it would hold padding only.
            halo = tuple(h if n > w else 0 for h, w, n in zip(self._halo(), win, f))
            x, _ = pad_to_multiple(x, win)
            fp = x.shape[1:-1]
            if any(halo) or self.topk_windows is not None:  # key masks [nW, M] (no shift here)
                masks = (window_key_mask(fp, f, win, halo),) * 2
            else:
                masks = (
                    window_attention_mask(fp, f, win, no_shift),
                    window_attention_mask(fp, f, win, shift),
                )
            block_args = dict(
                dim=dim,
                num_heads=heads,
                window=win,
                mlp_ratio=self.mlp_ratio,
                attention_impl=self.attention_impl,
                dtype=dt,
                table_window=table_win,
                rank=self.rank,
                topk=self.topk,
                halo=halo,
                table_halo=self._halo(),
                topk_windows=self.topk_windows,
            )
            # Arguments 3.. of a block call (shift, drop rate, train) are Python values: static.
            block_cls = nn.remat(LightBlock, static_argnums=(3, 4, 5)) if self.remat else LightBlock
            # A shared block takes its stage's first entry (validated equal across the stage).
            shared = (
                block_cls(**self._block_args(block_args, block_id), name=f"stage{i}_block")
                if self.share_params
                else None
            )
            for j in range(depth):
                shifted = j % 2 == 1 and any(shift)
                rate = self.drop_path * block_id / max(total_blocks - 1, 1)
                block = (
                    shared
                    if shared is not None
                    else block_cls(
                        **self._block_args(block_args, block_id), name=f"stage{i}_block{j}"
                    )
                )
                mask = masks[1] if shifted else masks[0]
                x = block(
                    x,
                    None if mask is None else jnp.asarray(mask),
                    shift if shifted else no_shift,
                    rate,
                    train,
                )
                if block_id in exchange_after:
                    x = WindowExchange(
                        dim,
                        heads,
                        win,
                        self.global_tokens,
                        self.rank,
                        self.attention_impl,
                        dt,
                        name=f"stage{i}_exchange{j}",
                    )(x, window_pool_weights(fp, f, win), rate, train=train)
                block_id += 1
            x = crop_to(x, f)
            x = nn.LayerNorm(epsilon=1e-5, dtype=dt, name=f"stage{i}_norm")(x)
        return x, skips

    def _decode(self, x, skips, shape):
        """Decoder and head: the deepest map and `_encode`'s skips -> logits `[B, *shape, K]`
        float32 (cropped to the unpadded `shape`). A helper of a compact method, like `_encode`."""
        dt = self.dtype
        dec_dims = (self.stem_dims[0], self.stem_dims[1], *self.embed_dims[:-1])
        refine = self.refine_kernels()
        for level in reversed(range(len(skips))):
            x = FusionBlock(dec_dims[level], refine[level], self.norm, dt, name=f"fuse{level}")(
                x, skips[level]
            )
        x = nn.Dense(self.num_classes, dtype=dt, name="head")(x)
        return crop_to(x, shape).astype(jnp.float32)
