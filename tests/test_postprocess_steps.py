"""The postprocessing steps against scikit-image and scipy on constructed cases: opening and
closing (skimage binary_opening/closing with ball/disk and skimage.draw's ellipsoid),
hole filling (scipy binary_fill_holes), top-K / minimum-volume components (skimage
labelling and areas), label hierarchies and BraTS regions (hand-built maps)."""

import numpy as np
import pytest
from scipy import ndimage
from skimage import draw, measure, morphology

from jaxseg import postprocess as pp
from jaxseg.errors import ConfigError, DataError


def _blobs(shape, seed, density=0.5, sigma=1.5):
    rng = np.random.default_rng(seed)
    field = ndimage.gaussian_filter(rng.standard_normal(shape), sigma)
    return field > np.quantile(field, 1 - density * 0.5)


# ----------------------------------------------------------------------------- morphology


def _opening(mask, footprint):
    # mode="ignore": outside the image counts as max for erosion, min for dilation, as
    # skimage's (deprecated) binary_opening/binary_closing did.
    return morphology.opening(mask, footprint, mode="ignore")


def _closing(mask, footprint):
    return morphology.closing(mask, footprint, mode="ignore")


@pytest.mark.parametrize("radius", [0, 1, 2, 3])
def test_element_is_skimage_ball_and_disk(radius):
    np.testing.assert_array_equal(pp.ellipsoid_element(radius, (1.0, 1.0)), morphology.disk(radius))
    np.testing.assert_array_equal(
        pp.ellipsoid_element(radius, (1.0, 1.0, 1.0)), morphology.ball(radius)
    )


def test_anisotropic_element_is_skimage_ellipsoid():
    # skimage.draw.ellipsoid(a, b, c, spacing): the grid points of spacing s within the
    # ellipsoid of semi-axes (a, b, c) in mm, padded by one voxel on each side.
    spacing = (0.7, 1.0, 2.5)
    want = _crop(draw.ellipsoid(3.0, 3.0, 3.0, spacing=spacing))
    got = pp.ellipsoid_element(3.0, spacing)
    assert got.shape == (9, 7, 3)
    np.testing.assert_array_equal(_crop(got), want)
    assert _crop(got).shape == got.shape  # the element has no empty border


def _crop(mask):
    return mask[ndimage.find_objects(mask.astype(np.uint8))[0]]


@pytest.mark.parametrize(
    "shape, footprint", [((40, 37), morphology.disk), ((18, 20, 16), morphology.ball)]
)
@pytest.mark.parametrize("radius", [1, 2])
def test_open_close_match_skimage(shape, footprint, radius):
    spacing = (1.0,) * len(shape)
    for seed in range(3):
        mask = _blobs(shape, seed)  # blobs touch the border: the border rule is tested too
        labels = mask.astype(np.uint8)
        opened = pp.open_labels(labels, spacing, radius)
        closed = pp.close_labels(labels, spacing, radius)
        assert opened.dtype == np.uint8
        np.testing.assert_array_equal(opened == 1, _opening(mask, footprint(radius)))
        np.testing.assert_array_equal(closed == 1, _closing(mask, footprint(radius)))
        assert (opened != labels).any() and (closed != labels).any()


def test_open_close_anisotropic_and_per_class():
    spacing = (1.0, 1.0, 3.0)
    element = draw.ellipsoid(2.0, 2.0, 2.0, spacing=spacing)[1:-1, 1:-1, 1:-1]
    a = _blobs((20, 22, 10), 4)
    b = _blobs((20, 22, 10), 5) & ~a
    labels = np.zeros(a.shape, np.int32)
    labels[a], labels[b] = 1, 2
    # Opening class 1 only: class 2 untouched, removed class-1 voxels become background.
    got = pp.open_labels(labels, spacing, 2.0, classes=[1])
    keep = _opening(a, element)
    np.testing.assert_array_equal(got == 1, keep)
    np.testing.assert_array_equal(got == 2, b)
    np.testing.assert_array_equal(got == 0, ~keep & ~b)
    # Closing both classes, 1 then 2: each adds only background voxels.
    got = pp.close_labels(labels, spacing, 2.0)
    want = labels.copy()
    want[_closing(a, element) & (want == 0)] = 1
    want[_closing(want == 2, element) & (want == 0)] = 2
    np.testing.assert_array_equal(got, want)
    assert (got[labels == 2] == 2).all() and (got[labels == 1] == 1).all()


