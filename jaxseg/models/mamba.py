"""Selective state-space (Mamba) segmenters: U-Mamba (Ma, Li & Wang 2024) and HC-Mamba
(Xu 2024), channels-last, 2D or 3D.

The Mamba block (`MambaBlock`) flattens a feature map `[B, *S, C]` to a sequence of
L = prod(S) tokens (row-major) and runs Mamba's gated selective scan over it in both
directions (forward and on the reversed sequence, as Vision Mamba does: a 1D scan of an
image has no natural direction), then adds a residual. `jaxseg.ops.selective_scan` does the
scan; its `impl` is the model's `scan_impl`.
"""

from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxseg import ops
from jaxseg.errors import ConfigError
from jaxseg.models.layers import (
    ConvNormAct,
    DepthwiseSeparable,
    activation,
    check_input,
    check_norm,
    conv_norm,
    crop_to,
    pad_to_multiple,
)
from jaxseg.models.resunet import ResBlock

Dtype = Any
MIXERS = ("mamba", "identity", "conv")
VARIANTS = ("bot", "enc")


def _dt_bias_init(dt_min: float, dt_max: float):
    """Mamba's delta bias: softplus(bias) = dt, dt log-uniform in [dt_min, dt_max]."""

    def init(key, shape, dtype=jnp.float32):
        u = jax.random.uniform(key, shape, jnp.float32)
        dt = jnp.exp(u * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min))
        return (dt + jnp.log(-jnp.expm1(-dt))).astype(dtype)  # inverse softplus

    return init


def _a_log_init(key, shape, dtype=jnp.float32):
    """S4D-real: A = -(1, 2, ..., N) for every channel, stored as log."""
    del key
    return jnp.broadcast_to(jnp.log(jnp.arange(1, shape[1] + 1, dtype=dtype)), shape)


def causal_conv1d(x, kernel, bias):
    """Depthwise causal 1D convolution `[B, L, E]` with `kernel` `[K, E]` (tap K-1 is the
    current token), as K shifted multiply-adds: XLA:CPU runs grouped convolutions ~10x slower."""
    k, length = kernel.shape[0], x.shape[1]
    xp = jnp.pad(x, ((0, 0), (k - 1, 0), (0, 0)))
    out = sum(xp[:, i : i + length] * kernel[i] for i in range(k))
    return out + bias


class SelectiveSSM(nn.Module):
    """One direction of the Mamba block: `[B, L, E]` -> `[B, L, E]`.

    causal depthwise conv (k = `conv_kernel`) -> SiLU -> x-dependent (delta, B, C) ->
    selective scan with A = -exp(A_log), skip D."""

    state_size: int = 16
    dt_rank: int = 1
    conv_kernel: int = 4
    chunk: int = ops.scan.DEFAULT_CHUNK
    scan_impl: str = "auto"
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        e, n, r = x.shape[-1], self.state_size, self.dt_rank
        conv_init = nn.initializers.variance_scaling(1 / 3, "fan_in", "uniform", 0, 1)
        kernel = self.param("conv_kernel", conv_init, (self.conv_kernel, e))
        bias = self.param("conv_bias", nn.initializers.zeros, (e,))
        x = nn.silu(causal_conv1d(x, kernel.astype(self.dtype), bias.astype(self.dtype)))
        dbc = nn.Dense(r + 2 * n, use_bias=False, dtype=self.dtype, name="x_proj")(x)
        dt, b, c = jnp.split(dbc, [r, r + n], axis=-1)
        dt_std = r**-0.5
        delta = nn.Dense(
            e,
            dtype=self.dtype,
            kernel_init=nn.initializers.uniform(2 * dt_std),
            bias_init=_dt_bias_init(1e-3, 0.1),
            name="dt_proj",
        )(dt)
        delta = nn.softplus(delta.astype(jnp.float32))
        a = -jnp.exp(self.param("A_log", _a_log_init, (e, n)))
        d = self.param("D", nn.initializers.ones, (e,))
        y = ops.selective_scan(x, delta, a, b, c, d, impl=self.scan_impl, chunk=self.chunk)
        return y.astype(self.dtype)


