"""Classic U-Net / 3D U-Net (nnU-Net-like), channels-last, 2D or 3D from `dims`."""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from jaxseg.errors import ConfigError
from jaxseg.models.layers import ConvNormAct, check_input, check_norm, crop_to, pad_to_multiple

Dtype = Any


def encode_decode(module: nn.Module, x, levels: int, *, remat: bool):
    """The U-Net pass of `module`'s `_encoder_level(x, level)` and `_decoder_level(x, skip,
    level)` methods: encoder levels 0..levels-1, then decoder levels levels-2..0, each fed
    the encoder output of its level as skip. `[B, *S, C]` -> `[B, *S, F]`.

    With `remat`, each level is one `nn.remat` unit. A lifted method creates its submodules
    in `module` under the names they have without it, so the parameters are the same.
    """
    encode, decode = type(module)._encoder_level, type(module)._decoder_level
    if remat:  # `level` is a Python int: static
        encode, decode = (
            nn.remat(encode, static_argnums=(2,)),
            nn.remat(decode, static_argnums=(3,)),
        )
    skips = []
    for level in range(levels):
        x = encode(module, x, level)
        skips.append(x)
    for level in reversed(range(levels - 1)):
        x = decode(module, x, skips[level], level)
    return x


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
    # Recompute each level's convolutions in the backward pass (nn.remat): less activation
    # memory for 3D volumes, ~1/3 more compute. Same parameters either way.
    remat: bool = False

    def _validate(self):
        if self.dims not in (2, 3):
            raise ConfigError(f"unet: dims must be 2 or 3; got {self.dims}.")
        if len(self.features) < 2:
            raise ConfigError(f"unet: features needs at least 2 levels; got {self.features}.")
        if self.downsample not in ("conv", "maxpool"):
            raise ConfigError(
                f"unet: downsample must be 'conv' or 'maxpool'; got {self.downsample!r}."
            )
        check_norm(self.norm, "unet")

    def _encoder_level(self, x, level: int):
        """`[B, *S, C]` -> `[B, *S / 2, f]` (level 0: `[B, *S, f]`), f = features[level]."""
        f, blk = self.features[level], dict(norm=self.norm, dtype=self.dtype)
        down = level > 0
        if down and self.downsample == "maxpool":
            x = nn.max_pool(x, (2,) * self.dims, (2,) * self.dims)
        x = ConvNormAct(f, 3, strides=2 if down and self.downsample == "conv" else 1, **blk)(x)
        return ConvNormAct(f, 3, **blk)(x)

    def _decoder_level(self, x, skip, level: int):
        """x `[B, *S / 2, C]`, skip `[B, *S, f]` -> `[B, *S, f]`, f = features[level]."""
        f, blk, d = self.features[level], dict(norm=self.norm, dtype=self.dtype), self.dims
        x = nn.ConvTranspose(f, (2,) * d, strides=(2,) * d, dtype=self.dtype)(x)
        x = jnp.concatenate([x, skip], axis=-1)
        x = ConvNormAct(f, 3, **blk)(x)
        return ConvNormAct(f, 3, **blk)(x)

    @nn.compact
    def __call__(self, x, *, train: bool = False):
        """x `[B, *S, C]` float -> logits `[B, *S, num_classes]` float32."""
        del train  # no dropout or batch statistics
        self._validate()
        check_input(x, model="unet", dims=self.dims, in_channels=self.in_channels)
        x, shape = pad_to_multiple(x.astype(self.dtype), 2 ** (len(self.features) - 1))
        x = encode_decode(self, x, len(self.features), remat=self.remat)
        x = nn.Dense(self.num_classes, dtype=self.dtype, name="head")(x)
        return crop_to(x, shape).astype(jnp.float32)
