"""UNet++ (Zhou et al. 2018/2020, "UNet++: a nested U-Net architecture"), channels-last,
2D or 3D.

Nodes X[i][j]: i is the depth (resolution 2^-i), j the position along the nested skip
pathway. With L = len(features):

  X[i][0]  backbone encoder: two (conv3 -> norm -> LeakyReLU), the first strided for i > 0
  X[i][j]  (j >= 1, i + j <= L - 1) = ConvBlock(features[i])(
               concat(X[i][0], ..., X[i][j-1], Up(X[i+1][j-1])))
           Up = 2x transposed conv to features[i] channels

so node (i, j) sees j dense same-level inputs of features[i] channels plus one upsampled
input of features[i] channels: its first conv has (j + 1) * features[i] input channels.

Output: a 1x1 head on X[0][L-1]. With `deep_supervision=True` there is a head on every
X[0][j], j = 1..L-1, and the model returns the mean of their logits -- the paper's
"accurate mode" ensemble. jaxseg's loss takes one output, so the per-head losses of the
paper's deep-supervision training are not available; the mean still sends gradient to
every head. Off by default.

Any spatial shape: zero-padded at the end to a multiple of 2^(L-1), logits cropped back.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from jaxseg.errors import ConfigError
from jaxseg.models.layers import ConvNormAct, check_input, check_norm, crop_to, pad_to_multiple

Dtype = Any


class ConvBlock(nn.Module):
    """Two (conv3 -> norm -> LeakyReLU); the first carries `strides`. `[B, *S, C] -> [B, *S/s, F]`."""

    features: int
    strides: int = 1
    norm: str = "instance"
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        x = ConvNormAct(self.features, 3, strides=self.strides, norm=self.norm, dtype=self.dtype)(x)
        return ConvNormAct(self.features, 3, norm=self.norm, dtype=self.dtype)(x)


class UNetPlusPlus(nn.Module):
    """UNet++. Input `[B, *S, in_channels]` (any S) -> logits `[B, *S, num_classes]` f32."""

    dims: int
    in_channels: int
    num_classes: int
    features: tuple[int, ...] = (32, 64, 128, 256)  # channels per depth i, full resolution first
    deep_supervision: bool = False  # True: mean of the logits of the heads on X[0][1..L-1]
    norm: str = "instance"  # "instance" | "group" | "layer" | "none"
    dtype: Dtype = jnp.float32  # compute dtype; params stay float32
    # Recompute each node's conv block in the backward pass (nn.remat): less activation
    # memory for 3D volumes, ~1/3 more compute. Same parameters either way.
    remat: bool = False

    def _validate(self):
        if self.dims not in (2, 3):
            raise ConfigError(f"unetpp: dims must be 2 or 3; got {self.dims}.")
        if len(self.features) < 2:
            raise ConfigError(f"unetpp: features needs at least 2 levels; got {self.features}.")
        check_norm(self.norm, "unetpp")

    @nn.compact
    def __call__(self, x, *, train: bool = False):
        """x `[B, *S, C]` float -> logits `[B, *S, num_classes]` float32."""
        del train
        self._validate()
        check_input(x, model="unetpp", dims=self.dims, in_channels=self.in_channels)
        d, levels = self.dims, len(self.features)
        x, shape = pad_to_multiple(x.astype(self.dtype), 2 ** (levels - 1))
        blk = dict(norm=self.norm, dtype=self.dtype)
        # Explicit names: nn.remat keeps them, so checkpoints move between remat on and off.
        conv_block = nn.remat(ConvBlock) if self.remat else ConvBlock
        nodes: dict[tuple[int, int], Any] = {}
        for i, f in enumerate(self.features):
            x = conv_block(f, strides=1 if i == 0 else 2, **blk, name=f"node_{i}_0")(x)
            nodes[i, 0] = x
        # Column by column: X[i][j] needs X[i+1][j-1], which the previous column made.
        for j in range(1, levels):
            for i in range(levels - j):
                f = self.features[i]
                up = nn.ConvTranspose(
                    f, (2,) * d, strides=(2,) * d, dtype=self.dtype, name=f"up_{i}_{j}"
                )(nodes[i + 1, j - 1])
                inputs = [nodes[i, k] for k in range(j)] + [up]
                nodes[i, j] = conv_block(f, **blk, name=f"node_{i}_{j}")(
                    jnp.concatenate(inputs, axis=-1)
                )
        if self.deep_supervision:
            heads = [
                nn.Dense(self.num_classes, dtype=self.dtype, name=f"head_{j}")(nodes[0, j])
                for j in range(1, levels)
            ]
            out = sum(h.astype(jnp.float32) for h in heads) / len(heads)
        else:
            out = nn.Dense(self.num_classes, dtype=self.dtype, name="head")(nodes[0, levels - 1])
        return crop_to(out, shape).astype(jnp.float32)