@pytest.mark.parametrize("shape", [(48, 45), (20, 22, 18)])
def test_fill_holes_matches_scipy(shape):
    mask = ~_blobs(shape, 7, density=0.6)  # the complement of blobs has many holes
    got = pp.fill_holes(mask.astype(np.int16))
    assert got.dtype == np.int16
    want = ndimage.binary_fill_holes(mask)
    assert (want != mask).any()
    np.testing.assert_array_equal(got == 1, want)


def test_fill_holes_per_slice_and_other_classes():
    mask = ~_blobs((14, 16, 12), 8, density=0.6)
    got = pp.fill_holes(mask.astype(np.uint8), axis=2)
    want = np.stack([ndimage.binary_fill_holes(mask[:, :, z]) for z in range(12)], axis=2)
    np.testing.assert_array_equal(got == 1, want)
    assert (want != ndimage.binary_fill_holes(mask)).any()  # slice-wise differs from 3D
    # A ring of class 1 around background and a class-2 voxel: the background fills, the
    # class-2 voxel stays.
    ring = np.zeros((7, 7), np.uint8)
    ring[1:6, 1:6] = 1
    ring[2:5, 2:5] = 0
    ring[3, 3] = 2
    got = pp.fill_holes(ring, classes=[1])
    want = ring.copy()
    want[2:5, 2:5] = 1
    want[3, 3] = 2
    np.testing.assert_array_equal(got, want)
    with pytest.raises(ConfigError, match="axis"):
        pp.fill_holes(ring, axis=2)


def test_negative_radius_is_an_error():
    with pytest.raises(ConfigError, match="radius"):
        pp.open_labels(np.zeros((4, 4), np.uint8), (1, 1), -1.0)
    with pytest.raises(ConfigError, match="radius"):
        pp.ellipsoid_element(float("nan"), (1, 1))


# ----------------------------------------------------------------------------- components


def _reference_keep(mask, spacing, top_k, min_volume):
    """skimage labelling and areas: components ranked by area (stable), kept if in the
    top K and of at least min_volume mm^3; None when the K-th area is tied."""
    lab = measure.label(mask, connectivity=mask.ndim)
    areas = np.array([r.area for r in measure.regionprops(lab)], float)
    order = np.argsort(-areas, kind="stable")
    if top_k is not None and top_k < len(areas) and areas[order[top_k - 1]] == areas[order[top_k]]:
        return None
    keep = np.zeros(len(areas) + 1, bool)
    ranked = order[:top_k] if top_k is not None else order
    voxel = float(np.prod(spacing))
    for i in ranked:
        keep[i + 1] = areas[i] * voxel >= min_volume
    return keep[lab]


@pytest.mark.parametrize(
    "shape, spacing", [((50, 47), (0.5, 2.0)), ((20, 18, 16), (1.0, 1.0, 2.0))]
)
@pytest.mark.parametrize("top_k, min_volume", [(2, 0.0), (None, 6.0), (3, 4.0)])
def test_keep_components_matches_skimage(shape, spacing, top_k, min_volume):
    checked = 0
    for seed in range(5):
        mask = _blobs(shape, seed, density=0.3, sigma=1.0)
        want = _reference_keep(mask, spacing, top_k, min_volume)
        if want is None:
            continue
        got = pp.keep_components(
            mask.astype(np.uint8), spacing, top_k=top_k, min_volume_mm3=min_volume
        )
        np.testing.assert_array_equal(got == 1, want)
        assert (got != mask).any()
        checked += 1
    assert checked >= 3


