"""DeepLabV3+ (Chen et al. 2018, "Encoder-decoder with atrous separable convolution for
semantic image segmentation"), 2D only, channels-last.

Layout (strides relative to the input; w = width; output_stride 16 shown):

  encoder  ResNet-style (bottleneck blocks, as `transunet.Bottleneck`):
           root conv7 stride 2 -> norm -> ReLU, max-pool 3 stride 2            (1/4)
           stage1 depths[0] blocks, out 4w                                     (1/4, low-level)
           stage2 depths[1] blocks, first strided, out 8w                      (1/8)
           stage3 depths[2] blocks, first strided, out 16w                     (1/16)
           stage4 depths[3] blocks, stride 1, dilation 2 (atrous), out 32w     (1/16)
           output_stride 8 instead makes stage3 stride 1 / dilation 2 and stage4 dilation 4.
  ASPP     parallel: 1x1 conv; one 3x3 conv per rate in aspp_rates (dilated); image
           pooling (global mean -> 1x1 -> broadcast). concat -> 1x1 -> norm -> ReLU.
  decoder  bilinear upsample to 1/4 -> concat low-level features reduced by a 1x1 conv to
           low_level_channels (48 in the paper) -> two (conv3 -> norm -> ReLU) -> 1x1 to
           num_classes -> bilinear upsample to the input size.

The paper uses an aligned Xception or ResNet-101 with BatchNorm; here the backbone is a
small, configurable ResNet with GroupNorm (params only, batch-independent). The image
pooling branch has no norm: normalising a 1x1 map per sample would make it constant.
The paper's separable convs in ASPP/decoder are dense here: XLA's grouped/depthwise conv is
the slow path on CPU and leaves the TPU's MXU idle (see DESIGN speed facts).

Any spatial shape: the input is zero-padded at the end to a multiple of 16 (the encoder's
total stride) and the logits are cropped back. The rates (6, 12, 18) are the paper's for
output stride 16 (double them for output stride 8).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from jaxseg.errors import ConfigError
from jaxseg.models.layers import (
    ConvNormAct,
    check_input,
    check_norm,
    conv_norm,
    crop_to,
    pad_to_multiple,
)
from jaxseg.models.transunet import Bottleneck, resize_bilinear

Dtype = Any


class ASPP(nn.Module):
    """Atrous spatial pyramid pooling on `[B, *S, C]` -> `[B, *S, features]`.

    Branch submodules: `conv1x1`, `rate{r}_conv` (3x3, dilation r; its norm is `rate{r}_norm`)
    for each r in `rates`, and `pool_conv` (image pooling); then `project`.
    """

    features: int = 128
    rates: tuple[int, ...] = (6, 12, 18)
    norm: str = "group"
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        d = x.ndim - 2
        branches = [
            ConvNormAct(
                self.features, 1, norm=self.norm, act="relu", dtype=self.dtype, name="conv1x1"
            )(x)
        ]
        for r in self.rates:
            y = conv_norm(
                x,
                self.features,
                dilation=r,
                norm=self.norm,
                dtype=self.dtype,
                conv_name=f"rate{r}_conv",
                norm_name=f"rate{r}_norm",
            )
            branches.append(nn.relu(y))
        pooled = jnp.mean(x, axis=tuple(range(1, d + 1)), keepdims=True)
        pooled = nn.relu(nn.Dense(self.features, dtype=self.dtype, name="pool_conv")(pooled))
        branches.append(jnp.broadcast_to(pooled, (*x.shape[:-1], self.features)))
        y = jnp.concatenate(branches, axis=-1)
        return ConvNormAct(
            self.features, 1, norm=self.norm, act="relu", dtype=self.dtype, name="project"
        )(y)


class DeepLabV3Plus(nn.Module):
    """DeepLabV3+ (2D). Input `[B, X, Y, in_channels]` (any X, Y) -> logits `[B, X, Y, num_classes]` f32."""

    dims: int
    in_channels: int
    num_classes: int
    width: int = 16  # root channels; stage k outputs 4 * width * 2^k
    depths: tuple[int, ...] = (1, 1, 2, 1)  # bottlenecks per stage (ResNet-101: 3, 4, 23, 3)
    output_stride: int = 16  # 16 or 8: encoder stride, the rest made up by atrous convs
    aspp_rates: tuple[int, ...] = (6, 12, 18)  # dilation rates of the 3x3 ASPP branches
    aspp_features: int = 128  # ASPP and decoder width (the paper: 256)
    low_level_channels: int = 48  # low-level skip after its 1x1 reduction (the paper: 48)
    norm: str = "group"  # "instance" | "group" | "layer" | "none"
    dtype: Dtype = jnp.float32  # compute dtype; params stay float32

    def _validate(self):
        if self.dims != 2:
            raise ConfigError(
                f"deeplabv3plus is defined in 2D only (Chen et al. 2018); got dims={self.dims}. "
                "Use dims=2, or a 3D model such as unet or resunet."
            )
        if len(self.depths) != 4 or min(self.depths) < 1:
            raise ConfigError(
                f"deeplabv3plus: depths must be 4 positive numbers; got {self.depths}."
            )
        if self.output_stride not in (8, 16):
            raise ConfigError(
                f"deeplabv3plus: output_stride must be 8 or 16; got {self.output_stride}."
            )
        if not self.aspp_rates or min(self.aspp_rates) < 1:
            raise ConfigError(f"deeplabv3plus: aspp_rates must be positive; got {self.aspp_rates}.")
        check_norm(self.norm, "deeplabv3plus")

    @nn.compact
    def __call__(self, x, *, train: bool = False):
        """x `[B, X, Y, C]` float -> logits `[B, X, Y, num_classes]` float32."""
        del train
        self._validate()
        check_input(x, model="deeplabv3plus", dims=self.dims, in_channels=self.in_channels)
        x, shape = pad_to_multiple(x.astype(self.dtype), 16)
        padded = x.shape[1:-1]
        blk = dict(norm=self.norm, dtype=self.dtype)
        x = conv_norm(
            x, self.width, 7, strides=2, conv_name="root_conv", norm_name="root_norm", **blk
        )
        x = nn.relu(x)
        x = nn.max_pool(x, (3, 3), strides=(2, 2), padding="SAME")
        # (stride, dilation) of stages 1..4: the stride stops at output_stride, then dilation grows.
        plan = (
            [(1, 1), (2, 1), (2, 1), (1, 2)]
            if self.output_stride == 16
            else [(1, 1), (2, 1), (1, 2), (1, 4)]
        )
        low = None
        for stage, (depth, (s, dil)) in enumerate(zip(self.depths, plan)):
            for i in range(depth):
                x = Bottleneck(
                    self.width * 2**stage,
                    strides=s if i == 0 else 1,
                    dilation=dil,
                    **blk,
                    name=f"stage{stage + 1}_{i}",
                )(x)
            if stage == 0:
                low = x
        x = ASPP(self.aspp_features, tuple(self.aspp_rates), **blk, name="aspp")(x)
        x = resize_bilinear(x, low.shape[1:-1])
        low = ConvNormAct(self.low_level_channels, 1, act="relu", **blk, name="low_level")(low)
        x = jnp.concatenate([x, low], axis=-1)
        x = ConvNormAct(self.aspp_features, 3, act="relu", **blk, name="decoder1")(x)
        x = ConvNormAct(self.aspp_features, 3, act="relu", **blk, name="decoder2")(x)
        x = nn.Dense(self.num_classes, dtype=self.dtype, name="head")(x)
        x = resize_bilinear(x, padded)
        return crop_to(x, shape).astype(jnp.float32)
