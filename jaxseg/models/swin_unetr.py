"""SwinUNETR (v1 and v2), equivalent to MONAI 1.6.1's `monai.networks.nets.SwinUNETR`.

Hatamizadeh et al., "Swin UNETR: Swin Transformers for Semantic Segmentation of Brain
Tumors in MRI Images" (arXiv:2201.01266); v2: "SwinUNETR-V2" (MICCAI 2023), a residual
conv block before each Swin stage (`use_v2=True`).

Layout (channels-last; `fs` = feature_size, `p` = patch_size; strides relative to input):

  swinViT   patch_embed (conv k=s=p)                      x0  fs      stride p
            [v2: layers1c] layers1: Swin blocks, merging  x1  2 fs    stride 2p
            [v2: layers2c] layers2 ...                    x2  4 fs    stride 4p
            [v2: layers3c] layers3 ...                    x3  8 fs    stride 8p
            [v2: layers4c] layers4 ...                    x4  16 fs   stride 16p
            each output LayerNorm'ed without affine parameters (normalize=True)
  encoders  encoder1(x), encoder2(x0), encoder3(x1), encoder4(x2), encoder10(x4): UnetResBlocks
  decoders  decoder5(enc10, x3) ... decoder1(dec0, enc0): transposed conv + concat + UnetResBlock
  out       1x1 conv -> num_classes

MONAI behaviours reproduced on purpose (so MONAI weights give MONAI's outputs):
  * inside a stage the (normed) feature map is zero-padded at the end to a multiple of the
    window, and the padded tokens take part in attention as keys (MONAI does not mask them);
  * the shifted-window mask uses -100 for pairs from different shift regions;
  * a window larger than the feature map is clamped to it (no shift on that axis), and its
    relative position bias is `index[:n, :n]` of the configured window's index table, as
    MONAI computes it;
  * patch merging "merging" (v0.9 channel order in 3D) and "mergingv2" (row-major order);
    in 2D both use MONAI's 2D order.

Beyond MONAI (which raises for shapes not divisible by 32, MONAI issue 4693): any spatial
shape works. The input is zero-padded at the end of each axis to a multiple of
`patch_size * 16` (the network's total stride) and the logits are cropped back. For shapes
MONAI accepts nothing is padded and the output is MONAI's.
"""

from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from jaxseg.errors import ConfigError
from jaxseg.models.layers import (
    DropPath,
    check_input,
    crop_to,
    relative_position_index,
    shift_regions,
    window_partition,
    window_partition_heads,
    window_reverse_heads,
)
from jaxseg.models.monai_blocks import Conv as MonaiConvLayer
from jaxseg.models.monai_blocks import (
    MLPBlock,
    UnetOutBlock,
    UnetrBasicBlock,
    UnetrUpBlock,
    _dense_init,
    _thaw_norm_name,
    attention,
    freeze_norm_name,
    layer_norm,
    parse_norm_name,
)

Dtype = Any
DOWNSAMPLE_MODES = ("merging", "mergingv2")
# MONAI's additive value for disallowed (cross-region) pairs in shifted windows.
SHIFT_MASK_VALUE = -100.0


def get_window_size(x_size, window, shift):
    """MONAI's rule: an axis no longer than the window uses the whole axis and no shift."""
    w, s = list(window), list(shift)
    for i, n in enumerate(x_size):
        if n <= window[i]:
            w[i], s[i] = n, 0
    return tuple(w), tuple(s)


def shift_mask(padded_shape, window, shift) -> np.ndarray:
    """Additive mask `[nW, N, N]` (0 / -100) for shifted windows on a map of `padded_shape`
    (a multiple of `window`): tokens may attend to each other iff they come from the same
    region of the cyclic shift. An axis with shift 0 is one region (as in MONAI)."""
    region = shift_regions(padded_shape, window, shift)
    reg = np.asarray(window_partition(region[None, ..., None], window))[..., 0]  # [nW, N]
    return np.where(reg[:, :, None] == reg[:, None, :], 0.0, SHIFT_MASK_VALUE).astype(np.float32)


