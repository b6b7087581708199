"""SimMIM pretraining of lightseg_small's 2D encoder (python -m jaxseg.pretrain).

    python -m jaxseg.data.synthetic --dims 2 --num-cases 60 --shape 128,128 --out data/demo2d
    python -m jaxseg.pretrain --config configs/simmim_lightseg_2d.py --workdir runs/pre2d
    python -m jaxseg.train --config configs/lightseg_small_2d.py --workdir runs/ft2d \
        --config.train.init_from=runs/pre2d

The model and data settings are configs/lightseg_small_2d.py's, so the fine-tuning run's encoder
has the same parameter paths and shapes. Unlabelled scans: --config.data.unlabelled='("DIR",)'.
"""

from pathlib import Path

import ml_collections

from jaxseg.config import load_config
from jaxseg.defaults import simmim_config


def get_config() -> ml_collections.ConfigDict:
    return simmim_config(load_config(Path(__file__).with_name("lightseg_small_2d.py")))
