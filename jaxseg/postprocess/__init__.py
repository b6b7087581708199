"""Postprocessing of label maps: components, morphology, CRF, label hierarchies, the
validated largest-component decision and the ordered chain of `eval.postprocess`.

Label maps are integer `[X, Y, (Z)]` arrays (any spatial rank), 0 = background.

- `components`: `largest_component`, nnU-Net's `keep_largest`, `keep_components` (top-K,
  minimum volume in mm^3, per class or all foreground together).
- `decision`: `decide_postprocessing` (nnU-Net v2's rule on cross-validation),
  `apply_postprocessing`, `save_decision`, `load_decision`.
- `morphology`: `open_labels`, `close_labels` (radius in mm, ellipsoidal in voxels),
  `fill_holes` (3D, or 2D per slice).
- `crf`: `dense_crf`, `crf_labels`: a mean-field dense CRF in JAX with a local window in mm.
- `hierarchy`: `apply_hierarchy` (`{"core": "inside:tumour"}`), `regions_to_labels`.
- `chain`: `Chain`, the checked step list, and its `save_chain` / `load_chain`.

docs/postprocessing.md describes each step and the order they run in.
"""

from jaxseg.postprocess.chain import STEP_NAMES, Chain, load_chain, save_chain
from jaxseg.postprocess.components import (
    keep_components,
    keep_largest,
    keep_top_components,
    largest_component,
)
from jaxseg.postprocess.crf import crf_labels, dense_crf
from jaxseg.postprocess.decision import (
    apply_postprocessing,
    decide_postprocessing,
    load_decision,
    save_decision,
)
from jaxseg.postprocess.hierarchy import (
    apply_hierarchy,
    labels_to_regions,
    parse_constraints,
    regions_to_labels,
)
from jaxseg.postprocess.morphology import close_labels, ellipsoid_element, fill_holes, open_labels

__all__ = [
    "largest_component",
    "keep_largest",
    "keep_top_components",
    "keep_components",
    "decide_postprocessing",
    "apply_postprocessing",
    "save_decision",
    "load_decision",
    "ellipsoid_element",
    "open_labels",
    "close_labels",
    "fill_holes",
    "dense_crf",
    "crf_labels",
    "parse_constraints",
    "apply_hierarchy",
    "labels_to_regions",
    "regions_to_labels",
    "STEP_NAMES",
    "Chain",
    "save_chain",
    "load_chain",
]
