"""LightSeg: a lightweight window-attention Transformer for 2D/3D segmentation.

Layout (strides relative to the input):

  stem     dense 3^d conv -> stem_dims[0]                                 (stride 1, skip)
           2x down (space-to-depth + 1x1) -> stem_dims[1], DS block       (stride 2, skip)
           2x down -> embed_dims[0], DS block                             (stride 4)
  stages   stage i at stride 4 * 2^i: [patch merging,] depths[i] Swin blocks with window
           window_sizes[i] (shifted windows on odd blocks), LayerNorm    (skips)
  decoder  fusion modules, deepest first: upsample the deeper map (2x transposed conv as
           1x1 + depth-to-space), concat with the skip, 1x1 projection, dense 3^d conv
           refinement; down to stride 1
  head     1x1 conv -> num_classes

DS block = depthwise kxk (`jaxseg.ops.depthwise_conv`) + pointwise 1x1. Only the stem
uses depthwise convs; the decoder hot path is 1x1 and dense convs.

Any spatial shape: the input is zero-padded at the end to a multiple of the total stride
(4 * 2^(stages-1)) and the logits are cropped back. Inside a stage, a window larger than
the feature map is clamped to it (attention over the whole map, no shift); otherwise the
map is padded at the end to a multiple of the window, and padded keys are masked out of
attention (combined with the Swin shift mask), then cropped back after the stage.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from jaxseg.errors import ConfigError
from jaxseg.models.layers import (
    ConvNormAct,
    DepthwiseSeparable,
    WindowAttentionBlock,
    check_input,
    check_norm,
    crop_to,
    depth_to_space,
    pad_to_multiple,
    space_to_depth,
    window_attention_mask,
)

Dtype = Any


def default_window_sizes(dims: int, num_stages: int) -> tuple[int, ...]:
    """2D: 8 for the first two stages, 4 deeper; 3D: 4, then 2."""
    big, small = (8, 4) if dims == 2 else (4, 2)
    return tuple(big if i < 2 else small for i in range(num_stages))


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
        x = ConvNormAct(self.features, 1, norm=self.norm, act="gelu", dtype=self.dtype, name="fuse")(x)
        if self.refine_kernel > 0:
            x = ConvNormAct(self.features, self.refine_kernel, norm=self.norm, act="gelu", dtype=self.dtype,
                            name="refine")(x)
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
    # Norm of the conv stem and decoder. "instance" by default: LayerNorm over few channels
    # at full resolution has a slow backward on XLA:CPU (~5x instance norm's).
    norm: str = "instance"
    depthwise_kernel: int = 3
    decoder_refine_kernel: int = 3  # 0: no dense refinement conv after each fusion
    attention_impl: str = "auto"  # passed to jaxseg.ops.window_attention
    depthwise_impl: str = "auto"  # passed to jaxseg.ops.depthwise_conv
    dtype: Dtype = jnp.float32  # compute dtype; params stay float32
    model_name: str = "lightseg"  # registry name, used in error messages

    def _windows(self) -> list[tuple[int, ...]]:
        ws = self.window_sizes if self.window_sizes is not None else default_window_sizes(
            self.dims, len(self.embed_dims))
        out = []
        for w in ws:
            w = (w,) * self.dims if isinstance(w, int) else tuple(w)
            out.append(w)
        return out

    def _validate(self):
        n = self.model_name
        if self.dims not in (2, 3):
            raise ConfigError(f"{n}: dims must be 2 or 3; got {self.dims}.")
        k = len(self.embed_dims)
        ws = self.window_sizes if self.window_sizes is not None else default_window_sizes(self.dims, k)
        lens = {"embed_dims": k, "depths": len(self.depths), "num_heads": len(self.num_heads),
                "window_sizes": len(ws)}
        if k < 1 or len(set(lens.values())) != 1:
            raise ConfigError(f"{n}: embed_dims, depths, num_heads and window_sizes need one entry per "
                              f"stage; got lengths {lens}.")
        for c, h in zip(self.embed_dims, self.num_heads):
            if h < 1 or c % h:
                raise ConfigError(f"{n}: embed dim {c} is not divisible by num_heads {h}.")
        for w in self._windows():
            if len(w) != self.dims or min(w) < 1:
                raise ConfigError(f"{n}: window size {w} must be a positive int or {self.dims} ints.")
        if len(self.stem_dims) != 2:
            raise ConfigError(f"{n}: stem_dims needs 2 entries (stride 1 and 2); got {self.stem_dims}.")
        check_norm(self.norm, n)

    @property
    def total_stride(self) -> int:
        return 4 * 2 ** (len(self.embed_dims) - 1)

    @nn.compact
    def __call__(self, x, *, train: bool = False):
        """x `[B, *S, C]` float -> logits `[B, *S, num_classes]` float32."""
        self._validate()
        check_input(x, model=self.model_name, dims=self.dims, in_channels=self.in_channels)
        dt = self.dtype
        x, shape = pad_to_multiple(x.astype(dt), self.total_stride)

        # ---- stem
        conv = dict(norm=self.norm, dtype=dt)
        ds = dict(kernel_size=self.depthwise_kernel, norm=self.norm, depthwise_impl=self.depthwise_impl, dtype=dt)
        x = ConvNormAct(self.stem_dims[0], 3, act="gelu", name="stem_conv", **conv)(x)
        skips = [x]
        x = Downsample(self.stem_dims[1], dt, name="stem_down1")(x)
        x = DepthwiseSeparable(self.stem_dims[1], name="stem_ds1", **ds)(x)
        skips.append(x)
        x = Downsample(self.embed_dims[0], dt, name="stem_down2")(x)
        x = DepthwiseSeparable(self.embed_dims[0], name="stem_ds2", **ds)(x)

        # ---- transformer stages
        total_blocks = sum(self.depths)
        block_id = 0
        for i, (dim, depth, heads, win) in enumerate(zip(self.embed_dims, self.depths, self.num_heads,
                                                         self._windows())):
            if i > 0:
                skips.append(x)
                x = Downsample(dim, dt, name=f"merge{i}")(x)
            f = x.shape[1:-1]
            table_win = win
            win = tuple(min(w, n) for w, n in zip(win, f))
            shift = tuple(w // 2 if n > w else 0 for w, n in zip(win, f))
            x, _ = pad_to_multiple(x, win)
            fp = x.shape[1:-1]
            masks = (window_attention_mask(fp, f, win, (0,) * self.dims),
                     window_attention_mask(fp, f, win, shift))
            for j in range(depth):
                shifted = j % 2 == 1 and any(shift)
                rate = self.drop_path * block_id / max(total_blocks - 1, 1)
                x = WindowAttentionBlock(
                    dim, heads, win, shift if shifted else (0,) * self.dims, self.mlp_ratio, rate,
                    self.attention_impl, dt, table_win, name=f"stage{i}_block{j}",
                )(x, masks[1] if shifted else masks[0], train=train)
                block_id += 1
            x = crop_to(x, f)
            x = nn.LayerNorm(epsilon=1e-5, dtype=dt, name=f"stage{i}_norm")(x)

        # ---- decoder
        dec_dims = (self.stem_dims[0], self.stem_dims[1], *self.embed_dims[:-1])
        for level in reversed(range(len(skips))):
            x = FusionBlock(dec_dims[level], self.decoder_refine_kernel, self.norm, dt, name=f"fuse{level}")(
                x, skips[level])
        x = nn.Dense(self.num_classes, dtype=dt, name="head")(x)
        return crop_to(x, shape).astype(jnp.float32)