def test_keep_components_per_class_and_foreground():
    labels = np.zeros((8, 12), np.uint8)
    labels[0:3, 0:3] = 1  # class 1: 9 voxels
    labels[0:3, 3:5] = 2  # class 2, touching it: 6 voxels; with it one 15-voxel component
    labels[6:8, 0:2] = 1  # class 1: 4 voxels
    labels[6:7, 6:9] = 2  # class 2: 3 voxels
    labels[5:8, 10:12] = 2  # class 2: 6 voxels (tied with the first, which comes first)
    per_class = pp.keep_components(labels, (1, 1), top_k=1)
    want = labels.copy()
    want[6:8, 0:2] = 0
    want[6:7, 6:9] = 0
    want[5:8, 10:12] = 0
    np.testing.assert_array_equal(per_class, want)
    only_2 = pp.keep_components(labels, (1, 1), min_volume_mm3=5, classes=[2])
    want = labels.copy()
    want[6:7, 6:9] = 0
    np.testing.assert_array_equal(only_2, want)
    fg = pp.keep_components(labels, (1, 1), top_k=1, foreground=True)
    want = np.zeros_like(labels)
    want[0:3, 0:5] = labels[0:3, 0:5]
    np.testing.assert_array_equal(fg, want)
    # mm^3: a 4-voxel component of 0.5 mm^3 voxels is 2 mm^3, kept at exactly 2.
    kept = pp.keep_components(labels, (0.5, 1.0), min_volume_mm3=2.0, classes=[1])
    np.testing.assert_array_equal(kept == 1, labels == 1)
    with pytest.raises(DataError, match="float"):
        pp.keep_components(labels.astype(float), (1, 1), top_k=1)


# ----------------------------------------------------------------------------- hierarchy

LABELS = {0: "background", 1: "tumour", 2: "core", 3: "enhancing"}


def test_hierarchy_relabels_floating_children():
    m = np.zeros((10, 14), np.uint8)
    m[1:6, 1:6] = 1
    m[2:4, 2:4] = 2  # core inside the tumour: kept
    m[2, 3] = 3  # enhancing inside that core: kept
    m[6, 6] = 2  # core touching the tumour diagonally (full connectivity): kept
    m[1:3, 9:12] = 2  # a floating core blob ...
    m[2, 10] = 3  # ... with enhancing inside it: both go with the core's constraint
    m[7:9, 9:11] = 3  # a floating enhancing blob: goes with the core's constraint
    m[5, 2] = 3  # enhancing inside the tumour but not in any core: goes (not inside core)
    rules = pp.parse_constraints({"enhancing": "inside:core", "core": "inside:tumour"}, LABELS)
    assert rules == [(2, 1), (3, 2)]  # top-down
    got = pp.apply_hierarchy(m, rules)
    want = m.copy()
    want[1:3, 9:12] = 0
    want[7:9, 9:11] = 0
    want[5, 2] = 0
    np.testing.assert_array_equal(got, want)
    to_parent = pp.apply_hierarchy(m, rules, outside="parent")
    want = m.copy()
    want[1:3, 9:12] = 1  # the floating core (with its enhancing) becomes tumour
    want[7:9, 9:11] = 1  # enhancing's region outside tumour: the core rule makes it tumour
    want[5, 2] = 2
    np.testing.assert_array_equal(to_parent, want)


def test_hierarchy_errors():
    with pytest.raises(ConfigError, match="'necrosis' is not a foreground label.*'tumour'"):
        pp.parse_constraints({"necrosis": "inside:tumour"}, LABELS)
    with pytest.raises(ConfigError, match="'edema' is not"):
        pp.parse_constraints({"core": "inside:edema"}, LABELS)
    with pytest.raises(ConfigError, match="cycle"):
        pp.parse_constraints({"core": "inside:tumour", "tumour": "inside:core"}, LABELS)
    with pytest.raises(ConfigError, match="inside:<parent"):
        pp.parse_constraints({"core": "around:tumour"}, LABELS)
    with pytest.raises(ConfigError, match="outside"):
        pp.apply_hierarchy(np.zeros((3, 3), np.uint8), [(2, 1)], outside="nearest")


def test_regions_to_labels_is_nnunet_order():
    # BraTS: regions whole (1,2,3), core (2,3), enhancing (3), written in that order.
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 4, (9, 10, 3))
    regions = [(1, 2, 3), (2, 3), (3,)]
    onehot = pp.labels_to_regions(labels, regions)
    want_regions = np.stack([(labels >= 1), (labels >= 2), (labels == 3)], -1)
    np.testing.assert_array_equal(onehot, want_regions)
    np.testing.assert_array_equal(pp.regions_to_labels(onehot.astype(float), (1, 2, 3)), labels)
    # A voxel with core > 0.5 but whole < 0.5 is core (later regions overwrite): nnU-Net.
    probs = np.array([[[0.4, 0.6, 0.2], [0.7, 0.3, 0.9], [0.5, 0.5, 0.5]]])
    np.testing.assert_array_equal(pp.regions_to_labels(probs, (1, 2, 3)), [[2, 3, 0]])
    with pytest.raises(DataError, match="region"):
        pp.regions_to_labels(probs, (1, 2))
