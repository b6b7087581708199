"""SwinUNETR (MONAI-equivalent; Hatamizadeh et al. 2022) on the embedded 3D phantom dataset.

    python -m jaxseg.data.synthetic --dims 3 --shape 64,64,64 --out data/demo3d
    python -m jaxseg.train --config configs/swinunetr_3d.py --workdir runs/swinunetr_3d

MONAI pretrained weights load with `jaxseg.models.convert.from_monai` when model.args match
the checkpoint (e.g. feature_size=48 for the BTCV/BraTS checkpoints).
"""

import ml_collections

from jaxseg.defaults import phantom_3d_config


def get_config() -> ml_collections.ConfigDict:
    c = phantom_3d_config("swinunetr")
    c.data.batch_size = 1  # paper: 1 per GPU

    c.model.args.feature_size = 24  # MONAI's default; the paper's large model: 48
    c.model.args.depths = (2, 2, 2, 2)  # MONAI default
    c.model.args.num_heads = (3, 6, 12, 24)  # MONAI default
    c.model.args.window_size = 7  # MONAI default
    c.model.args.use_v2 = False  # True: SwinUNETR-V2 (a residual conv block before each stage)
    c.model.args.downsample = "merging"  # "merging" (v0.9 channel order) or "mergingv2"
    c.model.args.dropout_path_rate = 0.0  # stochastic depth, linear over the blocks

    c.train.learning_rate = 1e-4  # the paper's AdamW lr
    c.train.weight_decay = 1e-5  # the paper's
    return c
