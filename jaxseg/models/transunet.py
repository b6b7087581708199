"""TransUNet (Chen et al. 2021, "TransUNet: Transformers make strong encoders for medical
image segmentation"), 2D only, channels-last.

Layout (strides relative to the input; w = resnet_width):

  CNN encoder (ResNet-50-style, "R50" of the paper when resnet_depths=(3, 4, 9), width 64)
    root    conv7 stride 2 -> norm -> ReLU, w channels                       (1/2, skip)
            max-pool 3 stride 2                                              (1/4)
    stage1  resnet_depths[0] bottlenecks, out 4w                             (1/4, skip)
    stage2  resnet_depths[1] bottlenecks (first strided), out 8w             (1/8, skip)
    stage3  resnet_depths[2] bottlenecks (first strided), out 16w            (1/16)
  ViT       1x1 patch embedding (the paper's hybrid: patch size 1 on the 1/16 map) ->
            hidden_size tokens + learned position embedding -> num_layers pre-norm
            Transformer blocks (global multi-head self-attention + GELU MLP) -> LayerNorm
  decoder   "cascaded upsampler": conv3 -> head_channels, then per decoder_channels[k]:
            2x bilinear upsample -> concat the skip at that scale (none at full res) ->
            two (conv3 -> norm -> ReLU)
  head      conv3 -> num_classes

The paper's R50 uses GroupNorm with weight-standardised convs; here the norm is
configurable (GroupNorm by default) and convs are plain. The defaults are a small CPU-sized
model; the paper's ViT-B is hidden_size=768, num_layers=12, num_heads=12, mlp_dim=3072.

Any spatial shape: the input is zero-padded at the end to a multiple of 16 and the logits
are cropped back. The position embedding is a learned `pos_grid` map (the token grid of a
training patch, default 8x8 = 128/16) that is bilinearly resized to the actual token grid
when they differ, as ViT does when fine-tuning at another resolution. Padding is < 16
voxels per axis, so every token covers some real image and no token needs masking.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxseg.errors import ConfigError
from jaxseg.models.layers import (
    ConvNormAct,
    Norm,
    check_input,
    check_norm,
    conv_norm,
    crop_to,
    pad_to_multiple,
)

Dtype = Any


class Bottleneck(nn.Module):
    """ResNet bottleneck `[B, *S, C] -> [B, *S / strides, 4 * width]`.

    1x1 (width) -> norm -> ReLU -> 3x3 (width, stride, dilation) -> norm -> ReLU ->
    1x1 (4 width) -> norm, plus a shortcut (identity, or strided 1x1 + norm), then ReLU.
    """

    width: int
    strides: int = 1
    dilation: int = 1
    norm: str = "group"
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        out = 4 * self.width
        bias = self.norm == "none"
        y = nn.Dense(self.width, use_bias=bias, dtype=self.dtype, name="conv1")(x)
        y = nn.relu(Norm(self.norm, self.dtype, name="norm1")(y))
        nd = dict(norm=self.norm, dtype=self.dtype)
        y = conv_norm(
            y,
            self.width,
            strides=self.strides,
            dilation=self.dilation,
            conv_name="conv2",
            norm_name="norm2",
            **nd,
        )
        y = nn.relu(y)
        y = nn.Dense(out, use_bias=bias, dtype=self.dtype, name="conv3")(y)
        y = Norm(self.norm, self.dtype, name="norm3")(y)
        if self.strides != 1 or x.shape[-1] != out:
            x = conv_norm(
                x,
                out,
                1,
                strides=self.strides,
                conv_name="shortcut",
                norm_name="shortcut_norm",
                **nd,
            )
        return nn.relu(x + y)


class ViTBlock(nn.Module):
    """Pre-norm Transformer block on tokens `[B, N, C]`: x + MHSA(LN(x)), then x + MLP(LN(x)).

    Global multi-head self-attention written as einsums: qkv = Dense(3C)(h) split as
    (3, heads, C / heads); logits = (q / sqrt(D)) k^T, softmax in f32; proj = Dense(C).
    MLP = Dense(mlp_dim) -> GELU (tanh approximation) -> Dense(C).
    """

    num_heads: int
    mlp_dim: int
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        b, n, c = x.shape
        hd = c // self.num_heads
        h = nn.LayerNorm(epsilon=1e-6, dtype=self.dtype, name="norm1")(x)
        qkv = nn.Dense(3 * c, dtype=self.dtype, name="qkv")(h).reshape(b, n, 3, self.num_heads, hd)
        q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]  # [B, N, H, D]
        logits = jnp.einsum(
            "bqhd,bkhd->bhqk",
            q * jnp.asarray(hd**-0.5, q.dtype),
            k,
            preferred_element_type=jnp.float32,
        )
        p = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
        o = jnp.einsum("bhqk,bkhd->bqhd", p, v).reshape(b, n, c)
        x = x + nn.Dense(c, dtype=self.dtype, name="proj")(o)
        y = nn.LayerNorm(epsilon=1e-6, dtype=self.dtype, name="norm2")(x)
        y = nn.Dense(self.mlp_dim, dtype=self.dtype, name="fc1")(y)
        y = nn.Dense(c, dtype=self.dtype, name="fc2")(nn.gelu(y))
        return x + y


def resize_bilinear(x, shape):
    """Bilinear resize of the spatial axes of `[B, *S, C]` to `shape` (half-pixel centres)."""
    if tuple(x.shape[1:-1]) == tuple(shape):
        return x
    return jax.image.resize(x, (x.shape[0], *shape, x.shape[-1]), method="linear")


class TransUNet(nn.Module):
    """TransUNet (2D). Input `[B, X, Y, in_channels]` (any X, Y) -> logits `[B, X, Y, num_classes]` f32."""

    dims: int
    in_channels: int
    num_classes: int
    resnet_width: int = 16  # w: root channels; stage k outputs 4 w 2^k (the paper's R50: 64)
    resnet_depths: tuple[int, ...] = (1, 2, 2)  # bottlenecks per stage (the paper's R50: 3, 4, 9)
    hidden_size: int = 192  # ViT token width
    num_layers: int = 4  # ViT blocks
    num_heads: int = 6  # attention heads; must divide hidden_size
    mlp_dim: int = 768  # ViT MLP width
    pos_grid: tuple[int, int] = (
        8,
        8,
    )  # learned position-embedding grid (token grid of a 128^2 patch)
    head_channels: int = 256  # decoder's first conv after the ViT (the paper: 512)
    decoder_channels: tuple[int, ...] = (128, 64, 32, 16)  # cascaded upsampler, 1/8 -> full res
    norm: str = "group"  # "instance" | "group" | "layer" | "none"
    dtype: Dtype = jnp.float32  # compute dtype; params stay float32

    def _validate(self):
        if self.dims != 2:
            raise ConfigError(
                f"transunet is defined in 2D only (Chen et al. 2021); got dims={self.dims}. "
                "Use dims=2, or a 3D model such as unet, unetr or swinunetr."
            )
        if len(self.resnet_depths) != 3 or min(self.resnet_depths) < 1:
            raise ConfigError(
                f"transunet: resnet_depths must be 3 positive numbers; got {self.resnet_depths}."
            )
        if len(self.decoder_channels) != 4:
            raise ConfigError(
                f"transunet: decoder_channels needs 4 entries (1/8, 1/4, 1/2, 1/1); "
                f"got {self.decoder_channels}."
            )
        if self.hidden_size % self.num_heads:
            raise ConfigError(
                f"transunet: hidden_size={self.hidden_size} is not divisible by "
                f"num_heads={self.num_heads}."
            )
        if len(self.pos_grid) != 2 or min(self.pos_grid) < 1:
            raise ConfigError(
                f"transunet: pos_grid must be 2 positive numbers; got {self.pos_grid}."
            )
        check_norm(self.norm, "transunet")

    @nn.compact
    def __call__(self, x, *, train: bool = False):
        """x `[B, X, Y, C]` float -> logits `[B, X, Y, num_classes]` float32."""
        del train
        self._validate()
        check_input(x, model="transunet", dims=self.dims, in_channels=self.in_channels)
        x, shape = pad_to_multiple(x.astype(self.dtype), 16)
        w, blk = self.resnet_width, dict(norm=self.norm, dtype=self.dtype)
        # ---- CNN encoder
        x = nn.relu(
            conv_norm(x, w, 7, strides=2, conv_name="root_conv", norm_name="root_norm", **blk)
        )
        skips = [x]  # 1/2
        x = nn.max_pool(x, (3, 3), strides=(2, 2), padding="SAME")
        for stage, depth in enumerate(self.resnet_depths):
            for i in range(depth):
                x = Bottleneck(
                    w * 2**stage,
                    strides=2 if (stage > 0 and i == 0) else 1,
                    **blk,
                    name=f"stage{stage + 1}_{i}",
                )(x)
            if stage < 2:
                skips.append(x)  # 1/4, 1/8
        # ---- ViT on the 1/16 map (hybrid: 1x1 patches)
        b, gx, gy, _ = x.shape
        t = nn.Dense(self.hidden_size, dtype=self.dtype, name="patch_embed")(x)
        pos = self.param(
            "pos_embedding", nn.initializers.normal(0.02), (1, *self.pos_grid, self.hidden_size)
        )
        t = t + resize_bilinear(pos, (gx, gy)).astype(self.dtype)
        t = t.reshape(b, gx * gy, self.hidden_size)
        for i in range(self.num_layers):
            t = ViTBlock(self.num_heads, self.mlp_dim, dtype=self.dtype, name=f"vit{i}")(t)
        t = nn.LayerNorm(epsilon=1e-6, dtype=self.dtype, name="vit_norm")(t)
        x = t.reshape(b, gx, gy, self.hidden_size)
        # ---- cascaded upsampler
        x = ConvNormAct(self.head_channels, 3, act="relu", **blk)(x)
        for k, f in enumerate(self.decoder_channels):
            x = resize_bilinear(x, (2 * x.shape[1], 2 * x.shape[2]))
            if k < 3:
                x = jnp.concatenate([x, skips[2 - k]], axis=-1)
            x = ConvNormAct(f, 3, act="relu", **blk)(x)
            x = ConvNormAct(f, 3, act="relu", **blk)(x)
        x = nn.Conv(self.num_classes, (3, 3), padding="SAME", dtype=self.dtype, name="head")(x)
        return crop_to(x, shape).astype(jnp.float32)
