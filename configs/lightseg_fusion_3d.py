"""lightseg_fusion (multimodal LightSeg, docs/multimodal.md) on the 2-modality 3D phantoms.

    python -m jaxseg.data.synthetic --dims 3 --num-cases 40 --shape 64,64,64 --modalities 2 --out data/demo3d_mm
    python -m jaxseg.train --config configs/lightseg_fusion_3d.py --workdir runs/lightseg_fusion_3d

The BraTS subset in ../shared/data (FLAIR and T1c) trains with
--config.data.root=../shared/data/brats2015_subset. Ablations as in lightseg_fusion_2d.py.
"""

import ml_collections

from jaxseg.defaults import phantom_3d_config


def get_config() -> ml_collections.ConfigDict:
    c = phantom_3d_config("lightseg_fusion")
    c.data.root = "data/demo3d_mm"  # written by `python -m jaxseg.data.synthetic --modalities 2`

    c.model.args.share_encoders = False  # one encoder per modality (True: shared weights)
    c.model.args.cross_attention = True  # cross-scale cross-modal attention at every stage
    c.model.args.modality_mask = None  # [M, M] 0/1 pairs that may interact; None = all
    c.model.args.fusion = "grouped"  # grouped (groups = modalities) or dense fusion conv
    c.model.args.fusion_kernel = 1  # fusion conv kernel (odd); 1 = a (grouped) matmul
    c.model.args.modality_dropout = 0.25  # P(a modality is dropped) per training sample
    c.model.args.num_case_classes = (
        0  # classification head classes (0: none; trained with loss.class_weight > 0)
    )
    c.model.args.window_sizes = (4, 4, 2, 2)  # one per stage; all but the deepest even
    c.model.args.drop_path = 0.1  # stochastic depth, max rate (linear over blocks)
    c.model.args.attention_impl = "auto"  # jaxseg.ops implementation

    return c
