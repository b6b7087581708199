"""lightseg_small (the project's lightweight window-attention Transformer) on the 2D phantoms.

    python -m jaxseg.data.synthetic --dims 2 --num-cases 60 --shape 128,128 --out data/demo2d
    python -m jaxseg.train --config configs/lightseg_small_2d.py --workdir runs/lightseg_small_2d

Every mechanism is a model.args switch, so an ablation is one override, e.g.
    --config.model.args.shift_windows=false      (no overlapping windows)
    --config.model.args.halo=2                   (overlap by halo keys instead of shifted windows)
    --config.model.args.cross_window_layers=()   (no cross-window exchange)
    --config.model.args.topk=16                  (dynamic sparse attention)
    --config.model.args.topk_windows=4           (dynamic sparse attention by window routing)
    --config.model.args.share_params=true        (one block's weights per stage)
    --config.model.args.rank=32                  (low-rank projections)
"""

import ml_collections

from jaxseg.defaults import phantom_2d_config


def get_config() -> ml_collections.ConfigDict:
    c = phantom_2d_config("lightseg_small")
    c.model.args.window_sizes = (8, 8, 4, 4)  # multi-scale windows: one size per stage
    c.model.args.shift_windows = (
        None  # Swin shifted windows on every second block; None = on unless halo or routing
    )
    c.model.args.halo = (
        0  # halo keys: windows attend to the window grown by `halo` per side; 0 = off
    )
    c.model.args.topk_windows = (
        None  # window routing: own window + the best topk_windows - 1; None = off
    )
    c.model.args.cross_window_layers = (
        None  # None: an exchange after each stage's last block; (): off
    )
    c.model.args.global_tokens = 1  # learnable tokens in each cross-window exchange
    c.model.args.topk = None  # keys per query (dynamic sparse attention); None = dense
    c.model.args.share_params = False  # share attention + MLP weights across a stage's blocks
    c.model.args.rank = None  # low-rank factorised projections; None = full rank
    c.model.args.drop_path = 0.1  # stochastic depth, max rate (linear over blocks)
    c.model.args.attention_impl = "auto"  # jaxseg.ops: Pallas kernel on TPU, XLA elsewhere
    c.train.learning_rate = 1e-3
    return c
