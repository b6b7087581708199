"""MONAI-style building blocks in Flax (channels-last), shared by SwinUNETR and UNETR.

These reproduce the numerics of MONAI 1.6.1's `UnetResBlock`, `UnetBasicBlock`,
`UnetrBasicBlock`, `UnetrUpBlock`, `UnetrPrUpBlock`, `UnetOutBlock` and `MLPBlock`, and
they are laid out so that a MONAI state-dict key maps to a Flax parameter path by one
mechanical rule (see `jaxseg.models.convert`): the module names are MONAI's attribute
names, and a list index is joined to its list with "_" ("blocks.0.conv1.conv.weight" ->
("blocks_0", "conv1", "conv", "kernel")).

Parameter layouts (the converter relies on them):
  * every convolution (plain or transposed) keeps a kernel `[*k, in, out]` (Flax's layout)
    in a child named "conv", mirroring MONAI's `Convolution` wrapper (`<name>.conv.weight`);
  * Linear layers are `nn.Dense` (`kernel [in, out]`); norms have `scale`/`bias`.

Speed on XLA:CPU (see docs/models.md, "CPU throughput is not TPU throughput"): convolutions
whose kernel equals their stride (patch embeddings, 1x1 heads, MONAI's 2^d transposed
up-convolutions) are computed as one matmul after a space-to-depth / before a depth-to-space
reshape (`jaxseg.models.layers.space_to_depth` / `depth_to_space`), which is exact and much
faster than `conv_general_dilated`; other convolutions use `lax.conv_general_dilated`.
"""

from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxseg import ops
from jaxseg.errors import ConfigError
from jaxseg.models.layers import depth_to_space, space_to_depth

Dtype = Any
# PyTorch's default epsilon for LayerNorm, InstanceNorm and GroupNorm.
EPS = 1e-5


# --------------------------------------------------------------------------- norm names


def parse_norm_name(norm_name, where: str) -> tuple[str, dict]:
    """MONAI's `norm_name` (a name, or `(name, {args})`) -> `(kind, args)`.

    Supported: "instance" (`affine` False by default, as torch's InstanceNorm), "group"
    (needs `num_groups`; `affine` True by default), "layer" is not, and "batch" is refused:
    jaxseg models carry no mutable state (no running statistics).
    """
    args: dict = {}
    if isinstance(norm_name, (tuple, list)):
        if len(norm_name) != 2 or not isinstance(norm_name[1], dict):
            raise ConfigError(
                f"{where}: norm_name must be a name or (name, {{args}}); got {norm_name!r}."
            )
        norm_name, args = norm_name[0], dict(norm_name[1])
    if not isinstance(norm_name, str):
        raise ConfigError(f"{where}: norm_name must be a string; got {norm_name!r}.")
    kind = norm_name.lower()
    if kind == "instance_nvfuser":  # MONAI's fused alias: same maths
        kind = "instance"
    allowed = {
        "instance": {"affine", "eps", "track_running_stats", "momentum"},
        "group": {"num_groups", "affine", "eps"},
    }
    if kind not in allowed:
        raise ConfigError(
            f"{where}: norm_name={norm_name!r} is not supported; use 'instance', "
            "('instance', {'affine': True}) or ('group', {'num_groups': G}). Batch norm is "
            "not available because jaxseg models hold no running statistics."
        )
    unknown = set(args) - allowed[kind]
    if unknown:
        raise ConfigError(
            f"{where}: unknown {kind} norm argument(s) {sorted(unknown)}; valid: {sorted(allowed[kind])}."
        )
    if args.get("track_running_stats"):
        raise ConfigError(f"{where}: track_running_stats=True needs mutable state; not supported.")
    if kind == "group" and "num_groups" not in args:
        raise ConfigError(
            f"{where}: group norm needs num_groups, e.g. ('group', {{'num_groups': 8}})."
        )
    return kind, args


def freeze_norm_name(norm_name):
    """A hashable form of `norm_name` (Flax module fields must be hashable)."""
    if (
        isinstance(norm_name, (tuple, list))
        and len(norm_name) == 2
        and isinstance(norm_name[1], dict)
    ):
        return (norm_name[0], tuple(sorted(norm_name[1].items())))
    if (
        isinstance(norm_name, (tuple, list))
        and len(norm_name) == 2
        and isinstance(norm_name[1], tuple)
    ):
        return (norm_name[0], tuple(norm_name[1]))
    return norm_name


def _thaw_norm_name(norm_name):
    if isinstance(norm_name, tuple) and len(norm_name) == 2 and isinstance(norm_name[1], tuple):
        return (norm_name[0], dict(norm_name[1]))
    return norm_name