class WindowAttention(nn.Module):
    """MONAI WindowAttention on windows already cut: `[B*nW, ...]` is handled by the caller.

    `__call__(x [B, *Sp, C], window, mask)`: Sp a multiple of `window` (the clamped window);
    returns `[B, *Sp, C]`. Params: relative_position_bias_table `[prod(2w-1), heads]` for the
    configured window, qkv (bias if qkv_bias), proj.
    """

    dim: int
    num_heads: int
    window_size: tuple[int, ...]
    qkv_bias: bool = True
    attn_drop: float = 0.0
    proj_drop: float = 0.0
    attention_impl: str = "auto"
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x, window, mask, *, train: bool = False):
        shape = x.shape[1:-1]
        hd = self.dim // self.num_heads
        table = self.param(
            "relative_position_bias_table",
            nn.initializers.truncated_normal(0.02),
            (math.prod(2 * w - 1 for w in self.window_size), self.num_heads),
        )
        qkv = nn.Dense(
            3 * self.dim,
            use_bias=self.qkv_bias,
            dtype=self.dtype,
            kernel_init=_dense_init,
            name="qkv",
        )(x)
        q, k, v = window_partition_heads(qkv, window, 3, self.num_heads)  # [B*nW, H, N, hd] each
        q = q * jnp.asarray(hd**-0.5, q.dtype)
        n = math.prod(window)
        # MONAI indexes the configured window's table with index[:n, :n], also when the window
        # was clamped to a smaller feature map (then this is not the clamped window's own index).
        index = relative_position_index(self.window_size)[:n, :n].reshape(-1)
        bias = (
            jnp.take(table, jnp.asarray(index), axis=0)
            .reshape(n, n, self.num_heads)
            .transpose(2, 0, 1)
        )
        o = attention(
            self,
            q,
            k,
            v,
            bias,
            None if mask is None else jnp.asarray(mask),
            dropout_rate=self.attn_drop,
            train=train,
            impl=self.attention_impl,
        )
        o = window_reverse_heads(o, window, shape)
        o = nn.Dense(self.dim, dtype=self.dtype, kernel_init=_dense_init, name="proj")(o)
        return nn.Dropout(self.proj_drop, deterministic=not train)(o)


