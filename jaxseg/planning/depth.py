"""How deep each model is and what each depth costs in stride (docs/planning.md, "Depth").

`model_depth(name, dims, info)` reads the depth fields of a built (not initialised) model;
the `Depth` it returns gives the total stride of k stages, the deepest k a shape allows,
and the `model.args` that cut the model to k stages.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from jaxseg import models
from jaxseg.workdir import RunInfo

__all__ = ["MIN_FEATURE_MAP", "Depth", "model_depth"]

MIN_FEATURE_MAP = 4  # bottleneck voxels per axis (nnU-Net's featuremap_min_edge_length)


class Depth:
    """How deep a model is and what its depth costs in stride.

    kind "lightseg": stages 1..K, total stride 4 * 2^(k-1) (embed_dims, depths, num_heads);
    kind "levels": U-Net levels 2..K, stride 2^(k-1) (features); kind "fixed": one depth.
    """

    def __init__(self, kind: str, base: dict, max_stages: int, min_stages: int, stride: int = 0):
        self.kind, self.base = kind, base
        self.max_stages, self.min_stages, self._stride = max_stages, min_stages, stride

    def stride(self, k: int) -> int:
        if self.kind == "lightseg":
            return 4 * 2 ** (k - 1)
        if self.kind == "levels":
            return 2 ** (k - 1)
        return self._stride

    def stages_for(self, shape: Sequence[float]) -> int:
        """The deepest stage count whose bottleneck, ceil(size / stride) as the patch is padded
        up, keeps >= MIN_FEATURE_MAP voxels on the shortest axis of `shape` (nnU-Net pools an
        axis while it has >= 8 voxels); at least the shallowest the model allows."""
        for k in range(self.max_stages, self.min_stages - 1, -1):
            if math.ceil(min(shape) / self.stride(k) - 1e-9) >= MIN_FEATURE_MAP:
                return k
        return self.min_stages

    def args(self, k: int) -> dict:
        """model.args for `k` stages (the depth fields, cut to k)."""
        b = self.base
        if self.kind == "fixed":
            return {}
        if self.kind == "levels":
            out = {"features": tuple(b["features"][:k])}
            for key in ("axial_levels", "dynamic_levels"):
                if b.get(key) is not None:
                    out[key] = tuple(i for i in b[key] if i < k)
            return out
        out = {key: tuple(b[key][:k]) for key in ("embed_dims", "depths", "num_heads")}
        if b["window_sizes"] is not None:
            out["window_sizes"] = tuple(b["window_sizes"][:k])
        if b["cross_window_layers"] is not None:
            total = sum(b["depths"][:k])
            out["cross_window_layers"] = tuple(i for i in b["cross_window_layers"] if i < total)
        if isinstance(b["decoder_refine_kernel"], (tuple, list)):
            out["decoder_refine_kernel"] = tuple(b["decoder_refine_kernel"][: k + 1])
        return out


def model_depth(name: str, dims: int, info: RunInfo, args: dict | None = None) -> Depth:
    """The depth rules of model `name` (built, not initialised, to read its fields)."""
    m = models.build_model(
        name, dims=dims, in_channels=info.in_channels, num_classes=info.num_classes, **(args or {})
    )
    if isinstance(m, models.LightSeg):
        fields = ("embed_dims", "depths", "num_heads", "window_sizes", "cross_window_layers")
        base = {f: getattr(m, f) for f in (*fields, "decoder_refine_kernel")}
        return Depth("lightseg", base, len(m.embed_dims), 1)
    levels = (models.UNet, models.ResUNet, models.AttentionUNet, models.UNetPlusPlus)
    if isinstance(m, (*levels, models.TransMed)):
        base = {f: getattr(m, f, None) for f in ("features", "axial_levels", "dynamic_levels")}
        return Depth("levels", base, len(m.features), 2)
    stride = getattr(m, "total_stride", None)
    if stride is None:
        if isinstance(m, models.MobileNetV3UNet):
            stride = 2 ** (1 + sum(row[5] == 2 for row in m.blocks))
        elif isinstance(m, models.ShuffleNetV2UNet):
            stride = 2 ** (len(m.stage_features) + 2)
        else:  # TransUNet, UNETR, DeepLabV3+: a stride-16 encoder
            stride = 16
    return Depth("fixed", {}, 1, 1, int(stride))
