"""DeepLabV3+ (Chen et al. 2018) with a small ResNet backbone on the embedded 2D phantom dataset.

    python -m jaxseg.data.synthetic --dims 2 --out data/demo2d
    python -m jaxseg.train --config configs/deeplabv3plus_2d.py --workdir runs/deeplabv3plus_2d
"""

import ml_collections

from jaxseg.defaults import base_config


def get_config() -> ml_collections.ConfigDict:
    c = base_config()
    c.data.root = "data/demo2d"  # written by `python -m jaxseg.data.synthetic --dims 2`
    c.data.patch_size = (128, 128)  # the whole 2D slice
    c.data.batch_size = 8

    c.model.name = "deeplabv3plus"
    c.model.args.output_stride = 16  # 16 or 8
    c.model.args.aspp_rates = (6, 12, 18)  # the paper's rates for output stride 16
    c.model.args.aspp_features = 128  # the paper: 256

    c.train.steps = 500  # as configs/demo.py; not tuned per model
    c.train.warmup_steps = 50
    c.train.learning_rate = 2e-3
    c.train.eval_every = 250
    c.train.checkpoint_every = 250
    return c
