"""UNETR, equivalent to MONAI 1.6.1's `monai.networks.nets.UNETR`.

Hatamizadeh et al., "UNETR: Transformers for 3D Medical Image Segmentation"
(arXiv:2103.10504). Layout (channels-last; patches of 16 per axis, `fs` = feature_size,
`hs` = hidden_size):

  vit       patch embedding (conv k=s=16, or "perceptron": a Linear on flattened patches)
            + learned position embeddings, 12 pre-norm Transformer blocks (global MHSA,
            MLP), final LayerNorm. Hidden states z3, z6, z9 and the normed output z12.
  encoders  encoder1(x) UnetResBlock; encoder2(z3), encoder3(z6), encoder4(z9):
            UnetrPrUpBlocks (transposed convs [+ res blocks]) to strides 2, 4, 8.
  decoders  decoder5(z12, enc4) ... decoder2(dec1, enc1): transposed conv, concat, block.
  out       1x1 conv -> num_classes

Input shape (a decision; MONAI's UNETR is defined for its fixed `img_size` only):
  * the learned position embeddings belong to the patch grid `img_size / 16`, so
    `img_size` must be divisible by 16 (MONAI fails in forward otherwise);
  * an input of exactly `img_size` is computed as MONAI computes it;
  * any other shape is zero-padded at the end of each axis to a multiple of 16 and cropped
    back; when its patch grid differs from `img_size / 16` the position embeddings are
    resized to that grid by (bi/tri)linear interpolation (no antialiasing), the usual way
    to run a ViT at another resolution. Train and infer at `img_size` (sliding window with
    patch_size = img_size) to stay on MONAI's behaviour.

MONAI's TransformerBlock always allocates a `norm_cross_attn` LayerNorm, even without
cross-attention; it is kept (unused, zero gradient) so parameter counts and state dicts
match MONAI's exactly.
"""

from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxseg.errors import ConfigError
from jaxseg.models.layers import check_input, crop_to, space_to_depth
from jaxseg.models.monai_blocks import (
    Conv,
    MLPBlock,
    UnetOutBlock,
    UnetrBasicBlock,
    UnetrPrUpBlock,
    UnetrUpBlock,
    _dense_init,
    _thaw_norm_name,
    attention,
    freeze_norm_name,
    layer_norm,
    parse_norm_name,
)

Dtype = Any
PATCH = 16  # MONAI's UNETR patch size, fixed
PROJ_TYPES = ("conv", "perceptron")


class SABlock(nn.Module):
    """MONAI SABlock (combined qkv, out_proj): `[B, N, C] -> [B, N, C]`, global attention
    through `jaxseg.ops.window_attention` with one window per image."""

    hidden_size: int
    num_heads: int
    dropout_rate: float = 0.0
    qkv_bias: bool = False
    attention_impl: str = "auto"
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x, *, train: bool = False):
        b, n, c = x.shape
        hd = c // self.num_heads
        qkv = nn.Dense(
            3 * c, use_bias=self.qkv_bias, dtype=self.dtype, kernel_init=_dense_init, name="qkv"
        )(x)
        # Channel order (qkv, head, dim), as MONAI's "b h (qkv l d) -> qkv b l h d".
        qkv = qkv.reshape(b, n, 3, self.num_heads, hd).transpose(2, 0, 3, 1, 4)
        q, k, v = qkv[0] * jnp.asarray(hd**-0.5, qkv.dtype), qkv[1], qkv[2]
        o = attention(
            self, q, k, v, dropout_rate=self.dropout_rate, train=train, impl=self.attention_impl
        )
        o = o.transpose(0, 2, 1, 3).reshape(b, n, c)
        o = nn.Dense(c, dtype=self.dtype, kernel_init=_dense_init, name="out_proj")(o)
        return nn.Dropout(self.dropout_rate, deterministic=not train)(o)


class _UnusedLayerNorm(nn.Module):
    """Declares a LayerNorm's `scale`/`bias` without using them (MONAI's norm_cross_attn)."""

    features: int

    @nn.compact
    def __call__(self):
        self.param("scale", nn.initializers.ones, (self.features,))
        self.param("bias", nn.initializers.zeros, (self.features,))


class TransformerBlock(nn.Module):
    """MONAI TransformerBlock: x + SA(LN(x)), then x + MLP(LN(x)). `[B, N, C] -> [B, N, C]`."""

    hidden_size: int
    mlp_dim: int
    num_heads: int
    dropout_rate: float = 0.0
    qkv_bias: bool = False
    attention_impl: str = "auto"
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = x + SABlock(
            self.hidden_size,
            self.num_heads,
            self.dropout_rate,
            self.qkv_bias,
            self.attention_impl,
            self.dtype,
            name="attn",
        )(layer_norm("norm1", self.dtype)(x), train=train)
        _UnusedLayerNorm(self.hidden_size, name="norm_cross_attn")()
        return x + MLPBlock(
            self.hidden_size, self.mlp_dim, self.dropout_rate, self.dtype, name="mlp"
        )(layer_norm("norm2", self.dtype)(x), train=train)


