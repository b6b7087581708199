"""The demo: lightseg_tiny on the embedded 2D phantom dataset, sized for 2 CPU cores.

python -m jaxseg.data.synthetic --dims 2 --out data/demo2d
python -m jaxseg.train --config configs/demo.py --workdir runs/demo
"""

import ml_collections

from jaxseg.defaults import phantom_2d_config


def get_config() -> ml_collections.ConfigDict:
    c = phantom_2d_config("lightseg_tiny")
    return c
