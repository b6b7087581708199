"""U-Mamba (Ma, Li & Wang 2024) on the embedded 2D phantoms: a residual conv U-Net with
bidirectional Mamba blocks.

    python -m jaxseg.data.synthetic --dims 2 --num-cases 60 --shape 128,128 --out data/demo2d
    python -m jaxseg.train --config configs/umamba_2d.py --workdir runs/umamba_bot_2d

U-Mamba Enc and the ablation of issue 17 (the same network without its Mamba blocks) are
one override each:
    --config.model.args.variant=enc              (a Mamba block after every encoder level >= 1)
    --config.model.args.mixer=identity           (Mamba blocks removed)
    --config.model.args.mixer=conv               (Mamba blocks replaced by residual conv blocks)
"""

import ml_collections

from jaxseg.defaults import phantom_2d_config


def get_config() -> ml_collections.ConfigDict:
    c = phantom_2d_config("umamba")
    c.model.args.variant = "bot"  # "bot": Mamba at the bottleneck | "enc": after each level
    c.model.args.mixer = "mamba"  # "mamba" | "identity" | "conv" (the ablation)
    c.model.args.features = (32, 64, 128, 256)  # channels per level, as configs/unet's
    c.model.args.enc_first_level = 1  # variant "enc": level 0 (full resolution) has none
    c.model.args.state_size = 16  # Mamba's N
    c.model.args.expand = 2  # Mamba's E / C
    c.model.args.scan_impl = "auto"  # jaxseg.ops.selective_scan: chunked on TPU
    c.train.learning_rate = 1e-3
    return c
