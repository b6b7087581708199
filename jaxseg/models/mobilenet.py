"""MobileNetV3-UNet: a U-shaped net with a MobileNetV3 encoder (Howard et al. 2019,
"Searching for MobileNetV3"), channels-last, 2D or 3D.

Encoder (strides relative to the input):

  full-res  conv3 -> norm -> hard-swish, `full_res_features` channels   (1/1, skip)
  stem      conv3 stride 2 -> norm -> hard-swish, `stem_features`         (1/2, skip)
  blocks    inverted residuals from the `blocks` table (MobileNetV3-Small by default);
            the output just before each stride-2 block is a skip, the last output is the
            bottom of the U
  decoder   deepest first: 2x transposed conv -> concat skip -> conv3 -> norm -> ReLU
            (`UDecoder`, shared with shufflenetv2_unet)
  head      1x1 conv -> num_classes

Inverted residual (MobileNetV2/V3): 1x1 expand -> norm -> act, depthwise kxk (stride s) ->
norm -> act, optional squeeze-excite, 1x1 project -> norm; identity residual when s = 1 and
the channel count is kept. act is ReLU or hard-swish, x * relu6(x + 3) / 6. Squeeze-excite:
global mean -> 1x1 (C_exp / 4, rounded to a multiple of 8) -> ReLU -> 1x1 (C_exp) ->
hard-sigmoid relu6(x + 3) / 6 -> scale the channels.

Depthwise convs go through `jaxseg.ops.depthwise_conv` (XLA:CPU's grouped conv is ~10x
slower; see DESIGN speed facts). That op is stride 1 only, so a **strided depthwise conv
is computed as the stride-1 'SAME' depthwise conv, then subsampled** (`y[:, ::s, ::s]`).
With an odd kernel k this is exactly a stride-s depthwise conv with symmetric padding k//2
(PyTorch's MobileNet convention) and keeps the work depthwise-shaped; it costs s^d times
the (cheap) depthwise FLOPs of those few blocks only. The alternative, a dense strided
conv, would multiply the parameters and FLOPs of those blocks by C.

Norm: params only (no BatchNorm), instance norm by default. Any spatial shape: zero-padded
at the end to a multiple of the total stride (2 x 2^(stride-2 blocks)), logits cropped back.
The squeeze-excite means (like the norms) then run over the padded map, zeros included, as
any convnet sees its padding; a shape already divisible by the stride is unaffected.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from jaxseg.errors import ConfigError
from jaxseg.models.layers import (
    ConvNormAct,
    DepthwiseConv,
    Norm,
    check_input,
    check_norm,
    conv_norm,
    crop_to,
    pad_to_multiple,
)

Dtype = Any

# MobileNetV3-Small (Howard et al. 2019, Table 2), without the final 1x1/pool classifier:
# (kernel, expanded channels, out channels, squeeze-excite 0/1, "relu" | "hswish", stride)
MOBILENETV3_SMALL = (
    (3, 16, 16, 1, "relu", 2),
    (3, 72, 24, 0, "relu", 2),
    (3, 88, 24, 0, "relu", 1),
    (5, 96, 40, 1, "hswish", 2),
    (5, 240, 40, 1, "hswish", 1),
    (5, 240, 40, 1, "hswish", 1),
    (5, 120, 48, 1, "hswish", 1),
    (5, 144, 48, 1, "hswish", 1),
    (5, 288, 96, 1, "hswish", 2),
    (5, 576, 96, 1, "hswish", 1),
    (5, 576, 96, 1, "hswish", 1),
)


def hard_sigmoid(x):
    """relu6(x + 3) / 6."""
    return jnp.clip(x + 3.0, 0.0, 6.0) / 6.0


def hard_swish(x):
    """x * relu6(x + 3) / 6 (MobileNetV3)."""
    return x * hard_sigmoid(x)


def _act(x, act: str):
    if act == "relu":
        return nn.relu(x)
    if act == "hswish":
        return hard_swish(x)
    raise ConfigError(
        f"mobilenetv3_unet: unknown block activation {act!r}; use 'relu' or 'hswish'."
    )


def make_divisible(v: float, divisor: int = 8) -> int:
    """Round to a multiple of `divisor`, not below 90% of v (MobileNet's channel rounding)."""
    out = max(divisor, int(v + divisor / 2) // divisor * divisor)
    return out + divisor if out < 0.9 * v else out


def mobile_stem(x, full_res_features: int, stem_features: int, act, *, norm: str, dtype):
    """The mobile U-Nets' input convs: `(skip, y)` with skip = act(norm(conv3(x))) at full
    resolution and y = act(norm(conv3 stride 2 (x))), the stem. Call it inside a compact
    method: the submodules `full_res_conv`, `full_res_norm`, `stem_conv`, `stem_norm` belong
    to the caller."""
    nd = dict(norm=norm, dtype=dtype)
    skip = act(
        conv_norm(x, full_res_features, conv_name="full_res_conv", norm_name="full_res_norm", **nd)
    )
    y = conv_norm(x, stem_features, strides=2, conv_name="stem_conv", norm_name="stem_norm", **nd)
    return skip, act(y)


class StridedDepthwise(nn.Module):
    """Depthwise kxk conv with stride s: `[B, *S, C] -> [B, *S / s, C]` (S a multiple of s).

    The stride-1 'SAME' conv of `jaxseg.ops.depthwise_conv`, subsampled every s-th voxel:
    equal to a stride-s depthwise conv padded k//2 on both sides (odd k). No bias (a norm follows).
    """

    kernel_size: int = 3
    strides: int = 1
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        y = DepthwiseConv(self.kernel_size, use_bias=False, dtype=self.dtype, name="dw")(x)
        if self.strides > 1:
            d = x.ndim - 2
            y = y[(slice(None), *(slice(None, None, self.strides),) * d, slice(None))]
        return y


class SqueezeExcite(nn.Module):
    """Channel attention: `[B, *S, C]` -> x * hard_sigmoid(fc2(relu(fc1(mean_S(x)))))."""

    squeeze: int
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        d = x.ndim - 2
        s = jnp.mean(x, axis=tuple(range(1, d + 1)), keepdims=True)
        s = nn.relu(nn.Dense(self.squeeze, dtype=self.dtype, name="fc1")(s))
        s = hard_sigmoid(nn.Dense(x.shape[-1], dtype=self.dtype, name="fc2")(s))
        return x * s


class InvertedResidual(nn.Module):
    """MobileNetV3 block `[B, *S, C] -> [B, *S / strides, out]` (see the module docstring)."""

    kernel_size: int
    expand: int
    out: int
    se: bool
    act: str
    strides: int
    norm: str = "instance"
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        bias = self.norm == "none"
        h = x
        if self.expand != x.shape[-1]:
            h = nn.Dense(self.expand, use_bias=bias, dtype=self.dtype, name="expand")(h)
            h = _act(Norm(self.norm, self.dtype, name="expand_norm")(h), self.act)
        h = StridedDepthwise(self.kernel_size, self.strides, dtype=self.dtype, name="depthwise")(h)
        h = _act(Norm(self.norm, self.dtype, name="depthwise_norm")(h), self.act)
        if self.se:
            h = SqueezeExcite(make_divisible(self.expand / 4), dtype=self.dtype, name="se")(h)
        h = nn.Dense(self.out, use_bias=bias, dtype=self.dtype, name="project")(h)
        h = Norm(self.norm, self.dtype, name="project_norm")(h)
        if self.strides == 1 and x.shape[-1] == self.out:
            h = x + h
        return h


class UDecoder(nn.Module):
    """U-Net decoder: bottom `[B, *S_L, C]` and skips (full resolution first) -> `[B, *S_0, F_0]`.

    Deepest first, for each skip k: 2x transposed conv to F_k -> concat skip k -> conv3 ->
    norm -> ReLU, with F_k = features[k] (default: the skip's own channel count).
    """

    features: Sequence[int] | None = None
    norm: str = "instance"
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x, skips):
        d = x.ndim - 2
        feats = [s.shape[-1] for s in skips] if self.features is None else list(self.features)
        for k in reversed(range(len(skips))):
            x = nn.ConvTranspose(
                feats[k], (2,) * d, strides=(2,) * d, dtype=self.dtype, name=f"up{k}"
            )(x)
            x = jnp.concatenate([x, skips[k].astype(x.dtype)], axis=-1)
            x = ConvNormAct(
                feats[k], 3, norm=self.norm, act="relu", dtype=self.dtype, name=f"fuse{k}"
            )(x)
        return x


def check_decoder_features(model: str, decoder_features, num_skips: int) -> None:
    if decoder_features is not None and len(decoder_features) != num_skips:
        raise ConfigError(
            f"{model}: decoder_features needs {num_skips} entries (one per skip, full "
            f"resolution first); got {tuple(decoder_features)}. Or leave it None "
            "to use each skip's channel count."
        )


class MobileNetV3UNet(nn.Module):
    """MobileNetV3-UNet. Input `[B, *S, in_channels]` (any S) -> logits `[B, *S, num_classes]` f32."""

    dims: int
    in_channels: int
    num_classes: int
    blocks: tuple[tuple, ...] = MOBILENETV3_SMALL  # (kernel, expand, out, se 0/1, act, stride) rows
    width_mult: float = 1.0  # scales every channel count (rounded to a multiple of 8)
    stem_features: int = 16  # stride-2 stem conv (before width_mult)
    full_res_features: int = 8  # the full-resolution skip conv
    decoder_features: tuple[int, ...] | None = (
        None  # per skip, full res first; None = skip channels
    )
    norm: str = "instance"  # "instance" | "group" | "layer" | "none"
    dtype: Dtype = jnp.float32  # compute dtype; params stay float32

    def _table(self):
        rows = []
        for i, row in enumerate(self.blocks):
            if (
                len(row) != 6
                or row[5] not in (1, 2)
                or row[4] not in ("relu", "hswish")
                or row[0] % 2 == 0
            ):
                raise ConfigError(
                    f"mobilenetv3_unet: blocks[{i}]={tuple(row)} must be (odd kernel, expand, out, se 0/1, "
                    "'relu'|'hswish', stride 1|2)."
                )
            k, e, o, se, act, s = row
            rows.append(
                (
                    int(k),
                    make_divisible(e * self.width_mult),
                    make_divisible(o * self.width_mult),
                    bool(se),
                    act,
                    int(s),
                )
            )
        return rows

    @nn.compact
    def __call__(self, x, *, train: bool = False):
        """x `[B, *S, C]` float -> logits `[B, *S, num_classes]` float32."""
        del train
        if self.dims not in (2, 3):
            raise ConfigError(f"mobilenetv3_unet: dims must be 2 or 3; got {self.dims}.")
        check_norm(self.norm, "mobilenetv3_unet")
        rows = self._table()
        if not rows:
            raise ConfigError("mobilenetv3_unet: blocks is empty.")
        num_down = 1 + sum(r[5] == 2 for r in rows)
        check_decoder_features("mobilenetv3_unet", self.decoder_features, num_down)
        check_input(x, model="mobilenetv3_unet", dims=self.dims, in_channels=self.in_channels)
        x, shape = pad_to_multiple(x.astype(self.dtype), 2**num_down)
        full_res, x = mobile_stem(
            x,
            self.full_res_features,
            make_divisible(self.stem_features * self.width_mult),
            hard_swish,
            norm=self.norm,
            dtype=self.dtype,
        )
        skips = [full_res]
        for i, (k, e, o, se, act, s) in enumerate(rows):
            if s == 2:
                skips.append(x)
            x = InvertedResidual(
                k, e, o, se, act, s, norm=self.norm, dtype=self.dtype, name=f"block{i}"
            )(x)
        x = UDecoder(self.decoder_features, norm=self.norm, dtype=self.dtype, name="decoder")(
            x, skips
        )
        x = nn.Dense(self.num_classes, dtype=self.dtype, name="head")(x)
        return crop_to(x, shape).astype(jnp.float32)
