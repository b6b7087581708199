"""Attention U-Net (Oktay et al. 2018, "Attention U-Net: learning where to look for the
pancreas"), channels-last, 2D or 3D.

A U-Net whose skip connections pass through additive attention gates. For a skip map x
(`F_x` channels) and a gating signal g (`F_g` channels) at the same resolution:

    q     = psi^T relu(W_x^T x + W_g^T g + b_g) + b_psi     (W_x, W_g, psi are 1x1 convs)
    alpha = sigmoid(q)                                       (one coefficient per voxel)
    out   = x * alpha

Where g comes from: the paper computes W_x with a stride-2 conv on x so that it meets the
coarser g, and resamples alpha back up. Here, as in MONAI's `AttentionUnet`, the gate uses
the decoder feature *after* its 2x transposed-conv upsampling, which already has the skip's
resolution, so every term is a 1x1 conv and alpha needs no resampling. The gated skip is
concatenated with that upsampled feature and refined by two conv blocks.

Encoder and decoder blocks are two (conv3 -> norm -> LeakyReLU), downsampling by strided
conv (nnU-Net style). Any spatial shape: zero-padded at the end to a multiple of
2^(levels-1), logits cropped back.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from jaxseg.errors import ConfigError
from jaxseg.models.layers import ConvNormAct, check_input, check_norm, crop_to, pad_to_multiple
from jaxseg.models.unet import encode_decode

Dtype = Any


class AttentionGate(nn.Module):
    """Additive attention gate: x `[B, *S, F_x]`, g `[B, *S, F_g]` -> x * alpha `[B, *S, F_x]`.

    alpha `[B, *S, 1]` = sigmoid(psi(relu(theta_x(x) + phi_g(g)))); theta_x has no bias
    (phi_g's bias b_g covers the sum), as in the paper's formula.
    """

    inter_features: int
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x, g):
        theta = nn.Dense(self.inter_features, use_bias=False, dtype=self.dtype, name="theta_x")(x)
        phi = nn.Dense(self.inter_features, dtype=self.dtype, name="phi_g")(g)
        q = nn.Dense(1, dtype=self.dtype, name="psi")(nn.relu(theta + phi))
        # The sigmoid in f32: alpha near 0 or 1 is where bf16 loses the most.
        alpha = nn.sigmoid(q.astype(jnp.float32)).astype(x.dtype)
        return x * alpha


class AttentionUNet(nn.Module):
    """Attention U-Net. Input `[B, *S, in_channels]` (any S) -> logits `[B, *S, num_classes]` f32."""

    dims: int
    in_channels: int
    num_classes: int
    features: tuple[int, ...] = (32, 64, 128, 256)  # channels per level, full resolution first
    norm: str = "instance"  # "instance" | "group" | "layer" | "none"
    dtype: Dtype = jnp.float32  # compute dtype; params stay float32
    # Recompute each level's convolutions in the backward pass (nn.remat): less activation
    # memory for 3D volumes, ~1/3 more compute. Same parameters either way.
    remat: bool = False

    def _validate(self):
        if self.dims not in (2, 3):
            raise ConfigError(f"attention_unet: dims must be 2 or 3; got {self.dims}.")
        if len(self.features) < 2:
            raise ConfigError(
                f"attention_unet: features needs at least 2 levels; got {self.features}."
            )
        check_norm(self.norm, "attention_unet")

    def _encoder_level(self, x, level: int):
        """`[B, *S, C]` -> `[B, *S / 2, f]` (level 0: `[B, *S, f]`), f = features[level]."""
        f, blk = self.features[level], dict(norm=self.norm, dtype=self.dtype)
        x = ConvNormAct(f, 3, strides=1 if level == 0 else 2, **blk)(x)
        return ConvNormAct(f, 3, **blk)(x)

    def _decoder_level(self, x, skip, level: int):
        """x `[B, *S / 2, C]`, skip `[B, *S, f]` -> `[B, *S, f]`, f = features[level]."""
        f, blk, d = self.features[level], dict(norm=self.norm, dtype=self.dtype), self.dims
        g = nn.ConvTranspose(f, (2,) * d, strides=(2,) * d, dtype=self.dtype, name=f"up{level}")(x)
        gated = AttentionGate(max(f // 2, 1), dtype=self.dtype, name=f"gate{level}")(skip, g)
        x = jnp.concatenate([gated, g], axis=-1)
        x = ConvNormAct(f, 3, **blk)(x)
        return ConvNormAct(f, 3, **blk)(x)

    @nn.compact
    def __call__(self, x, *, train: bool = False):
        """x `[B, *S, C]` float -> logits `[B, *S, num_classes]` float32."""
        del train
        self._validate()
        check_input(x, model="attention_unet", dims=self.dims, in_channels=self.in_channels)
        x, shape = pad_to_multiple(x.astype(self.dtype), 2 ** (len(self.features) - 1))
        x = encode_decode(self, x, len(self.features), remat=self.remat)
        x = nn.Dense(self.num_classes, dtype=self.dtype, name="head")(x)
        return crop_to(x, shape).astype(jnp.float32)
