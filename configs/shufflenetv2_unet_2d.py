"""U-Net with a ShuffleNetV2 0.5x encoder (Ma et al. 2018) on the embedded 2D phantom dataset.

python -m jaxseg.data.synthetic --dims 2 --out data/demo2d
python -m jaxseg.train --config configs/shufflenetv2_unet_2d.py --workdir runs/shufflenetv2_unet_2d
"""

import ml_collections

from jaxseg.defaults import phantom_2d_config


def get_config() -> ml_collections.ConfigDict:
    c = phantom_2d_config("shufflenetv2_unet")
    c.model.args.stage_features = (48, 96, 192)  # 0.5x; 1.0x is (116, 232, 464)
    c.model.args.stage_repeats = (4, 8, 4)  # units per stage, as in the paper
    return c
