"""U-Net with a MobileNetV3-Small encoder (Howard et al. 2019) on the embedded 2D phantom dataset.

python -m jaxseg.data.synthetic --dims 2 --out data/demo2d
python -m jaxseg.train --config configs/mobilenetv3_unet_2d.py --workdir runs/mobilenetv3_unet_2d
"""

import ml_collections

from jaxseg.defaults import phantom_2d_config


def get_config() -> ml_collections.ConfigDict:
    c = phantom_2d_config("mobilenetv3_unet")
    c.model.args.width_mult = 1.0  # scales every encoder channel count
    return c