class MambaBlock(nn.Module):
    """Bidirectional Mamba block with a residual: `[B, *S, C]` -> `[B, *S, C]`.

    LayerNorm -> in-projection to 2E (x and gate z, E = expand * C) -> for each direction
    (the row-major token sequence and its reverse; separate conv, projections, A and D per
    direction, shared in- and out-projections, as Vision Mamba) a `SelectiveSSM` -> mean of
    the two -> times SiLU(z) -> out-projection to C -> + input.

    Args:
      state_size: N, the state per channel (Mamba: 16).
      expand: E / C (Mamba: 2).
      dt_rank: rank of delta's projection; None -> ceil(C / 16) (Mamba).
      conv_kernel: the causal depthwise conv's length (Mamba: 4).
      chunk, scan_impl: passed to `jaxseg.ops.selective_scan`.

    Examples::

        >>> block = MambaBlock()
        >>> x = jnp.zeros((2, 16, 16, 32))
        >>> variables = block.init(jax.random.key(0), x)
        >>> block.apply(variables, x).shape
        (2, 16, 16, 32)
    """

    state_size: int = 16
    expand: int = 2
    dt_rank: int | None = None
    conv_kernel: int = 4
    chunk: int = ops.scan.DEFAULT_CHUNK
    scan_impl: str = "auto"
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        b, c = x.shape[0], x.shape[-1]
        e = self.expand * c
        seq = nn.LayerNorm(epsilon=1e-5, dtype=self.dtype, name="norm")(x.reshape(b, -1, c))
        xz = nn.Dense(2 * e, use_bias=False, dtype=self.dtype, name="in_proj")(seq)
        xi, z = jnp.split(xz, 2, axis=-1)
        ssm = dict(
            state_size=self.state_size,
            dt_rank=self.dt_rank or math.ceil(c / 16),
            conv_kernel=self.conv_kernel,
            chunk=self.chunk,
            scan_impl=self.scan_impl,
            dtype=self.dtype,
        )
        fwd = SelectiveSSM(**ssm, name="forward")(xi)
        bwd = SelectiveSSM(**ssm, name="backward")(xi[:, ::-1])[:, ::-1]
        y = 0.5 * (fwd + bwd) * nn.silu(z)
        out = nn.Dense(c, use_bias=False, dtype=self.dtype, name="out_proj")(y)
        return x + out.reshape(x.shape).astype(x.dtype)


def _check_mamba_fields(m, name: str) -> None:
    if m.dims not in (2, 3):
        raise ConfigError(f"{name}: dims must be 2 or 3; got {m.dims}.")
    if len(m.features) < 2:
        raise ConfigError(f"{name}: features needs at least 2 levels; got {m.features}.")
    for key in ("blocks_per_level", "state_size", "expand", "conv_kernel", "chunk"):
        val = getattr(m, key)
        if not isinstance(val, int) or isinstance(val, bool) or val < 1:
            raise ConfigError(f"{name}: {key} must be an int >= 1; got {val!r}.")
    if m.dt_rank is not None and (not isinstance(m.dt_rank, int) or m.dt_rank < 1):
        raise ConfigError(
            f"{name}: dt_rank must be None (ceil(C / 16)) or >= 1; got {m.dt_rank!r}."
        )
    if m.scan_impl not in ("auto", *ops.SCAN_IMPLS):
        raise ConfigError(
            f"{name}: scan_impl must be one of {', '.join(map(repr, ('auto', *ops.SCAN_IMPLS)))}; "
            f"got {m.scan_impl!r}."
        )
    check_norm(m.norm, name)


def _mamba_args(m) -> dict:
    keys = ("state_size", "expand", "dt_rank", "conv_kernel", "chunk", "scan_impl", "dtype")
    return {k: getattr(m, k) for k in keys}


