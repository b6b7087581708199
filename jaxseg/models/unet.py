"""Classic U-Net / 3D U-Net (nnU-Net-like), channels-last, 2D or 3D from `dims`."""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from jaxseg.errors import ConfigError
from jaxseg.models.layers import ConvNormAct, check_input, check_norm, crop_to, pad_to_multiple

Dtype = Any


class UNet(nn.Module):
    """U-Net: per level two (conv 3 -> norm -> LeakyReLU); down by strided conv (nnU-Net) or
    max-pool; up by a 2x transposed conv; skips concatenated.

    Input `[B, *S, in_channels]` (any S: zero-padded at the end to a multiple of
    2^(levels-1), logits cropped back) -> logits `[B, *S, num_classes]` float32.
    """

    dims: int
    in_channels: int
    num_classes: int
    features: tuple[int, ...] = (32, 64, 128, 256)
    norm: str = "instance"  # "instance" | "group" | "layer" | "none"
    downsample: str = "conv"  # "conv" (strided conv, nnU-Net) | "maxpool"
    dtype: Dtype = jnp.float32  # compute dtype; params stay float32

    def _validate(self):
        if self.dims not in (2, 3):
            raise ConfigError(f"unet: dims must be 2 or 3; got {self.dims}.")
        if len(self.features) < 2:
            raise ConfigError(f"unet: features needs at least 2 levels; got {self.features}.")
        if self.downsample not in ("conv", "maxpool"):
            raise ConfigError(f"unet: downsample must be 'conv' or 'maxpool'; got {self.downsample!r}.")
        check_norm(self.norm, "unet")

    @nn.compact
    def __call__(self, x, *, train: bool = False):
        """x `[B, *S, C]` float -> logits `[B, *S, num_classes]` float32."""
        del train  # no dropout or batch statistics
        self._validate()
        check_input(x, model="unet", dims=self.dims, in_channels=self.in_channels)
        d = self.dims
        x, shape = pad_to_multiple(x.astype(self.dtype), 2 ** (len(self.features) - 1))
        block = dict(norm=self.norm, dtype=self.dtype)
        skips = []
        for level, f in enumerate(self.features):
            if level > 0:
                if self.downsample == "conv":
                    x = ConvNormAct(f, 3, strides=2, **block)(x)
                else:
                    x = nn.max_pool(x, (2,) * d, (2,) * d)
                    x = ConvNormAct(f, 3, **block)(x)
            else:
                x = ConvNormAct(f, 3, **block)(x)
            x = ConvNormAct(f, 3, **block)(x)
            skips.append(x)
        for f, skip in zip(reversed(self.features[:-1]), reversed(skips[:-1])):
            x = nn.ConvTranspose(f, (2,) * d, strides=(2,) * d, dtype=self.dtype)(x)
            x = jnp.concatenate([x, skip], axis=-1)
            x = ConvNormAct(f, 3, **block)(x)
            x = ConvNormAct(f, 3, **block)(x)
        x = nn.Dense(self.num_classes, dtype=self.dtype, name="head")(x)
        return crop_to(x, shape).astype(jnp.float32)
