"""SimMIM's pieces against independent references: the voxel layout of depth-to-space (an
explicit index formula), the masked L1 (numpy), the mask count, the invariance to masked
voxels, and the parameter paths a fine-tuning run's init_from matches."""

import jax
import numpy as np
import pytest
from flax.traverse_util import flatten_dict

from jaxseg.errors import ConfigError
from jaxseg.models import build_model
from jaxseg.models.simmim import (
    check_mask_options,
    depth_to_space,
    masked_l1,
    random_block_mask,
    simmim_model,
)


@pytest.mark.parametrize("dims", [2, 3])
def test_depth_to_space_layout(dims):
    b, c = 2, 3
    x = np.random.default_rng(0).normal(size=(1, *(2,) * dims, b**dims * c)).astype(np.float32)
    got = np.asarray(depth_to_space(x, b, dims))
    for idx in np.ndindex(*(2 * b,) * dims):
        coarse = tuple(i // b for i in idx)
        offset = 0
        for i in idx:  # the block offsets, first axis most significant, then the channel
            offset = offset * b + i % b
        np.testing.assert_array_equal(got[(0, *idx)], x[(0, *coarse)][offset * c : offset * c + c])


def test_masked_l1_is_the_mean_over_masked_voxels_and_channels():
    rng = np.random.default_rng(1)
    recon, target = rng.normal(size=(2, 8, 8, 2)), rng.normal(size=(2, 8, 8, 2))
    mask = rng.random((2, 2, 2)) > 0.5
    voxels = np.kron(mask, np.ones((1, 4, 4))).astype(bool)
    want = np.abs(recon - target)[voxels].mean()
    assert float(masked_l1(recon, target, mask, 4)) == pytest.approx(want, rel=1e-5)


def test_random_block_mask_masks_the_ratio_exactly():
    mask = np.asarray(random_block_mask(jax.random.key(0), batch=3, grid=(4, 5), ratio=0.6))
    assert mask.shape == (3, 4, 5)
    np.testing.assert_array_equal(mask.reshape(3, -1).sum(1), [12, 12, 12])
    assert len({m.tobytes() for m in mask}) == 3  # independent per example


def test_masked_voxels_do_not_reach_the_output_and_paths_match_the_segmenter():
    small = dict(embed_dims=(16, 32), depths=(1, 1), num_heads=(1, 2), stem_dims=(8, 8))
    seg = build_model("lightseg_tiny", dims=2, in_channels=2, num_classes=3, **small)
    model = simmim_model(seg, mask_patch=16)
    rng = np.random.default_rng(2)
    x = rng.normal(size=(2, 64, 64, 2)).astype(np.float32)
    mask = np.asarray(random_block_mask(jax.random.key(1), batch=2, grid=(4, 4), ratio=0.5))
    params = jax.jit(model.init)(jax.random.key(2), x, mask)["params"]
    voxels = np.kron(mask, np.ones((1, 16, 16))).astype(bool)[..., None]
    other = np.where(voxels, rng.normal(size=x.shape) * 5, x).astype(np.float32)
    apply = jax.jit(lambda v: model.apply({"params": params}, v, mask))
    run = lambda v: np.asarray(apply(v))
    assert run(x).shape == x.shape
    np.testing.assert_array_equal(run(x), run(other))
    assert not np.allclose(run(x), run(np.where(voxels, x, other + 1.0)))

    # Every pretrained parameter but the mask token and the head is the segmenter's own.
    seg_params = flatten_dict(jax.eval_shape(seg.init, jax.random.key(3), x)["params"], sep="/")
    pre = flatten_dict(params, sep="/")
    new = {k for k in pre if k.split("/")[0] in ("mask_token", "simmim_head", "simmim_head_out")}
    assert new and all(pre[k].shape == seg_params[k].shape for k in set(pre) - new)
    assert any(k.startswith("stage0_block0/") for k in set(pre) - new)


def test_mask_options_are_checked():
    check_mask_options(16, 0.6, (64, 64))
    with pytest.raises(ConfigError, match=r"mask_ratio"):
        check_mask_options(16, 1.0, (64, 64))
    with pytest.raises(ConfigError, match=r"valid sizes are \[4, 8, 16, 32, 64\]"):
        check_mask_options(12, 0.6, (64, 64))
    with pytest.raises(ConfigError, match="lightseg"):
        simmim_model(build_model("unet", dims=2, in_channels=1, num_classes=2))
