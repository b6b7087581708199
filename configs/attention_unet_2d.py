"""Attention U-Net (Oktay et al. 2018) on the embedded 2D phantom dataset.

python -m jaxseg.data.synthetic --dims 2 --out data/demo2d
python -m jaxseg.train --config configs/attention_unet_2d.py --workdir runs/attention_unet_2d
"""

import ml_collections

from jaxseg.defaults import phantom_2d_config


def get_config() -> ml_collections.ConfigDict:
    c = phantom_2d_config("attention_unet")
    c.model.args.features = (32, 64, 128, 256)  # channels per level, full resolution first
    return c