def make_norm(norm_name, name: str, dtype: Dtype = jnp.float32):
    """The norm module MONAI's `get_norm_layer(norm_name)` builds, named `name` (channels-last)."""
    kind, args = parse_norm_name(_thaw_norm_name(norm_name), name)
    eps = float(args.get("eps", EPS))
    if kind == "instance":
        affine = bool(args.get("affine", False))
        # Instance norm = group norm with one channel per group (biased variance, as torch).
        return nn.GroupNorm(
            num_groups=None,
            group_size=1,
            epsilon=eps,
            use_scale=affine,
            use_bias=affine,
            use_fast_variance=False,
            dtype=dtype,
            name=name,
        )
    affine = bool(args.get("affine", True))
    return nn.GroupNorm(
        num_groups=int(args["num_groups"]),
        epsilon=eps,
        use_scale=affine,
        use_bias=affine,
        use_fast_variance=False,
        dtype=dtype,
        name=name,
    )


def layer_norm(name: str, dtype: Dtype = jnp.float32, use_affine: bool = True):
    """torch.nn.LayerNorm(C) over the last axis (eps 1e-5, exact two-pass variance)."""
    return nn.LayerNorm(
        epsilon=EPS,
        use_fast_variance=False,
        use_scale=use_affine,
        use_bias=use_affine,
        dtype=dtype,
        name=name,
    )


def gelu(x):
    """torch.nn.GELU(): the exact erf form (Flax's default is the tanh approximation)."""
    return nn.gelu(x, approximate=False)


def leaky_relu(x):
    """MONAI's default `act_name` in UnetResBlock/UnetBasicBlock: LeakyReLU(0.01)."""
    return nn.leaky_relu(x, 0.01)


def _tuple(v, d: int) -> tuple[int, ...]:
    return (int(v),) * d if isinstance(v, (int, np.integer)) else tuple(int(i) for i in v)


# --------------------------------------------------------------------------- convolutions


