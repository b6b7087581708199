"""Shared building blocks for jaxseg models (Flax Linen, channels-last, 2D or 3D).

Everything here works for `d = x.ndim - 2` spatial axes, d in {2, 3}. Window helpers are
plain functions (numpy for the static index/mask tables, jnp for arrays) so they can be
tested on their own.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxseg import ops
from jaxseg.errors import ConfigError

Dtype = Any
NORMS = ("instance", "group", "layer", "none")
# Additive mask value for disallowed attention pairs (finite, so fully masked rows stay finite).
MASK_VALUE = -1e9


# --------------------------------------------------------------------------- norms, convs


def check_norm(norm: str, where: str) -> None:
    if norm not in NORMS:
        raise ConfigError(
            f"{where}: unknown norm={norm!r}; valid values are {', '.join(map(repr, NORMS))}."
        )


class Norm(nn.Module):
    """Normalisation over a channels-last tensor `[B, *S, C]`.

    kind: "instance" (per sample and channel over space), "group" (8 groups, or fewer when C
    is small), "layer" (per position over channels) or "none".
    """

    kind: str = "instance"
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        c = x.shape[-1]
        if self.kind == "instance":
            return nn.GroupNorm(num_groups=None, group_size=1, epsilon=1e-5, dtype=self.dtype)(x)
        if self.kind == "group":
            return nn.GroupNorm(num_groups=math.gcd(8, c), epsilon=1e-5, dtype=self.dtype)(x)
        if self.kind == "layer":
            return nn.LayerNorm(epsilon=1e-5, dtype=self.dtype)(x)
        if self.kind == "none":
            return x
        check_norm(self.kind, "Norm")
        raise AssertionError


class ConvNormAct(nn.Module):
    """Dense convolution ('SAME'), then norm, then activation (LeakyReLU 0.01 by default)."""

    features: int
    kernel_size: int = 3
    strides: int = 1
    norm: str = "instance"
    act: str = "leaky_relu"  # "leaky_relu" | "gelu" | "relu" | "none"
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        d = x.ndim - 2
        if self.kernel_size == 1 and self.strides == 1:
            x = nn.Dense(self.features, dtype=self.dtype, use_bias=self.norm == "none")(x)
        else:
            x = nn.Conv(
                self.features,
                (self.kernel_size,) * d,
                strides=(self.strides,) * d,
                padding="SAME",
                dtype=self.dtype,
                use_bias=self.norm == "none",
            )(x)
        x = Norm(self.norm, self.dtype)(x)
        return activation(x, self.act)


def conv_norm(
    x,
    features: int,
    kernel_size: int = 3,
    *,
    strides: int = 1,
    dilation: int = 1,
    norm: str,
    dtype: Dtype,
    conv_name: str,
    norm_name: str,
):
    """Dense 'SAME' convolution (a bias only with norm "none": a norm right after the conv
    makes it redundant), then `Norm`; no activation. Call it inside a compact method: the two
    submodules belong to the caller, named `conv_name` and `norm_name` (flat names in the
    caller's scope, where `ConvNormAct` nests its own)."""
    d = x.ndim - 2
    x = nn.Conv(
        features,
        (kernel_size,) * d,
        strides=(strides,) * d,
        kernel_dilation=(dilation,) * d,
        padding="SAME",
        use_bias=norm == "none",
        dtype=dtype,
        name=conv_name,
    )(x)
    return Norm(norm, dtype, name=norm_name)(x)


def activation(x, act: str):
    if act == "leaky_relu":
        return nn.leaky_relu(x, 0.01)
    if act == "gelu":
        return nn.gelu(x)
    if act == "relu":
        return nn.relu(x)
    if act == "none":
        return x
    raise ConfigError(f"unknown activation {act!r}; use 'leaky_relu', 'gelu', 'relu' or 'none'.")


class DepthwiseConv(nn.Module):
    """Depthwise convolution ('SAME', stride 1) through `jaxseg.ops.depthwise_conv`."""

    kernel_size: int = 3
    use_bias: bool = True
    impl: str = "auto"
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        d, c = x.ndim - 2, x.shape[-1]
        kernel = self.param(
            "kernel",
            nn.initializers.variance_scaling(
                1.0, "fan_in", "truncated_normal", in_axis=tuple(range(d + 1)), out_axis=-1
            ),
            (*(self.kernel_size,) * d, 1, c),
        )
        y = ops.depthwise_conv(x.astype(self.dtype), kernel.astype(self.dtype), impl=self.impl)
        if self.use_bias:
            y = y + self.param("bias", nn.initializers.zeros, (c,)).astype(self.dtype)
        return y


class DepthwiseSeparable(nn.Module):
    """Depthwise kxk -> norm -> act -> pointwise 1x1 (a Dense) -> norm -> act; residual if C is kept."""

    features: int
    kernel_size: int = 3
    norm: str = "layer"
    act: str = "gelu"
    depthwise_impl: str = "auto"
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        y = DepthwiseConv(
            self.kernel_size,
            use_bias=self.norm == "none",
            impl=self.depthwise_impl,
            dtype=self.dtype,
        )(x)
        y = activation(Norm(self.norm, self.dtype)(y), self.act)
        y = nn.Dense(self.features, dtype=self.dtype, use_bias=self.norm == "none")(y)
        y = activation(Norm(self.norm, self.dtype)(y), self.act)
        return x + y if x.shape[-1] == self.features else y


def drop_path(module: nn.Module, x, rate: float, train: bool):
    """Stochastic depth per sample: each sample of `x` `[B, ...]` is zeroed with probability
    `rate`, the others scaled by 1 / (1 - rate). Draws from `module`'s "dropout" rng (its
    scope, so the key depends on `module`'s path and how often it drew before) and only
    when `train` and rate > 0. Called from a module's own `__call__` with `self`, the rate
    can vary per call (one shared block at several depths)."""
    if not train or rate <= 0.0:
        return x
    keep = 1.0 - rate
    mask = jax.random.bernoulli(
        module.make_rng("dropout"), keep, (x.shape[0],) + (1,) * (x.ndim - 1)
    )
    return jnp.where(mask, x / keep, jnp.zeros_like(x))


class DropPath(nn.Module):
    """`drop_path` as a submodule (no parameters): it draws from its OWN "dropout" rng
    stream (this submodule's path), not its parent's, so it gives other masks than
    `drop_path(parent, ...)` for the same seed."""

    rate: float = 0.0

    @nn.compact
    def __call__(self, x, *, train: bool):
        return drop_path(self, x, self.rate, train)


# --------------------------------------------------------------------------- resampling


def space_to_depth(x, factor: int | Sequence[int] = 2):
    """`[B, *S, C] -> [B, *(S / f), prod(f) * C]`; channel order (offset_1, ..., offset_d, C).

    `factor`: one int for every spatial axis or one per axis; S must be divisible by it. The
    channel order equals a conv kernel `[*f, C, out]` flattened to `[prod(f) * C, out]`, so
    `space_to_depth(x, f) @ kernel.reshape(-1, out)` is the convolution with kernel = stride
    = f (MONAI's patch embeddings; `jaxseg.models.convert` relies on this order)."""
    b, *s, c = x.shape
    d = len(s)
    f = (factor,) * d if isinstance(factor, int) else tuple(factor)
    x = x.reshape(b, *[v for n, w in zip(s, f) for v in (n // w, w)], c)
    perm = (0, *range(1, 2 * d, 2), *range(2, 2 * d + 1, 2), 2 * d + 1)
    return x.transpose(perm).reshape(b, *(n // w for n, w in zip(s, f)), math.prod(f) * c)


def depth_to_space(x, factor: int | Sequence[int] = 2):
    """Inverse of `space_to_depth`: `[B, *S, prod(f) * C] -> [B, *(S * f), C]`."""
    b, *s, cc = x.shape
    d = len(s)
    f = (factor,) * d if isinstance(factor, int) else tuple(factor)
    c = cc // math.prod(f)
    x = x.reshape(b, *s, *f, c)
    perm = (0, *[a for i in range(d) for a in (1 + i, 1 + d + i)], 1 + 2 * d)
    return x.transpose(perm).reshape(b, *(n * w for n, w in zip(s, f)), c)


def pad_to_multiple(x, multiple: int | Sequence[int]):
    """Zero-pad the spatial axes of `[B, *S, C]` at the end up to a multiple; returns (x, S)."""
    s = x.shape[1:-1]
    mult = (multiple,) * len(s) if isinstance(multiple, int) else tuple(multiple)
    target = tuple(-(-n // m) * m for n, m in zip(s, mult))
    if target != s:
        x = jnp.pad(x, [(0, 0), *((0, t - n) for t, n in zip(target, s)), (0, 0)])
    return x, s


def crop_to(x, shape: Sequence[int]):
    """Crop the spatial axes of `[B, *S', C]` back to `shape` (from the start)."""
    if tuple(x.shape[1:-1]) == tuple(shape):
        return x
    return x[(slice(None), *(slice(0, n) for n in shape), slice(None))]


# --------------------------------------------------------------------------- windows


def window_partition(x, window: Sequence[int]):
    """`[B, *S, C] -> [B * nW, N, C]` with N = prod(window); windows ordered batch-major,
    then row-major over the window grid; tokens row-major inside a window."""
    b, *s, c = x.shape
    d = len(s)
    x = x.reshape(b, *[v for n, w in zip(s, window) for v in (n // w, w)], c)
    perm = (0, *range(1, 2 * d, 2), *range(2, 2 * d + 1, 2), 2 * d + 1)
    return x.transpose(perm).reshape(-1, math.prod(window), c)


def window_reverse(windows, window: Sequence[int], shape: Sequence[int]):
    """Inverse of `window_partition`: `[B * nW, N, C] -> [B, *shape, C]`."""
    d = len(shape)
    grid = [n // w for n, w in zip(shape, window)]
    c = windows.shape[-1]
    x = windows.reshape(-1, *grid, *window, c)
    perm = (0, *[a for i in range(d) for a in (1 + i, 1 + d + i)], 1 + 2 * d)
    return x.transpose(perm).reshape(-1, *shape, c)


def _grid_to_heads(x, groups: int, heads: int):
    """`[B, g_1, k_1, ..., g_d, k_d, G * H * D]` (a grid of blocks of k tokens per axis) ->
    `[G, B * prod(g), H, prod(k), D]`, as ONE transpose."""
    d = (x.ndim - 2) // 2
    block = x.shape[2 : 2 * d + 1 : 2]
    hd = x.shape[-1] // (groups * heads)
    x = x.reshape(*x.shape[:-1], groups, heads, hd)
    # axes: 0=B, grid i at 1+2i, block i at 2+2i, G at 2d+1, H at 2d+2, D at 2d+3
    perm = (2 * d + 1, 0, *range(1, 2 * d, 2), 2 * d + 2, *range(2, 2 * d + 1, 2), 2 * d + 3)
    return x.transpose(perm).reshape(groups, -1, heads, math.prod(block), hd)


def window_partition_heads(x, window: Sequence[int], groups: int, heads: int):
    """Window partition fused with the head split, as ONE transpose.

    `[B, *S, G * H * D] -> [G, B * nW, H, N, D]` (e.g. G = 3 for q, k, v); equals
    `window_partition` followed by splitting channels into (G, H, D) and moving G and H out.
    """
    b, *s, c = x.shape
    return _grid_to_heads(
        x.reshape(b, *[v for n, w in zip(s, window) for v in (n // w, w)], c), groups, heads
    )


def _halo_blocks_axis(x, axis: int, w: int, h: int):
    """Split `axis` (length g * w) into (g, w + 2h): block j holds positions
    [j w - h, j w + w + h) of the map, zeros outside it.

    Zero-pad, fold the axis into rows of w, and concatenate a = ceil((w + 2h) / w) row-shifted
    contiguous slices: no gather, and nothing larger than the blocks is formed."""
    g = x.shape[axis] // w
    if h == 0:
        return x.reshape(*x.shape[:axis], g, w, *x.shape[axis + 1 :])
    k = w + 2 * h
    a = -(-k // w)
    pad = [(0, 0)] * x.ndim
    pad[axis] = (h, a * w - h)  # total (g + a) * w
    x = jnp.pad(x, pad)
    x = x.reshape(*x.shape[:axis], g + a, w, *x.shape[axis + 1 :])
    pieces = []
    for r in range(a):
        index = [slice(None)] * x.ndim
        index[axis], index[axis + 1] = slice(r, r + g), slice(0, min(w, k - r * w))
        pieces.append(x[tuple(index)])
    return jnp.concatenate(pieces, axis=axis + 1)


def halo_partition_heads(x, window: Sequence[int], halo: Sequence[int], groups: int, heads: int):
    """Overlapping key blocks (HaloNet) fused with the head split.

    `[B, *S, G * H * D]` (S a multiple of `window`) -> `[G, B * nW, H, M, D]`, M = prod(w + 2h):
    window i's block is the window grown by `halo` on each side, in the token order of a
    window of size w + 2h; positions outside the map are zeros (mask them with
    `window_key_mask`). With halo 0 this is `window_partition_heads`.
    """
    for i, (w, h) in enumerate(zip(window, halo)):
        x = _halo_blocks_axis(
            x, 1 + 2 * i, w, h
        )  # axes before 1 + 2i are already (grid, block) pairs
    return _grid_to_heads(x, groups, heads)


def window_key_mask(
    padded_shape: Sequence[int],
    valid_shape: Sequence[int],
    window: Sequence[int],
    halo: Sequence[int] | None = None,
) -> np.ndarray | None:
    """Additive key mask `[nW, M]` (0 / MASK_VALUE) for one image, or None if all-zero.

    Key m of window i is the m-th token of the window grown by `halo` (default 0) on each side
    (`halo_partition_heads`'s order); it is masked when it lies outside the valid map of
    `valid_shape` (the zero padding of the halo and the padding up to `padded_shape`)."""
    halo = (0,) * len(window) if halo is None else tuple(halo)
    valid = np.ones((), bool)
    for n, v, w, h in zip(padded_shape, valid_shape, window, halo):
        pos = (np.arange(n // w) * w - h)[:, None] + np.arange(w + 2 * h)[None]  # [g, w + 2h]
        valid = np.multiply.outer(valid, (pos >= 0) & (pos < v))
    d = len(window)
    # axes: grid i at 2i, block i at 2i + 1 -> [grid..., block...]
    valid = valid.transpose(*range(0, 2 * d, 2), *range(1, 2 * d, 2))
    valid = valid.reshape(math.prod(n // w for n, w in zip(padded_shape, window)), -1)
    if valid.all():
        return None
    return np.where(valid, 0.0, MASK_VALUE).astype(np.float32)


def window_reverse_heads(x, window: Sequence[int], shape: Sequence[int]):
    """Inverse of `window_partition_heads` for one group: `[B * nW, H, N, D] -> [B, *shape, H * D]`."""
    d = len(shape)
    _, h, _, hd = x.shape
    grid = [n // w for n, w in zip(shape, window)]
    x = x.reshape(-1, *grid, h, *window, hd)
    # axes: 0=B, grid i at 1+i, H at 1+d, win i at 2+d+i, D at 2+2d
    perm = (0, *[a for i in range(d) for a in (1 + i, 2 + d + i)], 1 + d, 2 + 2 * d)
    return x.transpose(perm).reshape(-1, *shape, h * hd)


def relative_position_index(
    window: Sequence[int],
    table_window: Sequence[int] | None = None,
    halo: Sequence[int] | None = None,
) -> np.ndarray:
    """Swin relative position index `[N, M]` (N = prod(window)) into a table of
    `prod(2 t - 1)` rows, t = `table_window`.

    Keys are the window's own tokens (M = N), or with `halo` the window grown by h on each
    side (M = prod(w + 2h), `halo_partition_heads`'s order): offsets up to w + h - 1, so t
    must be >= w + h per axis (default window + halo). A window clamped below the configured
    size uses the matching sub-range of the same table, so the parameters do not depend on
    the input size."""
    halo = (0,) * len(window) if halo is None else tuple(halo)
    table_window = (
        tuple(w + h for w, h in zip(window, halo)) if table_window is None else tuple(table_window)
    )
    grid = lambda ranges: np.stack(np.meshgrid(*ranges, indexing="ij")).reshape(len(window), -1)
    queries = grid([np.arange(w) for w in window])
    keys = grid([np.arange(-h, w + h) for w, h in zip(window, halo)])
    rel = queries[:, :, None] - keys[:, None, :]  # [d, N, M]
    index = np.zeros(rel.shape[1:], np.int64)
    for i, t in enumerate(table_window):
        index = index * (2 * t - 1) + (rel[i] + t - 1)
    return index.astype(np.int32)


def shift_regions(
    padded_shape: Sequence[int], window: Sequence[int], shift: Sequence[int]
) -> np.ndarray:
    """Swin shift-region label of every position of a map of `padded_shape` (a multiple of
    `window`) after the cyclic shift by `-shift`: `int32[*padded_shape]`, equal where two
    tokens may attend to each other. Per axis with shift s > 0, the last window is split
    into [n - w, n - s) and the wrapped-around [n - s, n); an axis with shift 0 is one region."""
    d = len(padded_shape)
    region = np.zeros(padded_shape, np.int32)
    for ax in range(d):
        n, w, s = padded_shape[ax], window[ax], shift[ax]
        lab = np.zeros(n, np.int32)
        if s > 0:
            lab[n - w : n - s] = 1
            lab[n - s :] = 2
        region = region * 3 + lab.reshape([-1 if a == ax else 1 for a in range(d)])
    return region


def window_attention_mask(
    padded_shape: Sequence[int],
    valid_shape: Sequence[int],
    window: Sequence[int],
    shift: Sequence[int],
) -> np.ndarray | None:
    """Additive attention mask `[nW, N, N]` (0 / MASK_VALUE) for one image, or None if all-zero.

    The feature map of `valid_shape` is zero-padded at the end to `padded_shape` (a multiple
    of `window`), then cyclically shifted by `-shift` (Swin). Two tokens of a window may
    attend to each other iff they come from the same Swin shift region (not across the
    wrap-around), and a key may be attended only if it is not padding.
    """
    d = len(padded_shape)
    region = shift_regions(padded_shape, window, shift)
    valid = np.ones(padded_shape, bool)
    for ax in range(d):
        v = np.arange(padded_shape[ax]) < valid_shape[ax]
        valid = valid & v.reshape([-1 if a == ax else 1 for a in range(d)])
    valid = np.roll(valid, [-s for s in shift], axis=tuple(range(d)))
    reg_w = np.asarray(window_partition(region[None, ..., None], window))[..., 0]  # [nW, N]
    val_w = np.asarray(window_partition(valid[None, ..., None], window))[..., 0]
    allowed = (reg_w[:, :, None] == reg_w[:, None, :]) & val_w[:, None, :]
    if allowed.all():
        return None
    return np.where(allowed, 0.0, MASK_VALUE).astype(np.float32)


def check_input(x, *, model: str, dims: int, in_channels: int) -> None:
    """Raise ConfigError unless `x` is `[B, *S, in_channels]` with `dims` spatial axes."""
    if x.ndim != dims + 2:
        want = "[B, X, Y, C]" if dims == 2 else "[B, X, Y, Z, C]"
        raise ConfigError(
            f"model {model!r} was built with dims={dims} and expects input {want}; got shape "
            f"{tuple(x.shape)} ({x.ndim - 2} spatial axes). Set the model's dims to match the data."
        )
    if x.shape[-1] != in_channels:
        raise ConfigError(
            f"model {model!r} was built with in_channels={in_channels}; got input with "
            f"{x.shape[-1]} channels (shape {tuple(x.shape)}). Set in_channels to the number of image channels."
        )
