"""SimMIM pretraining of lightseg_small's 3D encoder (python -m jaxseg.pretrain).

    python -m jaxseg.data.synthetic --dims 3 --num-cases 40 --shape 64,64,64 --out data/demo3d
    python -m jaxseg.pretrain --config configs/simmim_lightseg_3d.py --workdir runs/pre3d
    python -m jaxseg.train --config configs/lightseg_3d.py --workdir runs/ft3d \
        --config.train.init_from=runs/pre3d

The model and data settings are configs/lightseg_3d.py's, so the fine-tuning run's encoder
has the same parameter paths and shapes. Unlabelled scans: --config.data.unlabelled='("DIR",)'.
"""

from pathlib import Path

import ml_collections

from jaxseg.config import load_config
from jaxseg.defaults import simmim_config


def get_config() -> ml_collections.ConfigDict:
    return simmim_config(load_config(Path(__file__).with_name("lightseg_3d.py")))