def _torch_bias_init(fan_in: int):
    """torch's default conv bias init: U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
    bound = 1.0 / math.sqrt(fan_in)

    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


class Conv(nn.Module):
    """A d-dimensional convolution with MONAI's padding `(k - s + 1) // 2` (channels-last).

    Params: `kernel [*k, in, out]`, `bias [out]` if `use_bias`. `[B, *S, in] -> [B, *S', out]`.
    """

    features: int
    kernel_size: Any = 3
    strides: Any = 1
    use_bias: bool = False
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        d, cin = x.ndim - 2, x.shape[-1]
        k, s = _tuple(self.kernel_size, d), _tuple(self.strides, d)
        fan_in = math.prod(k) * cin
        kernel = self.param(
            "kernel",
            nn.initializers.variance_scaling(
                1.0 / 3.0, "fan_in", "uniform", in_axis=tuple(range(d + 1)), out_axis=-1
            ),
            (*k, cin, self.features),
        )
        kernel = kernel.astype(self.dtype)
        x = x.astype(self.dtype)
        if k == s and all(n % w == 0 for n, w in zip(x.shape[1:-1], k)):
            # Non-overlapping (1x1, patch embedding): one matmul, exact.
            # space_to_depth's channel order (offset_1, ..., offset_d, C) is the kernel
            # [*k, C, out] flattened to [prod(k) * C, out], so this is the convolution.
            xs = space_to_depth(x, k) if math.prod(k) > 1 else x
            y = xs @ kernel.reshape(-1, self.features)
        else:
            pad = [((kk - ss + 1) // 2,) * 2 for kk, ss in zip(k, s)]
            dn = ("NHWC", "HWIO", "NHWC") if d == 2 else ("NDHWC", "DHWIO", "NDHWC")
            y = jax.lax.conv_general_dilated(x, kernel, s, pad, dimension_numbers=dn)
        if self.use_bias:
            bias = self.param("bias", _torch_bias_init(fan_in), (self.features,))
            y = y + bias.astype(self.dtype)
        return y


class ConvTranspose(nn.Module):
    """torch's ConvTranspose with kernel == stride (MONAI's 2^d up-convolutions), no bias.

    Params: `kernel [*k, in, out]` (torch's `[in, out, *k]` permuted). Each input voxel
    writes its own k-block of the output, so this is a matmul then `depth_to_space`, exactly.
    `[B, *S, in] -> [B, *(S * k), out]`.
    """

    features: int
    kernel_size: Any = 2
    strides: Any = 2
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        d, cin = x.ndim - 2, x.shape[-1]
        k, s = _tuple(self.kernel_size, d), _tuple(self.strides, d)
        if k != s:
            raise ConfigError(
                f"ConvTranspose: only kernel_size == stride is supported; got {k} and {s}."
            )
        kernel = self.param(
            "kernel",
            nn.initializers.variance_scaling(
                1.0 / 3.0, "fan_in", "uniform", in_axis=tuple(range(d + 1)), out_axis=-1
            ),
            (*k, cin, self.features),
        )
        # [*k, in, out] -> [in, *k, out] -> [in, prod(k) * out]: channel order (offsets, out).
        perm = (d, *range(d), d + 1)
        w = kernel.transpose(perm).reshape(cin, -1).astype(self.dtype)
        return depth_to_space(x.astype(self.dtype) @ w, k)


class MonaiConv(nn.Module):
    """MONAI's `Convolution(conv_only=...)` wrapper: the conv lives in a child named "conv"
    (state-dict key `<name>.conv.weight`). `transposed` selects ConvTranspose."""

    features: int
    kernel_size: Any = 3
    strides: Any = 1
    use_bias: bool = False
    transposed: bool = False
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        if self.transposed:
            return ConvTranspose(
                self.features, self.kernel_size, self.strides, self.dtype, name="conv"
            )(x)
        return Conv(
            self.features, self.kernel_size, self.strides, self.use_bias, self.dtype, name="conv"
        )(x)


# --------------------------------------------------------------------------- UNet(R) blocks


class UnetResBlock(nn.Module):
    """MONAI UnetResBlock: conv-norm-lrelu-conv-norm + (1x1 conv-norm) residual, then lrelu.

    `[B, *S, in] -> [B, *S / stride, out_channels]`. The 1x1 residual projection (conv3,
    norm3) exists when the channel count or the stride changes, as in MONAI.
    """

    out_channels: int
    kernel_size: Any = 3
    stride: Any = 1
    norm_name: Any = "instance"
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        d = x.ndim - 2
        down = x.shape[-1] != self.out_channels or any(s != 1 for s in _tuple(self.stride, d))
        y = MonaiConv(
            self.out_channels, self.kernel_size, self.stride, dtype=self.dtype, name="conv1"
        )(x)
        y = leaky_relu(make_norm(self.norm_name, "norm1", self.dtype)(y))
        y = MonaiConv(self.out_channels, self.kernel_size, 1, dtype=self.dtype, name="conv2")(y)
        y = make_norm(self.norm_name, "norm2", self.dtype)(y)
        res = x
        if down:
            res = MonaiConv(self.out_channels, 1, self.stride, dtype=self.dtype, name="conv3")(x)
            res = make_norm(self.norm_name, "norm3", self.dtype)(res)
        return leaky_relu(y + res)


class UnetBasicBlock(nn.Module):
    """MONAI UnetBasicBlock: (conv-norm-lrelu) twice. `[B, *S, in] -> [B, *S / stride, out]`."""

    out_channels: int
    kernel_size: Any = 3
    stride: Any = 1
    norm_name: Any = "instance"
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        y = MonaiConv(
            self.out_channels, self.kernel_size, self.stride, dtype=self.dtype, name="conv1"
        )(x)
        y = leaky_relu(make_norm(self.norm_name, "norm1", self.dtype)(y))
        y = MonaiConv(self.out_channels, self.kernel_size, 1, dtype=self.dtype, name="conv2")(y)
        return leaky_relu(make_norm(self.norm_name, "norm2", self.dtype)(y))


def _conv_block(res_block: bool, out_channels, kernel_size, stride, norm_name, dtype, name):
    cls = UnetResBlock if res_block else UnetBasicBlock
    return cls(out_channels, kernel_size, stride, norm_name, dtype, name=name)


class UnetrBasicBlock(nn.Module):
    """MONAI UnetrBasicBlock: a UnetResBlock or UnetBasicBlock in a child named "layer"."""

    out_channels: int
    kernel_size: Any = 3
    stride: Any = 1
    norm_name: Any = "instance"
    res_block: bool = False
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        return _conv_block(
            self.res_block,
            self.out_channels,
            self.kernel_size,
            self.stride,
            self.norm_name,
            self.dtype,
            "layer",
        )(x)


class UnetrUpBlock(nn.Module):
    """MONAI UnetrUpBlock: transposed conv (kernel = stride = upsample_kernel_size), concat
    the skip (up first), then a res/basic block. `inp [B, *S, in]`, `skip [B, *S*k, out]`
    -> `[B, *S*k, out_channels]`."""

    out_channels: int
    kernel_size: Any = 3
    upsample_kernel_size: Any = 2
    norm_name: Any = "instance"
    res_block: bool = False
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, inp, skip):
        up = MonaiConv(
            self.out_channels,
            self.upsample_kernel_size,
            self.upsample_kernel_size,
            transposed=True,
            dtype=self.dtype,
            name="transp_conv",
        )(inp)
        x = jnp.concatenate([up, skip.astype(up.dtype)], axis=-1)
        return _conv_block(
            self.res_block,
            self.out_channels,
            self.kernel_size,
            1,
            self.norm_name,
            self.dtype,
            "conv_block",
        )(x)


class UnetrPrUpBlock(nn.Module):
    """MONAI UnetrPrUpBlock: transposed conv, then `num_layer` x (transposed conv [+ res/basic
    block when conv_block]). `[B, *S, in] -> [B, *S * k^(num_layer+1), out_channels]`."""

    out_channels: int
    num_layer: int
    kernel_size: Any = 3
    stride: Any = 1
    upsample_kernel_size: Any = 2
    norm_name: Any = "instance"
    conv_block: bool = False
    res_block: bool = False
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        up = dict(
            features=self.out_channels,
            kernel_size=self.upsample_kernel_size,
            strides=self.upsample_kernel_size,
            transposed=True,
            dtype=self.dtype,
        )
        x = MonaiConv(**up, name="transp_conv_init")(x)
        for i in range(self.num_layer):
            if self.conv_block:
                # MONAI: blocks[i] = Sequential(transposed conv, block) -> keys blocks.i.0 / blocks.i.1
                x = MonaiConv(**up, name=f"blocks_{i}_0")(x)
                x = _conv_block(
                    self.res_block,
                    self.out_channels,
                    self.kernel_size,
                    self.stride,
                    self.norm_name,
                    self.dtype,
                    f"blocks_{i}_1",
                )(x)
            else:
                x = MonaiConv(**up, name=f"blocks_{i}")(x)
        return x


class UnetOutBlock(nn.Module):
    """MONAI UnetOutBlock: a 1x1 conv with bias (child "conv"). `[B, *S, in] -> [B, *S, out]`."""

    out_channels: int
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        return MonaiConv(self.out_channels, 1, 1, use_bias=True, dtype=self.dtype, name="conv")(x)


# --------------------------------------------------------------------------- transformer parts

_dense_init = nn.initializers.truncated_normal(0.02)


class MLPBlock(nn.Module):
    """MONAI MLPBlock: linear1 -> GELU (exact) -> dropout -> linear2 -> dropout. `[..., C] -> [..., C]`.

    MONAI's "vit" and "swin" dropout modes differ only in module identity (the same rate
    is applied at the same two places), so one implementation serves both.
    """

    hidden_size: int
    mlp_dim: int
    dropout_rate: float = 0.0
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x, *, train: bool = False):
        mlp_dim = self.mlp_dim or self.hidden_size
        y = gelu(nn.Dense(mlp_dim, dtype=self.dtype, kernel_init=_dense_init, name="linear1")(x))
        y = nn.Dropout(self.dropout_rate, deterministic=not train)(y)
        y = nn.Dense(self.hidden_size, dtype=self.dtype, kernel_init=_dense_init, name="linear2")(y)
        return nn.Dropout(self.dropout_rate, deterministic=not train)(y)


def attention(
    module: nn.Module,
    q,
    k,
    v,
    bias=None,
    mask=None,
    *,
    dropout_rate: float = 0.0,
    train: bool = False,
    impl: str = "auto",
):
    """Multi-head attention `[W, H, N, D] -> [W, H, N, D]`; q must already be scaled.

    Goes through `jaxseg.ops.window_attention`. When training with `dropout_rate > 0`
    (MONAI's attn_drop / ViT dropout on the attention matrix) the dropout is applied to the
    f32 softmax weights through the op's `weights_fn` hook, as torch applies it; that hook
    exists on the XLA path only, so those calls run on XLA whatever `impl` says (as MONAI
    training with attention dropout always has). `module` supplies the "dropout" rng.
    """
    if not train or dropout_rate <= 0.0:
        return ops.window_attention(q, k, v, bias, mask, impl=impl)
    keep = 1.0 - dropout_rate

    def dropout(probs):
        drop = jax.random.bernoulli(module.make_rng("dropout"), keep, probs.shape)
        return jnp.where(drop, probs / keep, 0.0)

    return ops.window_attention(q, k, v, bias, mask, impl="xla", weights_fn=dropout)
