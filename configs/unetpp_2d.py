"""UNet++ (Zhou et al. 2018) on the embedded 2D phantom dataset.

    python -m jaxseg.data.synthetic --dims 2 --out data/demo2d
    python -m jaxseg.train --config configs/unetpp_2d.py --workdir runs/unetpp_2d
"""

import ml_collections

from jaxseg.defaults import base_config


def get_config() -> ml_collections.ConfigDict:
    c = base_config()
    c.data.root = "data/demo2d"  # written by `python -m jaxseg.data.synthetic --dims 2`
    c.data.patch_size = (128, 128)  # the whole 2D slice
    c.data.batch_size = 8

    c.model.name = "unetpp"
    c.model.args.features = (32, 64, 128, 256)  # channels per depth, full resolution first
    c.model.args.deep_supervision = False  # True: mean of the heads on X[0][1..L-1] (one loss)

    c.train.steps = 500  # as configs/demo.py; not tuned per model
    c.train.warmup_steps = 50
    c.train.learning_rate = 2e-3
    c.train.eval_every = 250
    c.train.checkpoint_every = 250
    return c
