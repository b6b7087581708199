"""The demo: lightseg_tiny on the embedded 2D phantom dataset, sized for 2 CPU cores.

    python -m jaxseg.data.synthetic --dims 2 --out data/demo2d
    python -m jaxseg.train --config configs/demo.py --workdir runs/demo
"""

import ml_collections

from jaxseg.defaults import base_config


def get_config() -> ml_collections.ConfigDict:
    c = base_config()
    c.data.root = "data/demo2d"  # written by `python -m jaxseg.data.synthetic --dims 2`
    c.data.patch_size = (128, 128)  # the whole 2D slice: one window per image at inference
    c.data.batch_size = 8

    c.model.name = "lightseg_tiny"

    c.train.steps = 500  # ~0.3 s a step on 2 cores; validation Dice is ~0.95 by step 300
    c.train.warmup_steps = 50
    c.train.learning_rate = 2e-3
    c.train.eval_every = 250
    c.train.checkpoint_every = 250
    return c
