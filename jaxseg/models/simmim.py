"""SimMIM: masked image modelling for a segmentation model's encoder (Xie et al., CVPR 2022).

Random blocks of the input (`mask_patch` voxels per side, `ratio` of them, 0.6 by default
as in the paper) are replaced by a learnt mask token at the encoder input; a light linear
head on the deepest stage regresses the normalised voxels, and the loss is the L1 error on
the masked voxels only:

    mask = random_block_mask(key, batch=B, grid=tuple(s // p for s in S), ratio=0.6)
    model = simmim_model(build_model("lightseg_small", dims=3, in_channels=2, num_classes=4))
    recon = model.apply({"params": p}, x, mask, train=True, rngs={"dropout": k})  # [B, *S, C]
    loss = masked_l1(recon, x, mask, mask_patch)

The pretraining model is a subclass of the segmentation model whose `__call__` runs the
same `_encode` helper, so the encoder's parameters sit under the segmentation model's own
paths (`stem_conv`, `stage0_block0`, ...) and `train.init_from` matches them by path; only
`mask_token` and `simmim_head` are new, and the decoder is absent (initialised fresh by a
fine-tuning run).

Masking is in input space, before the convolutional stem, and not at the stage-0 tokens:
lightseg's stem (a 3x3 conv, two strided downsamples and depthwise convs) has a receptive
field of about 20 voxels, so tokens replaced after it would still carry the masked voxels'
values at block borders.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxseg.errors import ConfigError
from jaxseg.models.layers import check_input
from jaxseg.models.lightseg import LightSeg

STEM_STRIDE = 4  # lightseg's token grid: its stem downsamples by 4


def check_mask_options(mask_patch: int, ratio: float, patch_size: Sequence[int]) -> None:
    """ConfigError unless 0 < ratio < 1 and `mask_patch` is a multiple of the encoder's
    token stride that divides every axis of the training patch (the error lists the valid
    sizes)."""
    if not 0.0 < float(ratio) < 1.0:
        raise ConfigError(f"pretrain.mask_ratio must be in (0, 1); got {ratio}.")
    valid = [
        m
        for m in range(STEM_STRIDE, min(patch_size) + 1, STEM_STRIDE)
        if all(s % m == 0 for s in patch_size)
    ]
    if mask_patch not in valid:
        raise ConfigError(
            f"pretrain.mask_patch={mask_patch} must be a multiple of the encoder's token "
            f"stride {STEM_STRIDE} that divides data.patch_size {tuple(patch_size)}; valid "
            f"sizes are {valid}."
        )


def random_block_mask(key: jax.Array, *, batch: int, grid: Sequence[int], ratio: float):
    """`[batch, *grid]` bool: exactly `round(ratio * prod(grid))` True blocks per example,
    placed uniformly at random (a random permutation's first ones, as SimMIM)."""
    n = math.prod(grid)
    k = int(round(float(ratio) * n))
    ranks = jnp.argsort(jnp.argsort(jax.random.uniform(key, (batch, n)), axis=1), axis=1)
    return (ranks < k).reshape(batch, *grid)


def block_mask_voxels(mask, mask_patch: int):
    """`[B, *grid]` block mask -> `[B, *grid * mask_patch]` voxel mask."""
    for axis in range(1, mask.ndim):
        mask = jnp.repeat(mask, mask_patch, axis=axis)
    return mask


def masked_l1(recon, target, mask, mask_patch: int):
    """SimMIM's loss: mean |recon - target| over the masked voxels and all channels.

    recon, target: `[B, *S, C]`; mask: `[B, *S / mask_patch]` bool.
    """
    voxels = block_mask_voxels(mask, mask_patch)[..., None].astype(jnp.float32)
    error = jnp.abs(recon.astype(jnp.float32) - target.astype(jnp.float32)) * voxels
    return error.sum() / jnp.maximum(voxels.sum() * target.shape[-1], 1.0)


def depth_to_space(x, block: int, dims: int):
    """`[B, *S, block**dims * C]` -> `[B, *(S * block), C]`."""
    spatial = x.shape[1 : 1 + dims]
    c = x.shape[-1] // block**dims
    x = x.reshape(x.shape[0], *spatial, *(block,) * dims, c)
    # Interleave each spatial axis with its block axis: (S0, b0, S1, b1, ...).
    order = [0, *(a for i in range(dims) for a in (1 + i, 1 + dims + i)), 1 + 2 * dims]
    return x.transpose(order).reshape(x.shape[0], *(n * block for n in spatial), c)


class SimMIMLightSeg(LightSeg):
    """lightseg's encoder with SimMIM's mask token and reconstruction head.

    Args:
      (every LightSeg field): the encoder, as the segmentation model to be fine-tuned.
      mask_patch: the side of a masked block, in voxels (see `check_mask_options`).
      head_dim: channels between the head's two linear maps. The head is linear, as
        SimMIM's; it maps the deepest stage (stride `total_stride`) to voxels in two
        depth-to-space steps (to stride 4 with `head_dim` channels, then to voxels),
        because one step would need `total_stride**dims * C` outputs per token (65,536
        for a stride-32 3D encoder with two channels).

    Input `x [B, *S, C]` (S a multiple of `total_stride` and of `mask_patch`), `mask
    [B, *S / mask_patch]` bool (None: nothing masked, as at initialisation) ->
    reconstruction `[B, *S, C]` float32.

    Examples::

        >>> seg = build_model("lightseg_tiny", dims=2, in_channels=1, num_classes=2)
        >>> model = simmim_model(seg, mask_patch=16)
        >>> x = jnp.zeros((2, 64, 64, 1))
        >>> mask = random_block_mask(jax.random.key(0), batch=2, grid=(4, 4), ratio=0.6)
        >>> params = model.init(jax.random.key(1), x, mask)["params"]
    """

    mask_patch: int = 32
    head_dim: int = 16

    @nn.compact
    def __call__(self, x, mask=None, *, train: bool = False):
        self._validate()
        check_input(x, model=self.model_name, dims=self.dims, in_channels=self.in_channels)
        spatial = x.shape[1:-1]
        if any(s % self.total_stride or s % self.mask_patch for s in spatial):
            raise ConfigError(
                f"SimMIM on {self.model_name}: the patch {tuple(spatial)} must be a multiple of "
                f"the encoder's stride {self.total_stride} and of mask_patch {self.mask_patch}."
            )
        token = self.param("mask_token", nn.initializers.zeros, (self.in_channels,))
        x = x.astype(self.dtype)
        if mask is not None:
            voxels = block_mask_voxels(mask, self.mask_patch)[..., None]
            x = jnp.where(voxels, token.astype(self.dtype), x)
        features, _ = self._encode(x, train)
        coarse = self.total_stride // STEM_STRIDE
        y = nn.Dense(coarse**self.dims * self.head_dim, dtype=self.dtype, name="simmim_head")(
            features
        )
        y = depth_to_space(y, coarse, self.dims)
        y = nn.Dense(
            STEM_STRIDE**self.dims * self.in_channels, dtype=self.dtype, name="simmim_head_out"
        )(y)
        return depth_to_space(y, STEM_STRIDE, self.dims).astype(jnp.float32)


def simmim_model(model: nn.Module, mask_patch: int = 32, head_dim: int = 16) -> nn.Module:
    """The SimMIM pretraining model of a registry segmentation model (lightseg sizes)."""
    if not isinstance(model, LightSeg):
        raise ConfigError(
            f"SimMIM pretraining supports the lightseg models; {type(model).__name__} has no "
            "SimMIM encoder here. Set model.name to lightseg_tiny, lightseg_small or "
            "lightseg_base."
        )
    fields = {
        f: getattr(model, f)
        for f in model.__dataclass_fields__
        if f not in ("parent", "name") and model.__dataclass_fields__[f].init
    }
    return SimMIMLightSeg(**fields, mask_patch=mask_patch, head_dim=head_dim)