def _segment(m, x, name: str):
    """The U-Net frame both models share, called from `m`'s compact `__call__`: pad, the
    encoder levels `m._encoder_level(x, level)` (skips), then per level, deepest first, a 2x
    transposed conv -> concat skip -> `ResBlock`, the 1x1 head, crop.
    `[B, *S, in_channels]` -> logits `[B, *S, num_classes]` float32."""
    m._validate()
    check_input(x, model=name, dims=m.dims, in_channels=m.in_channels)
    x, shape = pad_to_multiple(x.astype(m.dtype), 2 ** (len(m.features) - 1))
    skips = []
    for level in range(len(m.features)):
        x = m._encoder_level(x, level)
        skips.append(x)
    d, blk = m.dims, dict(norm=m.norm, dtype=m.dtype)
    res_block = nn.remat(ResBlock) if m.remat else ResBlock
    for level in reversed(range(len(m.features) - 1)):
        f = m.features[level]
        x = nn.ConvTranspose(f, (2,) * d, strides=(2,) * d, dtype=m.dtype, name=f"up{level}")(x)
        x = jnp.concatenate([x, skips[level]], axis=-1)
        x = res_block(f, **blk, name=f"dec{level}")(x)
    x = nn.Dense(m.num_classes, dtype=m.dtype, name="head")(x)
    return crop_to(x, shape).astype(jnp.float32)


class UMamba(nn.Module):
    """U-Mamba (Ma, Li & Wang 2024): a residual conv U-Net with bidirectional Mamba blocks.

    Encoder level i: `ResBlock(features[i])` (stride 2 for i > 0) + `blocks_per_level - 1`
    more, then the level's mixer if it has one; decoder: 2x transposed conv, concat skip,
    `ResBlock`; head 1x1. Levels with a mixer:
      - variant "bot" (U-Mamba Bot): the bottleneck (deepest level) only;
      - variant "enc" (U-Mamba Enc): every encoder level from `enc_first_level` on. The
        default 1 skips the full-resolution level: its sequence (256^2 = 65536 tokens in 2D,
        96^3 = 884736 in 3D) dominates the scan's cost; U-Mamba Enc's own memory concern.
    `mixer` chooses what the mixer is, for the ablation of the re-run study (U-Mamba Bot and
    the network without Mamba tied on BTCV): "mamba" (`MambaBlock`), "identity" (nothing: no
    parameters) or "conv" (a residual conv block `ResBlock(features[i])`).

    Args:
      dims, in_channels, num_classes: 2 or 3 spatial axes; input `[B, *S, in_channels]` (any
        S: zero-padded at the end to a multiple of 2^(levels-1), logits cropped back) ->
        logits `[B, *S, num_classes]` float32.
      features: channels per level, full resolution first.
      state_size, expand, dt_rank, conv_kernel, chunk, scan_impl: the `MambaBlock`'s.

    Examples::

        >>> net = UMamba(dims=2, in_channels=1, num_classes=3, variant="bot")
        >>> x = jnp.zeros((1, 64, 64, 1))
        >>> variables = net.init(jax.random.key(0), x)
        >>> net.apply(variables, x).shape
        (1, 64, 64, 3)
        >>> UMamba(dims=3, in_channels=1, num_classes=2, variant="enc", mixer="identity")
    """

    dims: int
    in_channels: int
    num_classes: int
    variant: str = "bot"  # "bot": Mamba at the bottleneck | "enc": after each encoder level
    mixer: str = "mamba"  # "mamba" | "identity" | "conv" (ablation)
    features: tuple[int, ...] = (32, 64, 128, 256)
    blocks_per_level: int = 1  # residual units per encoder level (>= 1)
    enc_first_level: int = 1  # variant "enc": the first level with a mixer (0 = all)
    state_size: int = 16  # N (Mamba)
    expand: int = 2  # E / C (Mamba)
    dt_rank: int | None = None  # None -> ceil(C / 16) (Mamba)
    conv_kernel: int = 4  # the Mamba block's causal depthwise conv
    chunk: int = ops.scan.DEFAULT_CHUNK  # selective_scan's chunk length ("chunked")
    norm: str = "instance"  # conv blocks' norm: "instance" | "group" | "layer" | "none"
    scan_impl: str = "auto"  # passed to jaxseg.ops.selective_scan
    dtype: Dtype = jnp.float32  # compute dtype; params stay float32
    remat: bool = False  # recompute each block in the backward pass (less memory)

    def mixer_levels(self) -> tuple[int, ...]:
        """The encoder levels followed by a mixer."""
        deepest = len(self.features) - 1
        if self.variant == "bot":
            return (deepest,)
        return tuple(range(self.enc_first_level, deepest + 1))

    def _validate(self):
        n = "umamba"
        _check_mamba_fields(self, n)
        if self.variant not in VARIANTS:
            raise ConfigError(f"{n}: variant must be 'bot' or 'enc'; got {self.variant!r}.")
        if self.mixer not in MIXERS:
            raise ConfigError(
                f"{n}: mixer must be one of {', '.join(map(repr, MIXERS))}; got {self.mixer!r}."
            )
        if not 0 <= self.enc_first_level < len(self.features):
            raise ConfigError(
                f"{n}: enc_first_level must be in 0..{len(self.features) - 1} (a level of "
                f"features); got {self.enc_first_level}."
            )

    def _encoder_level(self, x, level: int):
        f, blk = self.features[level], dict(norm=self.norm, dtype=self.dtype)
        res_block = nn.remat(ResBlock) if self.remat else ResBlock
        x = res_block(f, strides=1 if level == 0 else 2, **blk, name=f"enc{level}_0")(x)
        for i in range(1, self.blocks_per_level):
            x = res_block(f, **blk, name=f"enc{level}_{i}")(x)
        if level not in self.mixer_levels() or self.mixer == "identity":
            return x
        if self.mixer == "conv":
            return res_block(f, **blk, name=f"mixer_conv{level}")(x)
        mamba = nn.remat(MambaBlock) if self.remat else MambaBlock
        return mamba(**_mamba_args(self), name=f"mamba{level}")(x)

    @nn.compact
    def __call__(self, x, *, train: bool = False):
        """x `[B, *S, C]` float -> logits `[B, *S, num_classes]` float32."""
        del train  # no dropout or batch statistics
        return _segment(self, x, "umamba")


