"""ShuffleNetV2-UNet: a U-shaped net with a ShuffleNetV2 encoder (Ma et al. 2018,
"ShuffleNet V2: practical guidelines for efficient CNN architecture design"),
channels-last, 2D or 3D.

Encoder (strides relative to the input; n = len(stage_features)):

  full-res  conv3 -> norm -> ReLU, `full_res_features`                 (1/1, skip)
  stem      conv3 stride 2 -> norm -> ReLU, `stem_features`            (1/2, skip)
            max-pool 3 stride 2                                        (1/4, skip)
  stages    stage k: one downsampling unit, then stage_repeats[k] - 1
            basic units, out stage_features[k]                         (1/2^(k+3); skips
            except the last stage, which is the bottom of the U)
  decoder   `mobilenet.UDecoder`: 2x transposed conv -> concat skip -> conv3 -> norm -> ReLU
  head      1x1 conv -> num_classes

Units (the paper's Fig. 3c/d), each ending in a channel shuffle with 2 groups:
  basic (stride 1):  split channels in half (x1, x2); x2 -> 1x1 -> norm -> ReLU -> dw3 ->
                     norm -> 1x1 -> norm -> ReLU; concat(x1, x2')
  down  (stride 2):  branch1: dw3/2 -> norm -> 1x1 -> norm -> ReLU on x;
                     branch2: 1x1 -> norm -> ReLU -> dw3/2 -> norm -> 1x1 -> norm -> ReLU on x;
                     concat (channels double, resolution halves)
Channel shuffle with g groups: view channels as (g, C/g), transpose to (C/g, g), flatten,
so channel i of the output is channel (i mod g) * C/g + i div g of the input.

The defaults are the paper's 0.5x network (stage features 48, 96, 192; repeats 4, 8, 4; the
final 1x1 conv5 of the classifier is dropped). Depthwise convs go through
`jaxseg.ops.depthwise_conv`; strided ones are stride-1 then subsampled (see `mobilenet.py`
for why). Any spatial shape: zero-padded at the end to a multiple of 2^(n+2), cropped back.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from jaxseg.errors import ConfigError
from jaxseg.models.layers import Norm, check_input, check_norm, crop_to, pad_to_multiple
from jaxseg.models.mobilenet import (
    StridedDepthwise,
    UDecoder,
    check_decoder_features,
    mobile_stem,
)

Dtype = Any


def channel_shuffle(x, groups: int):
    """`[..., C]` -> `[..., C]`: output channel i = input channel (i % groups) * (C // groups) + i // groups."""
    c = x.shape[-1]
    if c % groups:
        raise ConfigError(f"channel_shuffle: {c} channels are not divisible into {groups} groups.")
    x = x.reshape(*x.shape[:-1], groups, c // groups)
    return jnp.swapaxes(x, -1, -2).reshape(*x.shape[:-2], c)


class ShuffleUnit(nn.Module):
    """ShuffleNetV2 unit `[B, *S, C] -> [B, *S / strides, features]` (see the module docstring).

    strides 1 needs C == features; strides 2 takes any C.
    """

    features: int
    strides: int = 1
    norm: str = "instance"
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        half = self.features // 2
        bias = self.norm == "none"

        def pw(h, name, act=True):
            h = nn.Dense(half, use_bias=bias, dtype=self.dtype, name=name)(h)
            h = Norm(self.norm, self.dtype, name=f"{name}_norm")(h)
            return nn.relu(h) if act else h

        def dw(h, name):
            h = StridedDepthwise(3, self.strides, dtype=self.dtype, name=name)(h)
            return Norm(self.norm, self.dtype, name=f"{name}_norm")(h)

        if self.strides == 1:
            x1, x2 = x[..., :half], x[..., half:]
        else:
            x1 = pw(dw(x, "branch1_dw"), "branch1_pw")
            x2 = x
        y = pw(x2, "branch2_pw1")
        y = dw(y, "branch2_dw")
        y = pw(y, "branch2_pw2")
        return channel_shuffle(jnp.concatenate([x1, y], axis=-1), 2)


class ShuffleNetV2UNet(nn.Module):
    """ShuffleNetV2-UNet. Input `[B, *S, in_channels]` (any S) -> logits `[B, *S, num_classes]` f32."""

    dims: int
    in_channels: int
    num_classes: int
    stage_features: tuple[int, ...] = (
        48,
        96,
        192,
    )  # out channels per stage (0.5x; 1.0x: 116, 232, 464)
    stage_repeats: tuple[int, ...] = (4, 8, 4)  # units per stage (the first downsamples)
    stem_features: int = 24  # stride-2 stem conv
    full_res_features: int = 8  # the full-resolution skip conv
    decoder_features: tuple[int, ...] | None = (
        None  # per skip, full res first; None = skip channels
    )
    norm: str = "instance"  # "instance" | "group" | "layer" | "none"
    dtype: Dtype = jnp.float32  # compute dtype; params stay float32

    def _validate(self):
        if self.dims not in (2, 3):
            raise ConfigError(f"shufflenetv2_unet: dims must be 2 or 3; got {self.dims}.")
        if not self.stage_features or len(self.stage_features) != len(self.stage_repeats):
            raise ConfigError(
                f"shufflenetv2_unet: stage_features {self.stage_features} and stage_repeats "
                f"{self.stage_repeats} need the same, non-zero length."
            )
        if any(f % 2 for f in self.stage_features) or min(self.stage_repeats) < 1:
            raise ConfigError(
                f"shufflenetv2_unet: stage_features must be even (the units split channels in "
                f"half) and stage_repeats >= 1; got {self.stage_features}, {self.stage_repeats}."
            )
        check_norm(self.norm, "shufflenetv2_unet")
        check_decoder_features(
            "shufflenetv2_unet", self.decoder_features, len(self.stage_features) + 2
        )

    @nn.compact
    def __call__(self, x, *, train: bool = False):
        """x `[B, *S, C]` float -> logits `[B, *S, num_classes]` float32."""
        del train
        self._validate()
        check_input(x, model="shufflenetv2_unet", dims=self.dims, in_channels=self.in_channels)
        d = self.dims
        x, shape = pad_to_multiple(x.astype(self.dtype), 2 ** (len(self.stage_features) + 2))
        full_res, x = mobile_stem(
            x, self.full_res_features, self.stem_features, nn.relu, norm=self.norm, dtype=self.dtype
        )
        skips = [full_res, x]
        x = nn.max_pool(x, (3,) * d, strides=(2,) * d, padding="SAME")
        for stage, (f, reps) in enumerate(zip(self.stage_features, self.stage_repeats)):
            skips.append(x)
            for i in range(reps):
                x = ShuffleUnit(
                    f,
                    strides=2 if i == 0 else 1,
                    norm=self.norm,
                    dtype=self.dtype,
                    name=f"stage{stage + 2}_{i}",
                )(x)
        x = UDecoder(self.decoder_features, norm=self.norm, dtype=self.dtype, name="decoder")(
            x, skips
        )
        x = nn.Dense(self.num_classes, dtype=self.dtype, name="head")(x)
        return crop_to(x, shape).astype(jnp.float32)
