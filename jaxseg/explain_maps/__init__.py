"""Explanation maps of segmenters: Grad-CAM for segmentation and window-attention maps.

Grad-CAM (Selvaraju et al. 2017) for segmentation (Seg-Grad-CAM, Vinogradova et al.
2020): for a layer's activations `A [B, *s, C]` and a scalar score (the class-K logit
summed over a region), the weights are the spatial mean of the score's gradient per
channel, `w_c = mean_s dScore/dA_c`, and the map is `ReLU(sum_c w_c A_c)`, upsampled
linearly to the input grid. `grad_cam(model, variables, x, layer, score_fn)` is the one
implementation: `seg_score` is the segmentation score, a classifier's class logit is
another `score_fn` (tests/test_explain.py checks it against MONAI's `GradCAM`).

The layer is found the Flax way, without wrapping the model: `nn.intercept_methods` sees
every submodule's `__call__` with its module path (`"fuse0"`, `"decoder/fuse0"`, ...);
the interceptor adds a zero `delta` to the chosen layer's output, so the gradient with
respect to `delta` is the gradient with respect to the activation. Candidate layers
(`feature_layers`) are the submodules whose output is a spatial feature map
`[B, *s, C]` with `s_i = ceil(X_i / 2^k)` or `floor(X_i / 2^k)` for an input `[B, *X, C]`
(or X_i first padded to a multiple of a power of two, as lightseg pads its input),
in the order their calls finish (a module called several times, shared weights, counts
at its last call and is explained there).

The default layer (`default_layer`): walking the candidates backwards from the last one
to finish, skip those with `num_classes` channels (the head and any module wrapping it);
the first other one is the last decoder layer before the head. It picks `fuse0`
(lightseg), `ConvNormAct_13` (unet), `decoder` (the mobile U-Nets), `decoder2` (DeepLab's
1/4-resolution decoder), `decoder1` (SwinUNETR), `decoder2` (UNETR), ... for every
registry model.

Window attention (`attention_map`, lightseg only): the softmax(q k^T / sqrt(d) + bias +
mask) of one query token over its window's keys, recomputed from the block's captured
qkv projection, its relative position bias table and the mask and shift it was called
with (plain, shifted and halo windows; top-k and routed attention are not supported),
averaged over heads, placed on the stage's grid and upsampled linearly.

`Explainer` runs either on a file the way predict does: the run's preprocessing, a
region (the predicted class-K mask by default), ONE patch-sized window centred on the
region's centroid (or the query), and the map back to the input grid (zero outside the
window), normalised to [0, 1].
"""

from jaxseg.explain_maps.attention import attention_blocks, attention_map, query_attention
from jaxseg.explain_maps.explainer import Explainer, overlay_png
from jaxseg.explain_maps.gradcam import (
    METHODS,
    LayerInfo,
    check_layer,
    default_layer,
    feature_layers,
    grad_cam,
    normalize_map,
    seg_score,
    upsample_map,
)

__all__ = [
    "LayerInfo",
    "METHODS",
    "feature_layers",
    "default_layer",
    "check_layer",
    "grad_cam",
    "seg_score",
    "upsample_map",
    "normalize_map",
    "attention_blocks",
    "query_attention",
    "attention_map",
    "Explainer",
    "overlay_png",
]