class PatchEmbeddingBlock(nn.Module):
    """MONAI PatchEmbeddingBlock (learnable position embeddings).

    `x [B, *S, Cin]` with S a multiple of 16 -> tokens `[B, prod(S/16), hidden]` (row-major
    over the patch grid). Params: `patch_embeddings` (conv: kernel `[16]*d + [Cin, hidden]`)
    or `patch_embeddings_1` (perceptron: Dense `[16^d Cin, hidden]`, MONAI's Sequential
    index 1), and `position_embeddings [1, prod(img_size/16), hidden]`.
    """

    img_grid: tuple[int, ...]
    hidden_size: int
    proj_type: str = "conv"
    dropout_rate: float = 0.0
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x, *, train: bool = False):
        d = x.ndim - 2
        k = (PATCH,) * d
        if self.proj_type == "conv":
            t = Conv(
                self.hidden_size, k, k, use_bias=True, dtype=self.dtype, name="patch_embeddings"
            )(x)
        else:
            # "perceptron": MONAI rearranges to (p1 p2 p3 c) per patch = space_to_depth's order.
            t = nn.Dense(
                self.hidden_size,
                dtype=self.dtype,
                kernel_init=_dense_init,
                name="patch_embeddings_1",
            )(space_to_depth(x.astype(self.dtype), k))
        grid = t.shape[1:-1]
        t = t.reshape(t.shape[0], -1, self.hidden_size)
        pos = self.param(
            "position_embeddings",
            nn.initializers.truncated_normal(0.02),
            (1, math.prod(self.img_grid), self.hidden_size),
        )
        if tuple(grid) != tuple(self.img_grid):
            # Another input size: interpolate the embeddings over the patch grid (see module doc).
            pos = jax.image.resize(
                pos.reshape(*self.img_grid, self.hidden_size),
                (*grid, self.hidden_size),
                method="linear",
                antialias=False,
            ).reshape(1, -1, self.hidden_size)
        t = t + pos.astype(t.dtype)
        return nn.Dropout(self.dropout_rate, deterministic=not train)(t)


class ViT(nn.Module):
    """MONAI ViT (no classification head): `[B, *S, Cin]` -> (normed tokens, 12 hidden states)."""

    img_grid: tuple[int, ...]
    hidden_size: int = 768
    mlp_dim: int = 3072
    num_layers: int = 12
    num_heads: int = 12
    proj_type: str = "conv"
    dropout_rate: float = 0.0
    qkv_bias: bool = False
    attention_impl: str = "auto"
    dtype: Dtype = jnp.float32
    remat: bool = False  # nn.remat each Transformer block

    @nn.compact
    def __call__(self, x, *, train: bool = False):
        # `train` (argument 2 of a block call) is a Python value: static.
        block_cls = (
            nn.remat(TransformerBlock, static_argnums=(2,)) if self.remat else TransformerBlock
        )
        x = PatchEmbeddingBlock(
            self.img_grid,
            self.hidden_size,
            self.proj_type,
            self.dropout_rate,
            self.dtype,
            name="patch_embedding",
        )(x, train=train)
        hidden = []
        for i in range(self.num_layers):
            x = block_cls(
                self.hidden_size,
                self.mlp_dim,
                self.num_heads,
                self.dropout_rate,
                self.qkv_bias,
                self.attention_impl,
                self.dtype,
                name=f"blocks_{i}",
            )(x, train)
            hidden.append(x)
        return layer_norm("norm", self.dtype)(x), hidden


