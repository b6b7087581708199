"""HC-Mamba (Xu 2024) on the embedded 2D phantoms: a U-Net of HC blocks (a Mamba branch
beside dilated and depthwise-separable convolutions).

    python -m jaxseg.data.synthetic --dims 2 --num-cases 60 --shape 128,128 --out data/demo2d
    python -m jaxseg.train --config configs/hcmamba_2d.py --workdir runs/hcmamba_2d
"""

import ml_collections

from jaxseg.defaults import phantom_2d_config


def get_config() -> ml_collections.ConfigDict:
    c = phantom_2d_config("hcmamba")
    c.model.args.features = (32, 64, 128, 256)  # channels per level, full resolution first
    c.model.args.hc_first_level = 1  # HC blocks from level 1 on (level 0: plain convs)
    c.model.args.dilations = (1, 2, 3)  # the conv branch's hybrid dilation rates
    c.model.args.state_size = 16  # Mamba's N
    c.model.args.expand = 2  # Mamba's E / C
    c.model.args.scan_impl = "auto"  # jaxseg.ops.selective_scan: chunked on TPU
    c.model.args.depthwise_impl = "auto"  # jaxseg.ops.depthwise_conv
    c.train.learning_rate = 1e-3
    return c
