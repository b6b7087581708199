"""U-Mamba (Ma, Li & Wang 2024) on the embedded 3D phantoms.

    python -m jaxseg.data.synthetic --dims 3 --num-cases 40 --shape 64,64,64 --out data/demo3d
    python -m jaxseg.train --config configs/umamba_3d.py --workdir runs/umamba_bot_3d

Variants and the ablation as in configs/umamba_2d.py (--config.model.args.variant=enc,
--config.model.args.mixer=identity | conv).
"""

import ml_collections

from jaxseg.defaults import phantom_3d_config


def get_config() -> ml_collections.ConfigDict:
    c = phantom_3d_config("umamba")

    c.model.args.variant = "bot"  # "bot": Mamba at the bottleneck | "enc": after each level
    c.model.args.mixer = "mamba"  # "mamba" | "identity" | "conv" (the ablation)
    c.model.args.features = (32, 64, 128, 256)  # channels per level, full resolution first
    c.model.args.enc_first_level = 1  # variant "enc": level 0 (64^3 tokens) has none
    c.model.args.state_size = 16  # Mamba's N
    c.model.args.expand = 2  # Mamba's E / C
    c.model.args.scan_impl = "auto"  # jaxseg.ops.selective_scan: chunked on TPU
    c.model.args.remat = False  # recompute blocks in the backward pass (less memory)

    return c