class HCBlock(nn.Module):
    """The HC-Mamba block (HC-SSM): `[B, *S, C]` -> `[B, *S, C]`, C even.

    Built from the paper's description (Xu 2024, arXiv 2405.05007): the channels are split
    in two halves; one half goes through the Mamba branch (`MambaBlock`), the other through
    the convolution branch: dense 3^d convolutions with hybrid dilation rates `dilations`
    (1, 2, 3: a wide receptive field without the gridding of equal rates), then a
    depthwise-separable convolution (depthwise 3^d + pointwise). The two halves are
    concatenated and fused by a 1x1 projection + norm (in place of the paper's channel
    shuffle, which a 1x1 over all channels subsumes), plus a residual.
    """

    dilations: tuple[int, ...] = (1, 2, 3)
    norm: str = "instance"
    mamba: dict | None = None  # MambaBlock fields
    depthwise_impl: str = "auto"
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        c = x.shape[-1]
        half = c // 2
        xm, xc = x[..., :half], x[..., half:]
        ym = MambaBlock(**(self.mamba or {}), name="mamba")(xm)
        yc = xc
        for i, rate in enumerate(self.dilations):
            yc = conv_norm(
                yc,
                c - half,
                dilation=rate,
                norm=self.norm,
                dtype=self.dtype,
                conv_name=f"dilated{i}",
                norm_name=f"dilated{i}_norm",
            )
            yc = activation(yc, "gelu")
        yc = DepthwiseSeparable(
            c - half, norm=self.norm, depthwise_impl=self.depthwise_impl, dtype=self.dtype
        )(yc)
        y = nn.Dense(c, use_bias=False, dtype=self.dtype, name="fuse")(
            jnp.concatenate([ym, yc], axis=-1)
        )
        return x + y


