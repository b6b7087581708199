"""TransMed (axial attention + dynamic convolution U-Net) on the embedded 3D phantom dataset.

    python -m jaxseg.data.synthetic --dims 3 --num-cases 40 --shape 64,64,64 --out data/demo3d
    python -m jaxseg.train --config configs/transmed_3d.py --workdir runs/transmed_3d

Ablations: --config.model.args.variant=unet | axial (TransMed-A) | dynamic (TransMed-D) | full.
"""

import ml_collections

from jaxseg.defaults import phantom_3d_config


def get_config() -> ml_collections.ConfigDict:
    c = phantom_3d_config("transmed")

    c.model.args.variant = "full"  # "unet" | "axial" | "dynamic" | "full"
    c.model.args.features = (24, 48, 96, 192)  # channels per encoder level
    c.model.args.axial_levels = None  # None: the two deepest levels (1/4 and 1/8 resolution)
    c.model.args.axial_depth = 1  # axial blocks (X, Y, Z attention in turn + MLP) per level
    c.model.args.head_dim = 32  # heads = channels // head_dim
    c.model.args.max_len = 64  # relative-bias offsets up to +-63 (longer axes are clipped)
    c.model.args.dynamic_levels = None  # None: every encoder level uses dynamic convs
    c.model.args.num_experts = 4  # expert kernels mixed per sample (CondConv / DynamicConv)
    c.model.args.routing_temperature = 1.0  # softmax temperature of the expert weights
    c.model.args.attention_impl = "auto"  # jaxseg.ops.axial_attention implementation
    c.model.args.dynamic_impl = "auto"  # "map" on CPU, "grouped" elsewhere
    c.model.args.remat = (
        False  # True: recompute conv and axial blocks in the backward pass (less memory)
    )

    return c
