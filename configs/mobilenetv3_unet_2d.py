"""U-Net with a MobileNetV3-Small encoder (Howard et al. 2019) on the embedded 2D phantom dataset.

    python -m jaxseg.data.synthetic --dims 2 --out data/demo2d
    python -m jaxseg.train --config configs/mobilenetv3_unet_2d.py --workdir runs/mobilenetv3_unet_2d
"""

import ml_collections

from jaxseg.defaults import base_config


def get_config() -> ml_collections.ConfigDict:
    c = base_config()
    c.data.root = "data/demo2d"  # written by `python -m jaxseg.data.synthetic --dims 2`
    c.data.patch_size = (128, 128)  # the whole 2D slice
    c.data.batch_size = 8

    c.model.name = "mobilenetv3_unet"
    c.model.args.width_mult = 1.0  # scales every encoder channel count

    c.train.steps = 500  # as configs/demo.py; not tuned per model
    c.train.warmup_steps = 50
    c.train.learning_rate = 2e-3
    c.train.eval_every = 250
    c.train.checkpoint_every = 250
    return c
