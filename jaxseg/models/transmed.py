"""TransMed: a U-Net with axial attention and dynamic convolution, 2D or 3D.

Layout (`features` = f_0..f_{n-1}, one encoder level each; level l at stride 2^l):

  encoder  level 0: conv block; level l > 0: strided 3^d conv (2x down), conv block;
           then, at the `axial_levels` (variants "axial", "full"), `axial_depth` axial blocks
  decoder  2x transposed conv, concat the skip, two 3^d conv -> norm -> LeakyReLU
  head     1x1 conv -> num_classes

conv block = two (3^d conv -> norm -> LeakyReLU); at the `dynamic_levels` (variants
"dynamic", "full") both convs are `DynamicConv`s: per sample, the kernel is a softmax
mixture of `num_experts` expert kernels, the mixing weights computed from the globally
average-pooled input (CondConv / DynamicConv).

Axial block (Axial-DeepLab / axial Transformers, channels-last): for each spatial axis in
turn (X, then Y, then Z), x + proj(MHSA along that axis(LN(x))) with a learned relative
position bias over the 2L-1 offsets of that axis (a table of 2*max_len-1 rows; offsets
beyond +-(max_len-1) share the end rows); then x + MLP(LN(x)). Attention along one axis
costs O(S * L) per channel, so a block costs O(HWD(H+W+D)) instead of O((HWD)^2).

Variants (`variant`): "unet" (plain conv blocks), "axial" (TransMed-A: + axial blocks),
"dynamic" (TransMed-D: + dynamic convs), "full" (both).

Any spatial shape: zero-padded at the end to a multiple of 2^(levels-1), logits cropped back.

`remat=True` recomputes each conv block (with its dynamic convs) and each axial block in the
backward pass (`nn.remat`) instead of storing their activations; the parameter tree is the
same either way.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxseg import ops
from jaxseg.errors import ConfigError
from jaxseg.models.layers import (
    ConvNormAct,
    Norm,
    activation,
    check_input,
    check_norm,
    crop_to,
    pad_to_multiple,
)

Dtype = Any
VARIANTS = ("unet", "axial", "dynamic", "full")


# --------------------------------------------------------------------------- dynamic convolution


class DynamicConv(nn.Module):
    """Dynamic convolution `[B, *S, Cin] -> [B, *S, features]` ('SAME', stride 1).

    Routing: global average pool -> Dense(max(Cin // reduction, 4)) -> GELU -> Dense(K)
    -> softmax(/ temperature) gives per-sample weights a `[B, K]` (GELU, not DynamicConv's
    ReLU: with a narrow routing layer every ReLU unit can die on a batch, freezing the
    routing); the sample's kernel is
    sum_k a_k W_k (and bias sum_k a_k b_k), applied by `jaxseg.ops.dynamic_conv`. Mixing kernels
    (K * |W| per sample) is far cheaper than running K convolutions.
    """

    features: int
    kernel_size: int = 3
    num_experts: int = 4
    reduction: int = 4
    temperature: float = 1.0
    use_bias: bool = True
    impl: str = "auto"
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        d, cin = x.ndim - 2, x.shape[-1]
        pooled = jnp.mean(x.astype(jnp.float32), axis=tuple(range(1, d + 1)))
        h = nn.gelu(nn.Dense(max(cin // self.reduction, 4), name="route1")(pooled))
        attn = jax.nn.softmax(
            nn.Dense(self.num_experts, name="route2")(h) / self.temperature, axis=-1
        )  # [B, K]
        kshape = (*(self.kernel_size,) * d, cin, self.features)
        # Each expert initialised like an ordinary conv kernel (fan-in scaling).
        init = nn.initializers.variance_scaling(
            1.0,
            "fan_in",
            "truncated_normal",
            in_axis=tuple(range(1, d + 2)),
            out_axis=-1,
            batch_axis=(0,),
        )
        experts = self.param("experts", init, (self.num_experts, *kshape))
        mixed = jnp.einsum("bk,k...->b...", attn, experts)  # [B, *k, Cin, Cout]
        y = ops.dynamic_conv(x.astype(self.dtype), mixed.astype(self.dtype), impl=self.impl)
        if self.use_bias:
            bias = attn @ self.param(
                "bias", nn.initializers.zeros, (self.num_experts, self.features)
            )
            y = y + bias.reshape(-1, *(1,) * d, self.features).astype(y.dtype)
        return y


# --------------------------------------------------------------------------- axial attention


def relative_offsets(length: int, max_len: int) -> np.ndarray:
    """`[L, L]` rows of a `2 max_len - 1` table: i - j + max_len - 1, clipped to the table."""
    pos = np.arange(length)
    return (np.clip(pos[:, None] - pos[None, :], -(max_len - 1), max_len - 1) + max_len - 1).astype(
        np.int32
    )


class AxialAttention(nn.Module):
    """Multi-head self-attention along spatial axis `axis` of `[B, *S, C]` (an axis of the
    array, 1..d), through `jaxseg.ops.axial_attention`, with a relative position bias."""

    dim: int
    num_heads: int
    axis: int
    max_len: int = 64
    attention_impl: str = "auto"
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        shape = x.shape[1:-1]
        length = x.shape[self.axis]
        hd = self.dim // self.num_heads
        qkv = nn.Dense(3 * self.dim, dtype=self.dtype, name="qkv")(x)
        q, k, v = ops.fold_axis_heads(qkv, self.axis, 3, self.num_heads)  # [R, H, L, hd] each
        table = self.param(
            "relative_position_bias_table",
            nn.initializers.truncated_normal(0.02),
            (2 * self.max_len - 1, self.num_heads),
        )
        bias = jnp.take(table, relative_offsets(length, self.max_len), axis=0).transpose(
            2, 0, 1
        )  # [H, L, L]
        o = ops.axial_attention(
            q * jnp.asarray(hd**-0.5, q.dtype), k, v, bias, impl=self.attention_impl
        )
        o = ops.unfold_axis_heads(o, self.axis, shape)
        return nn.Dense(self.dim, dtype=self.dtype, name="proj")(o)


class AxialBlock(nn.Module):
    """`[B, *S, C] -> [B, *S, C]`: for each spatial axis in turn x + Attn_axis(LN(x)), then
    x + MLP(LN(x)) (pre-norm, GELU MLP of width mlp_ratio * C)."""

    dim: int
    num_heads: int
    mlp_ratio: float = 2.0
    max_len: int = 64
    attention_impl: str = "auto"
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        for axis in range(1, x.ndim - 1):
            h = nn.LayerNorm(epsilon=1e-5, dtype=self.dtype, name=f"norm_axis{axis}")(x)
            x = x + AxialAttention(
                self.dim,
                self.num_heads,
                axis,
                self.max_len,
                self.attention_impl,
                self.dtype,
                name=f"attn_axis{axis}",
            )(h)
        y = nn.LayerNorm(epsilon=1e-5, dtype=self.dtype, name="norm_mlp")(x)
        y = nn.Dense(int(self.dim * self.mlp_ratio), dtype=self.dtype, name="fc1")(y)
        return x + nn.Dense(self.dim, dtype=self.dtype, name="fc2")(nn.gelu(y))


# --------------------------------------------------------------------------- the network


class TransMed(nn.Module):
    """TransMed U-Net (see the module docstring). `[B, *S, in_channels]` -> logits
    `[B, *S, num_classes]` float32."""

    dims: int
    in_channels: int
    num_classes: int
    variant: str = "full"  # "unet" | "axial" | "dynamic" | "full"
    features: tuple[int, ...] = (24, 48, 96, 192)  # channels per encoder level
    axial_levels: tuple[int, ...] | None = None  # levels with axial blocks; None -> the two deepest
    axial_depth: int = 1  # axial blocks per chosen level
    head_dim: int = 32  # attention heads = max(1, channels // head_dim)
    mlp_ratio: float = 2.0  # axial blocks' MLP width / channels
    max_len: int = 64  # relative-bias table covers offsets up to +-(max_len - 1) (longer: clipped)
    dynamic_levels: tuple[int, ...] | None = None  # encoder levels with dynamic convs; None -> all
    num_experts: int = 4  # expert kernels per dynamic conv
    routing_reduction: int = 4  # routing MLP hidden width = max(C_in // this, 4)
    routing_temperature: float = 1.0  # softmax temperature of the expert weights
    # "group" by default, not "instance": instance norm removes every channel's spatial mean,
    # so the global average pool that routes the dynamic convs would carry almost nothing.
    norm: str = "group"  # "instance" | "group" | "layer" | "none"
    attention_impl: str = "auto"  # passed to jaxseg.ops.axial_attention
    dynamic_impl: str = "auto"  # "auto" | "map" | "grouped", see jaxseg.ops.dynamic_conv
    dtype: Dtype = jnp.float32  # compute dtype; params stay float32
    # Recompute each conv block and axial block in the backward pass (nn.remat): less
    # activation memory for 3D volumes, ~1/3 more compute. Same parameters either way.
    remat: bool = False

    def _levels(self, given, default):
        return tuple(default if given is None else given)

    def axial_at(self) -> tuple[int, ...]:
        if self.variant not in ("axial", "full"):
            return ()
        n = len(self.features)
        return self._levels(self.axial_levels, range(max(n - 2, 0), n))

    def dynamic_at(self) -> tuple[int, ...]:
        if self.variant not in ("dynamic", "full"):
            return ()
        return self._levels(self.dynamic_levels, range(len(self.features)))

    def _validate(self):
        if self.dims not in (2, 3):
            raise ConfigError(f"transmed: dims must be 2 or 3; got {self.dims}.")
        if self.variant not in VARIANTS:
            raise ConfigError(
                f"transmed: unknown variant={self.variant!r}; valid values are "
                f"{', '.join(map(repr, VARIANTS))}."
            )
        n = len(self.features)
        if n < 2:
            raise ConfigError(f"transmed: features needs at least 2 levels; got {self.features}.")
        for key, levels in (
            ("axial_levels", self.axial_at()),
            ("dynamic_levels", self.dynamic_at()),
        ):
            bad = [lv for lv in levels if not 0 <= lv < n]
            if bad:
                raise ConfigError(f"transmed: {key} {bad} are not encoder levels 0..{n - 1}.")
        if self.num_experts < 1 or self.max_len < 1 or self.head_dim < 1:
            raise ConfigError(
                "transmed: num_experts, max_len and head_dim must be >= 1; got "
                f"{self.num_experts}, {self.max_len}, {self.head_dim}."
            )
        if self.dynamic_impl not in ("auto", *ops.DYNAMIC_IMPLS):
            raise ConfigError(
                f"transmed: unknown dynamic_impl={self.dynamic_impl!r}; valid values are "
                f"{', '.join(map(repr, ('auto', *ops.DYNAMIC_IMPLS)))}."
            )
        check_norm(self.norm, "transmed")

    def _conv_block(self, x, features, dynamic, name):
        for i in range(2):
            if dynamic:
                x = DynamicConv(
                    features,
                    3,
                    self.num_experts,
                    self.routing_reduction,
                    self.routing_temperature,
                    use_bias=self.norm == "none",
                    impl=self.dynamic_impl,
                    dtype=self.dtype,
                    name=f"{name}_dynconv{i}",
                )(x)
                x = activation(Norm(self.norm, self.dtype, name=f"{name}_norm{i}")(x), "leaky_relu")
            else:
                x = ConvNormAct(
                    features, 3, norm=self.norm, dtype=self.dtype, name=f"{name}_conv{i}"
                )(x)
        return x

    @nn.compact
    def __call__(self, x, *, train: bool = False):
        """x `[B, *S, C]` float -> logits `[B, *S, num_classes]` float32."""
        del train  # no dropout or batch statistics
        self._validate()
        check_input(x, model="transmed", dims=self.dims, in_channels=self.in_channels)
        d = self.dims
        x, shape = pad_to_multiple(x.astype(self.dtype), 2 ** (len(self.features) - 1))
        axial, dynamic = set(self.axial_at()), set(self.dynamic_at())
        # nn.remat keeps the submodule names (the block's own, or the parent's for a method),
        # so checkpoints move between remat on and off. Arguments 2.. of `_conv_block`
        # (features, dynamic, name) are Python values: static.
        conv_block, axial_block = type(self)._conv_block, AxialBlock
        if self.remat:
            conv_block, axial_block = (
                nn.remat(conv_block, static_argnums=(2, 3, 4)),
                nn.remat(AxialBlock),
            )
        skips = []
        for level, f in enumerate(self.features):
            if level > 0:
                x = ConvNormAct(
                    f, 3, strides=2, norm=self.norm, dtype=self.dtype, name=f"down{level}"
                )(x)
            x = conv_block(self, x, f, level in dynamic, f"enc{level}")
            if level in axial:
                for j in range(self.axial_depth):
                    x = axial_block(
                        f,
                        max(1, f // self.head_dim),
                        self.mlp_ratio,
                        self.max_len,
                        self.attention_impl,
                        self.dtype,
                        name=f"enc{level}_axial{j}",
                    )(x)
            skips.append(x)
        for level in reversed(range(len(self.features) - 1)):
            f = self.features[level]
            x = nn.ConvTranspose(
                f, (2,) * d, strides=(2,) * d, dtype=self.dtype, name=f"up{level}"
            )(x)
            x = jnp.concatenate([x, skips[level]], axis=-1)
            x = conv_block(self, x, f, False, f"dec{level}")
        x = nn.Dense(self.num_classes, dtype=self.dtype, name="head")(x)
        return crop_to(x, shape).astype(jnp.float32)
