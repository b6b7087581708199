"""UNETR (MONAI-equivalent; Hatamizadeh et al. 2022) on the embedded 3D phantom dataset.

    python -m jaxseg.data.synthetic --dims 3 --shape 64,64,64 --out data/demo3d
    python -m jaxseg.train --config configs/unetr_3d.py --workdir runs/unetr_3d

UNETR's learned position embeddings belong to `img_size`; keep it equal to the patch size
(then sliding-window inference always runs at that size). A CPU-sized ViT by default;
the paper's ViT-B/16 is hidden_size 768, mlp_dim 3072, num_heads 12 (MONAI's defaults).
"""

import ml_collections

from jaxseg.defaults import phantom_3d_config


def get_config() -> ml_collections.ConfigDict:
    c = phantom_3d_config("unetr")

    c.model.args.img_size = (
        64,
        64,
        64,
    )  # = data.patch_size: position embeddings for a 4^3 patch grid
    c.model.args.feature_size = 16  # MONAI default
    c.model.args.hidden_size = 384  # paper/MONAI: 768
    c.model.args.mlp_dim = 1536  # paper/MONAI: 3072
    c.model.args.num_heads = 6  # paper/MONAI: 12
    c.model.args.proj_type = "conv"  # "conv" or "perceptron"
    c.model.args.norm_name = "instance"  # MONAI default
    c.model.args.dropout_rate = 0.0  # ViT dropout (patch embedding, attention, MLP)
    c.model.args.remat = (
        False  # True: recompute ViT and conv blocks in the backward pass (less memory)
    )

    c.train.learning_rate = 1e-4  # the paper's AdamW lr
    c.train.weight_decay = 1e-5
    return c
