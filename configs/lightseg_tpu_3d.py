"""lightseg shaped for the TPU MXU: 128-token windows and 64/128-wide heads (3D).

The default lightseg windows (4x4x4 = 64 tokens) and head dims (16-32) leave most of a
128x128 MXU idle in the attention matmuls (`python -m pallas_kernels.report`, docs/kernels.md):
useful work is capped by N/128 along the tokens and by D/128 along the head dim. Here
8x8x2 windows give N = 128 and the heads are 64 and 128 wide.

    python -m jaxseg.train --config configs/lightseg_tpu_3d.py --workdir gs://bucket/run
"""

import ml_collections

from jaxseg.defaults import base_config


def get_config() -> ml_collections.ConfigDict:
    c = base_config()
    c.data.root = "data/demo3d"  # any 3D dataset.json folder
    c.data.patch_size = (128, 128, 128)  # stage maps 32^3, 16^3, 8^3, 4^3: windows tile exactly
    c.data.batch_size = 8  # global, split over the mesh
    c.model.name = "lightseg_base"
    c.model.args.embed_dims = (64, 128, 256, 512)
    c.model.args.num_heads = (1, 1, 2, 4)  # head dims 64, 128, 128, 128
    c.model.args.window_sizes = ((8, 8, 2), (8, 8, 2), (8, 8, 2), (2, 2, 2))  # 128 tokens
    c.model.args.attention_impl = "auto"  # the Pallas kernels on TPU
    c.model.args.remat = True  # 3D activations: recompute each block in the backward pass
    c.train.compute_dtype = "bfloat16"
    c.train.learning_rate = 1e-3
    return c
