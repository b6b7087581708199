"""DeepLabV3+ (Chen et al. 2018) with a small ResNet backbone on the embedded 2D phantom dataset.

python -m jaxseg.data.synthetic --dims 2 --out data/demo2d
python -m jaxseg.train --config configs/deeplabv3plus_2d.py --workdir runs/deeplabv3plus_2d
"""

import ml_collections

from jaxseg.defaults import phantom_2d_config


def get_config() -> ml_collections.ConfigDict:
    c = phantom_2d_config("deeplabv3plus")
    c.model.args.output_stride = 16  # 16 or 8
    c.model.args.aspp_rates = (6, 12, 18)  # the paper's rates for output stride 16
    c.model.args.aspp_features = 128  # the paper: 256
    return c