class HCMamba(nn.Module):
    """HC-Mamba (Xu 2024): a U-Net whose encoder levels are `HCBlock`s (Mamba beside dilated
    and depthwise-separable convolutions).

    Encoder level 0: two dense 3^d conv + norm + LeakyReLU (full resolution, no Mamba);
    level i > 0: a stride-2 conv + norm + act to features[i], then `blocks_per_level`
    `HCBlock`s (from `hc_first_level` on; `ResBlock`s below it). Decoder: 2x transposed conv,
    concat skip, `ResBlock`; head 1x1. The paper's network is VM-UNet-shaped (patch
    embedding, HC-SSM blocks in encoder and decoder); this keeps the jaxseg U-Net frame so
    that it compares with `umamba` and `unet` under the same budget.

    Args:
      dims, in_channels, num_classes: input `[B, *S, in_channels]` (any S) -> logits
        `[B, *S, num_classes]` float32.
      features: channels per level (even from `hc_first_level` on: the HC block halves them).
      dilations: the conv branch's dilation rates (hybrid dilated convolution).
      state_size, expand, dt_rank, conv_kernel, chunk, scan_impl: the `MambaBlock`'s.
      depthwise_impl: passed to `jaxseg.ops.depthwise_conv`.

    Examples::

        >>> net = HCMamba(dims=2, in_channels=1, num_classes=3)
        >>> x = jnp.zeros((1, 64, 64, 1))
        >>> variables = net.init(jax.random.key(0), x)
        >>> net.apply(variables, x).shape
        (1, 64, 64, 3)
    """

    dims: int
    in_channels: int
    num_classes: int
    features: tuple[int, ...] = (32, 64, 128, 256)
    blocks_per_level: int = 1  # HC blocks per encoder level (>= 1)
    hc_first_level: int = 1  # the first level of HC blocks (level 0 is 256^2 / 96^3 tokens)
    dilations: tuple[int, ...] = (1, 2, 3)  # the conv branch's dilation rates
    state_size: int = 16  # N (Mamba)
    expand: int = 2  # E / C (Mamba)
    dt_rank: int | None = None  # None -> ceil(C / 16) (Mamba)
    conv_kernel: int = 4  # the Mamba branch's causal depthwise conv
    chunk: int = ops.scan.DEFAULT_CHUNK  # selective_scan's chunk length ("chunked")
    norm: str = "instance"  # "instance" | "group" | "layer" | "none"
    scan_impl: str = "auto"  # passed to jaxseg.ops.selective_scan
    depthwise_impl: str = "auto"  # passed to jaxseg.ops.depthwise_conv
    dtype: Dtype = jnp.float32  # compute dtype; params stay float32
    remat: bool = False  # recompute each block in the backward pass (less memory)

    def _validate(self):
        n = "hcmamba"
        _check_mamba_fields(self, n)
        if not 1 <= self.hc_first_level < len(self.features):
            raise ConfigError(
                f"{n}: hc_first_level must be in 1..{len(self.features) - 1}; got "
                f"{self.hc_first_level}."
            )
        odd = [f for f in self.features[self.hc_first_level :] if f % 2]
        if odd or not self.dilations or min(self.dilations) < 1:
            raise ConfigError(
                f"{n}: features from hc_first_level on must be even (the HC block splits them "
                f"in half) and dilations ints >= 1; got features={self.features}, "
                f"dilations={self.dilations}."
            )

    def _encoder_level(self, x, level: int):
        f, blk = self.features[level], dict(norm=self.norm, dtype=self.dtype)
        x = ConvNormAct(f, 3, strides=1 if level == 0 else 2, **blk, name=f"enc{level}_in")(x)
        hc_block = nn.remat(HCBlock) if self.remat else HCBlock
        res_block = nn.remat(ResBlock) if self.remat else ResBlock
        for i in range(self.blocks_per_level):
            name = f"enc{level}_{i}"
            if level == 0:
                x = ConvNormAct(f, 3, **blk, name=name)(x)
            elif level >= self.hc_first_level:
                mamba = _mamba_args(self)
                x = hc_block(
                    self.dilations,
                    mamba=mamba,
                    depthwise_impl=self.depthwise_impl,
                    **blk,
                    name=name,
                )(x)
            else:
                x = res_block(f, **blk, name=name)(x)
        return x

    @nn.compact
    def __call__(self, x, *, train: bool = False):
        """x `[B, *S, C]` float -> logits `[B, *S, num_classes]` float32."""
        del train  # no dropout or batch statistics
        return _segment(self, x, "hcmamba")
