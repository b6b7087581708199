"""U-Net with a ShuffleNetV2 0.5x encoder (Ma et al. 2018) on the embedded 2D phantom dataset.

    python -m jaxseg.data.synthetic --dims 2 --out data/demo2d
    python -m jaxseg.train --config configs/shufflenetv2_unet_2d.py --workdir runs/shufflenetv2_unet_2d
"""

import ml_collections

from jaxseg.defaults import base_config


def get_config() -> ml_collections.ConfigDict:
    c = base_config()
    c.data.root = "data/demo2d"  # written by `python -m jaxseg.data.synthetic --dims 2`
    c.data.patch_size = (128, 128)  # the whole 2D slice
    c.data.batch_size = 8

    c.model.name = "shufflenetv2_unet"
    c.model.args.stage_features = (48, 96, 192)  # 0.5x; 1.0x is (116, 232, 464)
    c.model.args.stage_repeats = (4, 8, 4)  # units per stage, as in the paper

    c.train.steps = 500  # as configs/demo.py; not tuned per model
    c.train.warmup_steps = 50
    c.train.learning_rate = 2e-3
    c.train.eval_every = 250
    c.train.checkpoint_every = 250
    return c
