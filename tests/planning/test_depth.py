"""Each model's depth rule: total stride per stage count and the model.args that cut it,
against the strides of the published architectures (lightseg: a stride-4 stem then one
2x downsampling per stage; U-Net: one per level; SwinUNETR: 32)."""

from jaxseg.planning.depth import model_depth

from .helpers import run_info


def test_model_depths():
    light = model_depth("lightseg_small", 3, run_info(3))
    assert [light.stride(k) for k in (1, 2, 3, 4)] == [4, 8, 16, 32] and light.max_stages == 4
    assert light.args(2) == {"embed_dims": (48, 96), "depths": (2, 2), "num_heads": (3, 6)}
    unet = model_depth("unet", 2, run_info(2))
    assert unet.stride(4) == 8 and unet.args(3) == {"features": (32, 64, 128)}
    swin = model_depth("swinunetr", 3, run_info(3))
    assert swin.kind == "fixed" and swin.stride(1) == 32


def test_stages_keep_four_bottleneck_voxels_on_the_shortest_axis():
    light = model_depth("lightseg_small", 3, run_info(3))
    # ceil(35 / 8) = 5 >= 4 but ceil(35 / 16) = 3: two stages; 12 voxels: the minimum, one.
    assert light.stages_for((36, 50, 35)) == 2
    assert light.stages_for((200, 200, 12)) == 1
    assert light.stages_for((128, 128, 128)) == 4
