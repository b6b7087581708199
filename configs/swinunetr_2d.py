"""SwinUNETR-48 (MONAI-equivalent; Hatamizadeh et al. 2022) on the embedded 2D phantoms.

The reference lightseg_small is measured against: same data, schedule and loss as
configs/lightseg_small_2d.py, so the two runs' test Dice compare directly.

    python -m jaxseg.data.synthetic --dims 2 --num-cases 60 --shape 128,128 --out data/demo2d
    python -m jaxseg.train --config configs/swinunetr_2d.py --workdir runs/swinunetr_2d
"""

import ml_collections

from jaxseg.defaults import phantom_2d_config


def get_config() -> ml_collections.ConfigDict:
    c = phantom_2d_config("swinunetr")
    c.model.args.feature_size = 48  # the size the lightseg parameter and speed goals refer to
    c.model.args.depths = (2, 2, 2, 2)  # MONAI default
    c.model.args.num_heads = (3, 6, 12, 24)  # MONAI default
    c.model.args.window_size = 7  # MONAI default
    c.model.args.use_v2 = False  # True: SwinUNETR-V2
    c.model.args.dropout_path_rate = 0.0
    c.train.learning_rate = 1e-3  # the lightseg_small_2d schedule, so only the model differs
    return c
