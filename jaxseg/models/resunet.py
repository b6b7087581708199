"""ResU-Net: a U-Net whose blocks are residual units (Zhang, Liu & Wang 2018, "Road
extraction by deep residual U-Net"; He et al. 2016 residual units), channels-last, 2D or 3D.

Layout (strides relative to the input; L = len(features)):

  encoder  level 0: ResBlock(features[0])                              (stride 1, skip)
           level i > 0: ResBlock(features[i], stride 2), then
           blocks_per_level - 1 more ResBlocks                         (stride 2^i, skip)
  decoder  deepest first: 2x transposed conv -> concat skip -> ResBlock
  head     1x1 conv -> num_classes

ResBlock = conv3 -> norm -> act -> conv3 -> norm, plus a shortcut (identity, or a 1x1
conv + norm when the stride or channel count changes), then act. The first conv carries
the stride, so downsampling is learned (as in ResU-Net) rather than pooled.

Any spatial shape: the input is zero-padded at the end to a multiple of 2^(L-1) and the
logits are cropped back.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from jaxseg.errors import ConfigError
from jaxseg.models.layers import (
    activation,
    check_input,
    check_norm,
    conv_norm,
    crop_to,
    pad_to_multiple,
)

Dtype = Any


class ResBlock(nn.Module):
    """Residual unit on `[B, *S, C_in]` -> `[B, *S / strides, features]`.

    act(norm(conv3(act(norm(conv3_s(x))))) + shortcut(x)); conv3_s has stride `strides` and
    both convs have dilation `dilation` (used by DeepLab's atrous stages). The shortcut is the
    identity when the shape is kept, else a strided 1x1 conv + norm (projection shortcut).
    """

    features: int
    strides: int = 1
    dilation: int = 1
    norm: str = "instance"
    act: str = "leaky_relu"
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        f, nd = self.features, dict(norm=self.norm, dtype=self.dtype)
        y = conv_norm(
            x,
            f,
            strides=self.strides,
            dilation=self.dilation,
            conv_name="conv1",
            norm_name="norm1",
            **nd,
        )
        y = activation(y, self.act)
        y = conv_norm(y, f, dilation=self.dilation, conv_name="conv2", norm_name="norm2", **nd)
        if self.strides != 1 or x.shape[-1] != f:
            x = conv_norm(
                x, f, 1, strides=self.strides, conv_name="shortcut", norm_name="shortcut_norm", **nd
            )
        return activation(y + x, self.act)


class ResUNet(nn.Module):
    """Residual U-Net. Input `[B, *S, in_channels]` (any S) -> logits `[B, *S, num_classes]` f32."""

    dims: int
    in_channels: int
    num_classes: int
    features: tuple[int, ...] = (32, 64, 128, 256)  # channels per level, full resolution first
    blocks_per_level: int = 1  # residual units per encoder level (>= 1)
    norm: str = "instance"  # "instance" | "group" | "layer" | "none"
    dtype: Dtype = jnp.float32  # compute dtype; params stay float32
    # Recompute each residual unit in the backward pass (nn.remat): less activation
    # memory for 3D volumes, ~1/3 more compute. Same parameters either way.
    remat: bool = False

    def _validate(self):
        if self.dims not in (2, 3):
            raise ConfigError(f"resunet: dims must be 2 or 3; got {self.dims}.")
        if len(self.features) < 2:
            raise ConfigError(f"resunet: features needs at least 2 levels; got {self.features}.")
        if self.blocks_per_level < 1:
            raise ConfigError(
                f"resunet: blocks_per_level must be >= 1; got {self.blocks_per_level}."
            )
        check_norm(self.norm, "resunet")

    @nn.compact
    def __call__(self, x, *, train: bool = False):
        """x `[B, *S, C]` float -> logits `[B, *S, num_classes]` float32."""
        del train  # no dropout or batch statistics
        self._validate()
        check_input(x, model="resunet", dims=self.dims, in_channels=self.in_channels)
        d = self.dims
        x, shape = pad_to_multiple(x.astype(self.dtype), 2 ** (len(self.features) - 1))
        blk = dict(norm=self.norm, dtype=self.dtype)
        # Explicit names: nn.remat keeps them, so checkpoints move between remat on and off.
        res_block = nn.remat(ResBlock) if self.remat else ResBlock
        skips = []
        for level, f in enumerate(self.features):
            x = res_block(f, strides=1 if level == 0 else 2, **blk, name=f"enc{level}_0")(x)
            for i in range(1, self.blocks_per_level):
                x = res_block(f, **blk, name=f"enc{level}_{i}")(x)
            skips.append(x)
        for level in reversed(range(len(self.features) - 1)):
            f = self.features[level]
            x = nn.ConvTranspose(
                f, (2,) * d, strides=(2,) * d, dtype=self.dtype, name=f"up{level}"
            )(x)
            x = jnp.concatenate([x, skips[level]], axis=-1)
            x = res_block(f, **blk, name=f"dec{level}")(x)
        x = nn.Dense(self.num_classes, dtype=self.dtype, name="head")(x)
        return crop_to(x, shape).astype(jnp.float32)
