"""TransUNet (Chen et al. 2021), small CPU-sized R50-ViT hybrid on the embedded 2D phantom dataset.

python -m jaxseg.data.synthetic --dims 2 --out data/demo2d
python -m jaxseg.train --config configs/transunet_2d.py --workdir runs/transunet_2d
"""

import ml_collections

from jaxseg.defaults import phantom_2d_config


def get_config() -> ml_collections.ConfigDict:
    c = phantom_2d_config("transunet")
    c.model.args.resnet_width = 16  # the paper's R50: 64
    c.model.args.resnet_depths = (1, 2, 2)  # the paper's R50: (3, 4, 9)
    c.model.args.hidden_size = 192  # ViT-B: 768
    c.model.args.num_layers = 4  # ViT-B: 12
    c.model.args.num_heads = 6  # ViT-B: 12
    c.model.args.mlp_dim = 768  # ViT-B: 3072
    c.model.args.pos_grid = (8, 8)  # token grid of a 128x128 patch (1/16)
    return c