class UNETR(nn.Module):
    """UNETR, MONAI-equivalent (see the module docstring for the input-shape rule).

    Input `[B, *S, in_channels]` -> logits `[B, *S, num_classes]` float32. Constructor
    options are MONAI's with MONAI's defaults, except `img_size`, which MONAI requires and
    which defaults to 96 here; `num_classes` is MONAI's `out_channels`.
    """

    dims: int
    in_channels: int
    num_classes: int
    img_size: Any = 96  # an int or one int per axis; each divisible by 16
    feature_size: int = 16
    hidden_size: int = 768
    mlp_dim: int = 3072
    num_heads: int = 12
    proj_type: str = "conv"  # "conv" or "perceptron"
    norm_name: Any = "instance"
    conv_block: bool = True
    res_block: bool = True
    dropout_rate: float = 0.0
    spatial_dims: int | None = None
    qkv_bias: bool = False
    attention_impl: str = "auto"  # passed to jaxseg.ops.window_attention
    dtype: Dtype = jnp.float32  # compute dtype; params stay float32
    # Not MONAI's: recompute each Transformer block and each encoder/decoder conv block in
    # the backward pass (nn.remat): less activation memory, ~1/3 more compute. The blocks
    # keep their names, so the parameters (and MONAI state dicts) are the same either way.
    remat: bool = False

    def img_shape(self) -> tuple[int, ...]:
        s = self.img_size
        return (
            (int(s),) * self.dims if isinstance(s, (int, np.integer)) else tuple(int(v) for v in s)
        )

    def _validate(self):
        where = "unetr"
        if self.dims not in (2, 3):
            raise ConfigError(f"{where}: dims must be 2 or 3; got {self.dims}.")
        if self.spatial_dims is not None and self.spatial_dims != self.dims:
            raise ConfigError(
                f"{where}: spatial_dims={self.spatial_dims} disagrees with dims={self.dims}; "
                "drop spatial_dims or make them equal."
            )
        img = self.img_shape()
        if len(img) != self.dims or any(v < PATCH or v % PATCH for v in img):
            raise ConfigError(
                f"{where}: img_size={self.img_size} must be {self.dims} positive multiples of "
                f"{PATCH} (the ViT patch size); e.g. img_size=96."
            )
        if not 0.0 <= self.dropout_rate <= 1.0:
            raise ConfigError(f"{where}: dropout_rate must be in [0, 1]; got {self.dropout_rate}.")
        if self.num_heads < 1 or self.hidden_size % self.num_heads:
            raise ConfigError(
                f"{where}: hidden_size {self.hidden_size} must be divisible by num_heads "
                f"{self.num_heads}."
            )
        if self.proj_type not in PROJ_TYPES:
            raise ConfigError(
                f"{where}: proj_type={self.proj_type!r}; valid values are {PROJ_TYPES}."
            )
        parse_norm_name(_thaw_norm_name(freeze_norm_name(self.norm_name)), where + ".norm_name")

    @nn.compact
    def __call__(self, x, train: bool = False):
        """`x [B, *S, in_channels]` -> logits `[B, *S, num_classes]` float32."""
        self._validate()
        check_input(x, model="unetr", dims=self.dims, in_channels=self.in_channels)
        shape = x.shape[1:-1]
        padded = tuple(-(-n // PATCH) * PATCH for n in shape)
        if padded != shape:
            x = jnp.pad(x, [(0, 0), *((0, p - n) for p, n in zip(padded, shape)), (0, 0)])
        x = x.astype(self.dtype)
        img_grid = tuple(v // PATCH for v in self.img_shape())
        grid = tuple(p // PATCH for p in padded)
        z, hidden = ViT(
            img_grid,
            self.hidden_size,
            self.mlp_dim,
            12,
            self.num_heads,
            self.proj_type,
            self.dropout_rate,
            self.qkv_bias,
            self.attention_impl,
            self.dtype,
            self.remat,
            name="vit",
        )(x, train=train)

        def feat(t):  # tokens [B, N, hs] -> map [B, *grid, hs] (MONAI's proj_feat, channels-last)
            return t.reshape(t.shape[0], *grid, self.hidden_size)

        fs, norm = self.feature_size, freeze_norm_name(self.norm_name)
        pr = dict(
            kernel_size=3,
            stride=1,
            upsample_kernel_size=2,
            norm_name=norm,
            conv_block=self.conv_block,
            res_block=self.res_block,
            dtype=self.dtype,
        )
        basic, pr_up, up = (
            (nn.remat(c) for c in (UnetrBasicBlock, UnetrPrUpBlock, UnetrUpBlock))
            if self.remat
            else (UnetrBasicBlock, UnetrPrUpBlock, UnetrUpBlock)
        )
        enc1 = basic(fs, 3, 1, norm, self.res_block, self.dtype, name="encoder1")(x)
        enc2 = pr_up(fs * 2, 2, **pr, name="encoder2")(feat(hidden[3]))
        enc3 = pr_up(fs * 4, 1, **pr, name="encoder3")(feat(hidden[6]))
        enc4 = pr_up(fs * 8, 0, **pr, name="encoder4")(feat(hidden[9]))

        def dec(c, name):
            return up(c, 3, 2, norm, self.res_block, self.dtype, name=name)

        dec3 = dec(fs * 8, "decoder5")(feat(z), enc4)
        dec2 = dec(fs * 4, "decoder4")(dec3, enc3)
        dec1 = dec(fs * 2, "decoder3")(dec2, enc2)
        out = dec(fs, "decoder2")(dec1, enc1)
        logits = UnetOutBlock(self.num_classes, self.dtype, name="out")(out)
        return crop_to(logits, shape).astype(jnp.float32)
