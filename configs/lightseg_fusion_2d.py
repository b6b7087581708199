"""lightseg_fusion (multimodal LightSeg, docs/multimodal.md) on the 2-modality 2D phantoms.

    python -m jaxseg.data.synthetic --dims 2 --num-cases 60 --shape 128,128 --modalities 2 --out data/demo2d_mm
    python -m jaxseg.train --config configs/lightseg_fusion_2d.py --workdir runs/lightseg_fusion_2d

One encoder per channel of the dataset (in_channels = the dataset's channels). Ablations
are model.args overrides, e.g.
    --config.model.args.share_encoders=true       (one encoder's weights for every modality)
    --config.model.args.cross_attention=false     (the modalities meet in the fusion only)
    --config.model.args.fusion=dense              (dense fusion conv instead of grouped)
    --config.model.args.modality_mask='((1,0),(0,1))'   (no cross-modal attention pairs)
    --config.model.args.modality_dropout=0.0      (no missing-modality training)
"""

import ml_collections

from jaxseg.defaults import phantom_2d_config


def get_config() -> ml_collections.ConfigDict:
    c = phantom_2d_config("lightseg_fusion")
    c.data.root = "data/demo2d_mm"  # written by `python -m jaxseg.data.synthetic --modalities 2`
    c.model.args.share_encoders = False  # one encoder per modality (True: shared weights)
    c.model.args.cross_attention = True  # cross-scale cross-modal attention at every stage
    c.model.args.modality_mask = None  # [M, M] 0/1 pairs that may interact; None = all
    c.model.args.fusion = "grouped"  # grouped (groups = modalities) or dense fusion conv
    c.model.args.fusion_kernel = 1  # fusion conv kernel (odd); 1 = a (grouped) matmul
    c.model.args.modality_dropout = 0.25  # P(a modality is dropped) per training sample
    c.model.args.num_case_classes = (
        0  # classification head classes (0: none; trained with loss.class_weight > 0)
    )
    c.model.args.window_sizes = (8, 8, 4, 4)  # one per stage; all but the deepest even
    c.model.args.drop_path = 0.1  # stochastic depth, max rate (linear over blocks)
    c.model.args.attention_impl = "auto"  # jaxseg.ops: Pallas kernel on TPU, XLA elsewhere
    c.train.learning_rate = 1e-3
    return c
