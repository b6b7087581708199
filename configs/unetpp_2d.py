"""UNet++ (Zhou et al. 2018) on the embedded 2D phantom dataset.

python -m jaxseg.data.synthetic --dims 2 --out data/demo2d
python -m jaxseg.train --config configs/unetpp_2d.py --workdir runs/unetpp_2d
"""

import ml_collections

from jaxseg.defaults import phantom_2d_config


def get_config() -> ml_collections.ConfigDict:
    c = phantom_2d_config("unetpp")
    c.model.args.features = (32, 64, 128, 256)  # channels per depth, full resolution first
    c.model.args.deep_supervision = False  # True: mean of the heads on X[0][1..L-1] (one loss)
    return c