class SwinTransformerBlock(nn.Module):
    """MONAI SwinTransformerBlock on `[B, *S, C]` -> `[B, *S, C]` (any S)."""

    dim: int
    num_heads: int
    window_size: tuple[int, ...]
    shift_size: tuple[int, ...]
    mlp_ratio: float = 4.0
    qkv_bias: bool = True
    drop: float = 0.0
    attn_drop: float = 0.0
    drop_path: float = 0.0
    attention_impl: str = "auto"
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool = False):
        d = x.ndim - 2
        shape = x.shape[1:-1]
        window, shift = get_window_size(shape, self.window_size, self.shift_size)
        h = layer_norm("norm1", self.dtype)(x)
        # MONAI pads the *normed* map with zeros to a window multiple; padded tokens are keys.
        padded = tuple(-(-n // w) * w for n, w in zip(shape, window))
        if padded != shape:
            h = jnp.pad(h, [(0, 0), *((0, p - n) for p, n in zip(padded, shape)), (0, 0)])
        axes = tuple(range(1, d + 1))
        shifted = any(s > 0 for s in shift)
        mask = None
        if shifted:
            h = jnp.roll(h, [-s for s in shift], axis=axes)
            mask = shift_mask(padded, window, shift)
        h = WindowAttention(
            self.dim,
            self.num_heads,
            self.window_size,
            self.qkv_bias,
            self.attn_drop,
            self.drop,
            self.attention_impl,
            self.dtype,
            name="attn",
        )(h, window, mask, train=train)
        if shifted:
            h = jnp.roll(h, list(shift), axis=axes)
        h = crop_to(h, shape)
        x = x + DropPath(self.drop_path)(h, train=train)
        y = MLPBlock(self.dim, int(self.dim * self.mlp_ratio), self.drop, self.dtype, name="mlp")(
            layer_norm("norm2", self.dtype)(x), train=train
        )
        return x + DropPath(self.drop_path)(y, train=train)


# MONAI's PatchMerging (v0.9) 3D concatenation order of the 2x2x2 neighbours.
_MERGING_V1_3D = (
    (0, 0, 0),
    (1, 0, 0),
    (0, 1, 0),
    (0, 0, 1),
    (1, 1, 0),
    (1, 0, 1),
    (0, 1, 1),
    (1, 1, 1),
)
# MONAI's 2D order (both versions): x[:, j::2, i::2] for i, j in product(range(2), range(2)).
_MERGING_2D = ((0, 0), (1, 0), (0, 1), (1, 1))


def merging_offsets(dims: int, mode: str) -> tuple[tuple[int, ...], ...]:
    """Neighbour offsets in the channel order MONAI concatenates them for `mode`."""
    if dims == 2:
        return _MERGING_2D
    if mode == "merging":
        return _MERGING_V1_3D
    return tuple((i, j, k) for i in range(2) for j in range(2) for k in range(2))  # row-major


class PatchMerging(nn.Module):
    """MONAI PatchMerging / PatchMergingV2: concat 2^d neighbours -> LayerNorm -> Linear(2C).

    `[B, *S, C] -> [B, *ceil(S/2), 2C]` (odd axes zero-padded at the end, as MONAI)."""

    dim: int
    mode: str = "merging"
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        d = x.ndim - 2
        shape = x.shape[1:-1]
        if any(n % 2 for n in shape):
            x = jnp.pad(x, [(0, 0), *((0, n % 2) for n in shape), (0, 0)])
        parts = [
            x[(slice(None), *(slice(o, None, 2) for o in off), slice(None))]
            for off in merging_offsets(d, self.mode)
        ]
        x = jnp.concatenate(parts, axis=-1)
        x = layer_norm("norm", self.dtype)(x)
        return nn.Dense(
            2 * self.dim,
            use_bias=False,
            dtype=self.dtype,
            kernel_init=_dense_init,
            name="reduction",
        )(x)


class BasicLayer(nn.Module):
    """One Swin stage (MONAI BasicLayer): `depth` blocks (shift on odd blocks), then merging.

    `[B, *S, C] -> [B, *ceil(S/2), 2C]`."""

    dim: int
    depth: int
    num_heads: int
    window_size: tuple[int, ...]
    drop_path: tuple[float, ...]
    mlp_ratio: float = 4.0
    qkv_bias: bool = True
    drop: float = 0.0
    attn_drop: float = 0.0
    downsample: str = "merging"
    use_checkpoint: bool = False
    attention_impl: str = "auto"
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool = False):
        shift = tuple(w // 2 for w in self.window_size)
        no_shift = (0,) * len(self.window_size)
        block_cls = (
            nn.remat(SwinTransformerBlock, static_argnums=(2,))
            if self.use_checkpoint
            else SwinTransformerBlock
        )
        for i in range(self.depth):
            x = block_cls(
                self.dim,
                self.num_heads,
                self.window_size,
                no_shift if i % 2 == 0 else shift,
                self.mlp_ratio,
                self.qkv_bias,
                self.drop,
                self.attn_drop,
                self.drop_path[i],
                self.attention_impl,
                self.dtype,
                name=f"blocks_{i}",
            )(x, train)
        return PatchMerging(self.dim, self.downsample, self.dtype, name="downsample")(x)


class PatchEmbed(nn.Module):
    """MONAI PatchEmbed: conv with kernel = stride = patch_size (child "proj"), optional
    LayerNorm ("norm", patch_norm). `[B, *S, Cin] -> [B, *S/p, embed_dim]`; S padded to a
    multiple of p at the end, as MONAI."""

    patch_size: tuple[int, ...]
    embed_dim: int
    patch_norm: bool = False
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        shape = x.shape[1:-1]
        padded = tuple(-(-n // p) * p for n, p in zip(shape, self.patch_size))
        if padded != shape:
            x = jnp.pad(x, [(0, 0), *((0, q - n) for q, n in zip(padded, shape)), (0, 0)])
        x = MonaiConvLayer(
            self.embed_dim,
            self.patch_size,
            self.patch_size,
            use_bias=True,
            dtype=self.dtype,
            name="proj",
        )(x)
        if self.patch_norm:
            x = layer_norm("norm", self.dtype)(x)
        return x


def _proj_out(x, normalize: bool):
    """MONAI SwinTransformer.proj_out: LayerNorm over channels without affine parameters."""
    if not normalize:
        return x
    x32 = x.astype(jnp.float32)
    mean = x32.mean(-1, keepdims=True)
    var = jnp.square(x32 - mean).mean(-1, keepdims=True)
    return ((x32 - mean) * jnp.reciprocal(jnp.sqrt(var + 1e-5))).astype(x.dtype)


class SwinTransformer(nn.Module):
    """MONAI SwinTransformer (the `swinViT` encoder). `[B, *S, Cin]` (S a multiple of 16p)
    -> 5 feature maps `[B, *S/(p 2^i), fs 2^i]`, i = 0..4."""

    in_chans: int
    embed_dim: int
    window_size: tuple[int, ...]
    patch_size: tuple[int, ...]
    depths: tuple[int, ...]
    num_heads: tuple[int, ...]
    mlp_ratio: float = 4.0
    qkv_bias: bool = True
    drop_rate: float = 0.0
    attn_drop_rate: float = 0.0
    drop_path_rate: float = 0.0
    patch_norm: bool = False
    use_checkpoint: bool = False
    downsample: str = "merging"
    use_v2: bool = False
    attention_impl: str = "auto"
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x, normalize: bool = True, train: bool = False):
        x0 = PatchEmbed(
            self.patch_size, self.embed_dim, self.patch_norm, self.dtype, name="patch_embed"
        )(x)
        x0 = nn.Dropout(self.drop_rate, deterministic=not train)(x0)
        outs = [_proj_out(x0, normalize)]
        dpr = np.linspace(
            0.0, self.drop_path_rate, sum(self.depths)
        ).tolist()  # torch.linspace, as MONAI
        h = x0
        for i in range(len(self.depths)):
            dim = self.embed_dim * 2**i
            if self.use_v2:
                # v2 always uses instance norm here, whatever norm_name says (as MONAI).
                h = UnetrBasicBlock(
                    dim, 3, 1, "instance", True, self.dtype, name=f"layers{i + 1}c_0"
                )(h)
            start = sum(self.depths[:i])
            h = BasicLayer(
                dim,
                self.depths[i],
                self.num_heads[i],
                self.window_size,
                tuple(dpr[start : start + self.depths[i]]),
                self.mlp_ratio,
                self.qkv_bias,
                self.drop_rate,
                self.attn_drop_rate,
                self.downsample,
                self.use_checkpoint,
                self.attention_impl,
                self.dtype,
                name=f"layers{i + 1}_0",
            )(h, train)
            outs.append(_proj_out(h, normalize))
        return outs


class SwinUNETR(nn.Module):
    """SwinUNETR, MONAI-equivalent (see the module docstring).

    Input `[B, *S, in_channels]` (any S) -> logits `[B, *S, num_classes]` float32.
    Constructor options are MONAI's, with MONAI's defaults; `num_classes` is MONAI's
    `out_channels`; `spatial_dims` (None: `dims`) must equal `dims`.
    """

    dims: int
    in_channels: int
    num_classes: int
    patch_size: int = 2
    depths: tuple[int, ...] = (2, 2, 2, 2)
    num_heads: tuple[int, ...] = (3, 6, 12, 24)
    window_size: Any = 7  # an int or one int per axis
    qkv_bias: bool = True
    mlp_ratio: float = 4.0
    feature_size: int = 24
    norm_name: Any = (
        "instance"  # "instance", ("instance", {"affine": True}), ("group", {"num_groups": G})
    )
    drop_rate: float = 0.0
    attn_drop_rate: float = 0.0
    dropout_path_rate: float = 0.0
    normalize: bool = True  # LayerNorm (no affine) on each encoder output, as MONAI
    patch_norm: bool = False
    use_checkpoint: bool = False  # gradient checkpointing (nn.remat) of the Swin blocks
    spatial_dims: int | None = None
    downsample: str = "merging"  # "merging" (v0.9 order) or "mergingv2"
    use_v2: bool = False
    attention_impl: str = "auto"  # passed to jaxseg.ops.window_attention
    dtype: Dtype = jnp.float32  # compute dtype; params stay float32

    def _validate(self):
        where = "swinunetr"
        if self.dims not in (2, 3):
            raise ConfigError(f"{where}: dims must be 2 or 3; got {self.dims}.")
        if self.spatial_dims is not None and self.spatial_dims != self.dims:
            raise ConfigError(
                f"{where}: spatial_dims={self.spatial_dims} disagrees with dims={self.dims}; "
                "drop spatial_dims or make them equal."
            )
        for key in ("drop_rate", "attn_drop_rate", "dropout_path_rate"):
            v = getattr(self, key)
            if not 0.0 <= v <= 1.0:
                raise ConfigError(f"{where}: {key} must be in [0, 1]; got {v}.")
        if self.feature_size % 12:
            raise ConfigError(
                f"{where}: feature_size must be divisible by 12 (as in MONAI); got {self.feature_size}."
            )
        if len(self.depths) != 4 or len(self.num_heads) != 4:
            raise ConfigError(
                f"{where}: depths and num_heads need 4 entries (MONAI's 4 stages); got "
                f"{tuple(self.depths)} and {tuple(self.num_heads)}."
            )
        for i, h in enumerate(self.num_heads):
            if h < 1 or (self.feature_size * 2**i) % h:
                raise ConfigError(
                    f"{where}: stage {i} dim {self.feature_size * 2**i} is not divisible by "
                    f"num_heads {h}."
                )
        if self.downsample not in DOWNSAMPLE_MODES:
            raise ConfigError(
                f"{where}: downsample={self.downsample!r}; valid values are {DOWNSAMPLE_MODES}."
            )
        if self.patch_size < 1:
            raise ConfigError(f"{where}: patch_size must be >= 1; got {self.patch_size}.")
        w = self._window()
        if len(w) != self.dims or min(w) < 1:
            raise ConfigError(
                f"{where}: window_size {self.window_size} must be a positive int or {self.dims} ints."
            )
        parse_norm_name(_thaw_norm_name(freeze_norm_name(self.norm_name)), where + ".norm_name")

    def _window(self) -> tuple[int, ...]:
        ws = self.window_size
        return (
            (int(ws),) * self.dims
            if isinstance(ws, (int, np.integer))
            else tuple(int(w) for w in ws)
        )

    @property
    def total_stride(self) -> int:
        """Input sizes are padded to a multiple of this: patch_size * 2^4."""
        return self.patch_size * 2 ** len(self.depths)

    @nn.compact
    def __call__(self, x, train: bool = False):
        """`x [B, *S, in_channels]` -> logits `[B, *S, num_classes]` float32."""
        self._validate()
        check_input(x, model="swinunetr", dims=self.dims, in_channels=self.in_channels)
        shape = x.shape[1:-1]
        m = self.total_stride
        padded = tuple(-(-n // m) * m for n in shape)
        if padded != shape:
            x = jnp.pad(x, [(0, 0), *((0, p - n) for p, n in zip(padded, shape)), (0, 0)])
        x = x.astype(self.dtype)
        fs, norm = self.feature_size, freeze_norm_name(self.norm_name)
        hs = SwinTransformer(
            self.in_channels,
            fs,
            self._window(),
            (self.patch_size,) * self.dims,
            tuple(self.depths),
            tuple(self.num_heads),
            self.mlp_ratio,
            self.qkv_bias,
            self.drop_rate,
            self.attn_drop_rate,
            self.dropout_path_rate,
            self.patch_norm,
            self.use_checkpoint,
            self.downsample,
            self.use_v2,
            self.attention_impl,
            self.dtype,
            name="swinViT",
        )(x, self.normalize, train)

        def enc(c, name):
            return UnetrBasicBlock(c, 3, 1, norm, True, self.dtype, name=name)

        def dec(c, name):
            return UnetrUpBlock(c, 3, 2, norm, True, self.dtype, name=name)

        enc0 = enc(fs, "encoder1")(x)
        enc1 = enc(fs, "encoder2")(hs[0])
        enc2 = enc(2 * fs, "encoder3")(hs[1])
        enc3 = enc(4 * fs, "encoder4")(hs[2])
        dec4 = enc(16 * fs, "encoder10")(hs[4])
        dec3 = dec(8 * fs, "decoder5")(dec4, hs[3])
        dec2 = dec(4 * fs, "decoder4")(dec3, enc3)
        dec1 = dec(2 * fs, "decoder3")(dec2, enc2)
        dec0 = dec(fs, "decoder2")(dec1, enc1)
        out = dec(fs, "decoder1")(dec0, enc0)
        logits = UnetOutBlock(self.num_classes, self.dtype, name="out")(out)
        return crop_to(logits, shape).astype(jnp.float32)
