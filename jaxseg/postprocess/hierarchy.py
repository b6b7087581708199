"""Anatomical label constraints, and BraTS-style regions mapped to label values.

Constraints, declared in config as `{child: "inside:parent"}` by class name (e.g.
`{"core": "inside:tumour"}`, or for BraTS `{"enhancing tumour": "inside:edema"}`), form
a forest. In an exclusive label map a child voxel is never labelled as its parent, so
"inside" is read through connectivity: the region of a class is the class and all its
descendants, and a child lies inside its parent when its connected component of the
parent's region (full connectivity) holds at least one voxel of the parent class itself.
A component of the parent's region with no parent voxel (a core blob floating in
background, away from any tumour) is a violation: the child's region there (the child and
its own descendants) is relabelled to `outside`:

- `"background"` (default): 0. A child predicted without its parent is more likely a
  false positive than a missed parent, and relabelling it to the parent would invent a
  parent structure where the model saw none.
- `"parent"`: the parent class, for when the child is trusted more than the parent's edge.

Constraints are applied top-down (parents nearer the root first), so a floating
core-with-enhancing blob is removed as a whole by the core's constraint.

Regions (nnU-Net's region-based training, as for BraTS): `regions_to_labels` maps
per-region sigmoid outputs to label values as nnU-Net's
`convert_probabilities_to_segmentation` does (regions in order, each voxel whose region
probability exceeds the threshold set to that region's class, later regions overwriting
earlier ones); `labels_to_regions` is the inverse map used to train or score regions.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from scipy import ndimage

from jaxseg.errors import ConfigError, DataError
from jaxseg.postprocess.components import check_labels

OUTSIDE = ("background", "parent")
RELATIONS = ("inside",)


def parse_constraints(
    constraints: Mapping[str, str], labels: Mapping[int, str], what: str = "hierarchy"
) -> list[tuple[int, int]]:
    """`{child name: "inside:parent name"}` -> `[(child, parent)]` class indices, parents
    nearer the root first. ConfigError for an undeclared name, a bad relation or a cycle."""
    if not isinstance(constraints, Mapping) or not constraints:
        raise ConfigError(
            f"{what}: constraints={constraints!r}; expected a mapping such as "
            '{"core": "inside:tumour"}.'
        )
    index = {str(name): int(k) for k, name in labels.items() if int(k) != 0}
    declared = ", ".join(repr(n) for n in index)

    def resolve(name: str) -> int:
        if str(name) not in index:
            raise ConfigError(
                f"{what}: {name!r} is not a foreground label the dataset declares "
                f"(dataset.json labels: {declared})."
            )
        return index[str(name)]

    parent_of: dict[int, int] = {}
    for child, rule in constraints.items():
        relation, sep, parent = str(rule).partition(":")
        if not sep or relation.strip() not in RELATIONS or not parent.strip():
            raise ConfigError(
                f"{what}: {child!r}: {rule!r}; write 'inside:<parent label>' "
                f"(relations: {', '.join(RELATIONS)})."
            )
        c, p = resolve(child), resolve(parent.strip())
        if c == p:
            raise ConfigError(f"{what}: {child!r} cannot lie inside itself.")
        parent_of[c] = p
    depth = {}
    for c in parent_of:
        seen, node = [c], c
        while node in parent_of:
            node = parent_of[node]
            if node in seen:
                names = " -> ".join(labels[k] for k in [*seen, node])
                raise ConfigError(f"{what}: the constraints form a cycle ({names}).")
            seen.append(node)
        depth[c] = len(seen) - 1
    return sorted(parent_of.items(), key=lambda cp: (depth[cp[0]], cp[0]))


def _descendants(parent_of: Mapping[int, int], k: int) -> set[int]:
    out = {k}
    changed = True
    while changed:
        new = {c for c, p in parent_of.items() if p in out} - out
        out |= new
        changed = bool(new)
    return out


def apply_hierarchy(
    labels: np.ndarray,
    constraints: Sequence[tuple[int, int]],
    outside: str = "background",
) -> np.ndarray:
    """Relabels every child outside its parent (module docstring). int `[*S]`, same dtype.

    constraints: `parse_constraints`' `[(child, parent)]`, top-down.
    """
    if outside not in OUTSIDE:
        raise ConfigError(f"hierarchy: outside={outside!r}; use one of {OUTSIDE}.")
    out = check_labels(labels, "hierarchy").copy()
    parent_of = dict(constraints)
    structure = ndimage.generate_binary_structure(out.ndim, out.ndim)
    for child, parent in constraints:
        child_region = np.isin(out, list(_descendants(parent_of, child)))
        if not child_region.any():
            continue
        region = np.isin(out, list(_descendants(parent_of, parent)))
        components, n = ndimage.label(region, structure=structure)
        has_parent = np.zeros(n + 1, bool)
        has_parent[np.unique(components[out == parent])] = True
        has_parent[0] = True  # not part of the region: nothing to relabel
        bad = child_region & ~has_parent[components]
        out[bad] = 0 if outside == "background" else parent
    return out


def labels_to_regions(labels: np.ndarray, regions: Sequence[Sequence[int]]) -> np.ndarray:
    """int `[*S]` -> bool `[*S, R]`: region r holds the voxels whose class is in
    `regions[r]` (BraTS: whole tumour, tumour core, enhancing tumour)."""
    labels = check_labels(labels, "labels_to_regions")
    return np.stack([np.isin(labels, list(r)) for r in regions], axis=-1)


def regions_to_labels(
    region_probs: np.ndarray, region_classes: Sequence[int], threshold: float = 0.5
) -> np.ndarray:
    """Region outputs `[*S, R]` (sigmoid probabilities) -> class map `[*S]` uint8.

    region_classes: the class each region writes, in order (nnU-Net's
    `regions_class_order`); a later region overwrites an earlier one where both exceed
    `threshold` (strictly), so nested regions go outermost first.
    """
    region_probs = np.asarray(region_probs)
    classes: list[Any] = list(region_classes)
    if region_probs.shape[-1] != len(classes):
        raise DataError(
            f"regions_to_labels: {region_probs.shape[-1]} region outputs but "
            f"{len(classes)} region classes {classes}."
        )
    out = np.zeros(
        region_probs.shape[:-1], np.uint8 if max(classes, default=0) < 256 else np.uint16
    )
    for r, k in enumerate(classes):
        out[region_probs[..., r] > threshold] = k
    return out
