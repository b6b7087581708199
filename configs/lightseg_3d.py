"""lightseg (small by default) on the embedded 3D phantom dataset.

    python -m jaxseg.data.synthetic --dims 3 --num-cases 40 --shape 64,64,64 --out data/demo3d
    python -m jaxseg.train --config configs/lightseg_3d.py --workdir runs/lightseg_3d

Ablations are model.args overrides, as in configs/lightseg_small_2d.py, e.g. halo keys or
window routing instead of shifted windows:
    --config.model.args.halo=1
    --config.model.args.topk_windows=8
The size is --config.model.name=lightseg_tiny | lightseg_small | lightseg_base.
"""

import ml_collections

from jaxseg.defaults import phantom_3d_config


def get_config() -> ml_collections.ConfigDict:
    c = phantom_3d_config("lightseg_small")

    c.model.args.window_sizes = (4, 4, 2, 2)  # multi-scale windows (4^3 = 64 tokens, then 2^3)
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
    c.model.args.attention_impl = "auto"  # jaxseg.ops implementation

    return c
