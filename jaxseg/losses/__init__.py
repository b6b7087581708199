"""Segmentation losses (device side, jit-compatible).

`dice_ce_loss` (`dice_ce.py`) is the nnU-Net default: softmax cross-entropy plus soft batch
Dice. `loss.terms` combines weighted terms over `TERM_NAMES` (`terms.py`): read the config
with `LossConfig.from_config(config.loss)` (it raises ConfigError on a bad one) and call
`segmentation_loss(logits, labels, loss_config, distance_maps=..., step=...)`. The boundary
term's distance maps are computed on the host (`jaxseg.data.distance_maps`). The case
classification term (`loss.class_weight`, `loss.class_target`) is in `classification.py`.
"""

from jaxseg.losses.classification import (
    ClassTarget,
    check_class_head,
    class_ce,
    class_weight,
    foreground_target,
    resolve_class_target,
)
from jaxseg.losses.dice_ce import dice_ce_loss
from jaxseg.losses.terms import (
    TERM_NAMES,
    LossConfig,
    boundary_loss,
    focal_loss,
    iou_loss,
    segmentation_loss,
    tversky_loss,
)

__all__ = [
    "TERM_NAMES",
    "ClassTarget",
    "LossConfig",
    "check_class_head",
    "class_ce",
    "class_weight",
    "foreground_target",
    "resolve_class_target",
    "boundary_loss",
    "dice_ce_loss",
    "focal_loss",
    "iou_loss",
    "segmentation_loss",
    "tversky_loss",
]
