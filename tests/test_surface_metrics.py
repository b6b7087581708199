"""HD (maximum) and normalised surface Dice of jaxseg.metrics against independent references:
scipy's directed_hausdorff and a brute-force float64 search for HD, DeepMind's
`surface-distance` package for NSD, and scikit-image's marching cubes for the stored table
of surface elements."""

import numpy as np
import pytest
from scipy import ndimage
from scipy.spatial.distance import directed_hausdorff

from jaxseg.metrics import case_metrics, surface_dice
from jaxseg.metrics import nsd as nsd_module

surface_distance = pytest.importorskip("surface_distance")
if not hasattr(np, "Inf"):  # surface-distance 0.1 uses np.Inf, which numpy 2 removed
    np.Inf = np.inf


def _field_mask(shape, rng, sigma=2.5, level=0.1):
    return ndimage.gaussian_filter(rng.normal(size=shape), sigma) > level


def _surface_points(mask, spacing):
    """Surface voxel centres in mm, from the documented definition (face-connected erosion,
    outside the image counted as background)."""
    st = ndimage.generate_binary_structure(mask.ndim, 1)
    surface = mask & ~ndimage.binary_erosion(mask, structure=st, border_value=0)
    return np.argwhere(surface).astype(np.float64) * np.asarray(spacing, np.float64)


def _brute_force_hd(a, b):
    """max over both directions of max_i min_j |a_i - b_j|, all pairs in float64."""
    d = np.sqrt(((a[:, None, :] - b[None, :, :]) ** 2).sum(-1))
    return max(d.min(axis=1).max(), d.min(axis=0).max())


CASES = [
    ((23, 31), (0.7, 1.9)),
    ((40, 17), (2.5, 0.5)),
    ((14, 17, 11), (0.8, 1.1, 2.5)),
    ((12, 15, 9), (3.0, 0.6, 1.0)),
]


@pytest.mark.parametrize("shape,spacing", CASES)
@pytest.mark.parametrize("seed", [0, 1])
def test_hd_matches_scipy_and_brute_force(shape, spacing, seed):
    rng = np.random.default_rng(seed)
    p, g = _field_mask(shape, rng), _field_mask(shape, rng)
    assert p.any() and g.any()
    (row,) = case_metrics(p.astype(np.int32), g.astype(np.int32), 2, spacing)
    pts_p, pts_g = _surface_points(p, spacing), _surface_points(g, spacing)
    scipy_hd = max(directed_hausdorff(pts_p, pts_g)[0], directed_hausdorff(pts_g, pts_p)[0])
    np.testing.assert_allclose(row["hd"], scipy_hd, rtol=1e-12)
    np.testing.assert_allclose(row["hd"], _brute_force_hd(pts_p, pts_g), rtol=1e-12)
    assert row["hd95"] <= row["hd"] + 1e-12


def test_hd_of_a_constructed_pair():
    # A 3x3 square (surface: its 8 ring voxels) and a single voxel at (7, 2), spacing
    # (2, 0.5) mm. From the voxel, the nearest ring voxel is (2, 2), 10 mm away; the farthest
    # ring voxel from it is (0, 0), at (14, 1) mm: HD = hypot(14, 1).
    label = np.zeros((9, 6), np.int32)
    label[0:3, 0:3] = 1
    pred = np.zeros_like(label)
    pred[7, 2] = 1
    (row,) = case_metrics(pred, label, 2, (2.0, 0.5))
    assert row["hd"] == pytest.approx(np.hypot(14.0, 1.0))


@pytest.mark.parametrize("shape,spacing", CASES)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_nsd_matches_deepmind_surface_distance(shape, spacing, seed):
    rng = np.random.default_rng(10 + seed)
    p, g = _field_mask(shape, rng), _field_mask(shape, rng)
    dists = surface_distance.compute_surface_distances(g, p, spacing)
    for tau in (0.3, 1.0, 2.0, 5.0):
        (row,) = case_metrics(
            p.astype(np.int32), g.astype(np.int32), 2, spacing, nsd_tolerance_mm=tau
        )
        ref = surface_distance.compute_surface_dice_at_tolerance(dists, tau)
        np.testing.assert_allclose(row["nsd"], ref, rtol=1e-12, atol=1e-12)


def test_nsd_matches_deepmind_for_masks_at_the_border_and_several_classes():
    rng = np.random.default_rng(4)
    shape, spacing = (16, 13, 10), (1.2, 0.9, 2.0)
    label = np.zeros(shape, np.int32)
    label[:7, :, :] = 1  # fills three faces of the image
    label[10:, 3:9, 2:8] = 2
    pred = np.where(_field_mask(shape, rng), 1, 0).astype(np.int32)
    pred[11:, 4:10, 1:7] = 2
    # tau = 1.5 mm is the exact distance between voxels (1, 1, 0) apart (1.2^2 + 0.9^2 =
    # 1.5^2): a tie, which both count as within the tolerance.
    rows = case_metrics(pred, label, 3, spacing, nsd_tolerance_mm=1.5)
    for c, row in enumerate(rows, start=1):
        d = surface_distance.compute_surface_distances(label == c, pred == c, spacing)
        ref = surface_distance.compute_surface_dice_at_tolerance(d, 1.5)
        np.testing.assert_allclose(row["nsd"], ref, rtol=1e-12)


def test_nsd_is_one_for_identical_masks_and_grows_with_tau():
    rng = np.random.default_rng(3)
    g = _field_mask((20, 18, 8), rng)
    assert surface_dice(g, g, (1.0, 1.0, 3.0), 1e-6) == 1.0
    shifted = np.roll(g, 2, axis=0)
    values = [surface_dice(shifted, g, (1.0, 1.0, 3.0), t) for t in (0.5, 1.5, 2.5, 10.0)]
    assert values == sorted(values) and values[0] < 1.0 and values[-1] == 1.0


def test_stored_surfel_table_is_marching_cubes():
    """The stored per-code triangles are scikit-image's Lorensen marching cubes (a code with
    more than four corners inside meshed as its complement), and the element sizes equal
    DeepMind's lookup tables for anisotropic spacings in 2D and 3D."""
    measure = pytest.importorskip("skimage.measure")
    normals = nsd_module._cube_normals()
    for code in range(1, 255):
        meshed = code if bin(code).count("1") <= 4 else 255 - code
        cube = np.array([(meshed >> i) & 1 for i in range(8)], float).reshape(2, 2, 2)
        v, f, _, _ = measure.marching_cubes(cube, 0.5, method="lorensen", allow_degenerate=False)
        v = v.astype(np.float64)
        n = 0.5 * np.cross(v[f[:, 1]] - v[f[:, 0]], v[f[:, 2]] - v[f[:, 0]])
        np.testing.assert_array_equal(
            np.sort(np.abs(n), axis=0), np.sort(normals[code], axis=0), err_msg=str(code)
        )
    from surface_distance import lookup_tables

    def theirs(code, kernel, n_corners):
        return sum(
            int(kernel[idx])
            for i, idx in enumerate(np.ndindex(*(2,) * n_corners))
            if (code >> i) & 1
        )

    for spacing in [(0.7, 1.3, 2.1), (3.0, 0.4, 1.0)]:
        ref = lookup_tables.create_table_neighbour_code_to_surface_area(spacing)
        mine = nsd_module._element_sizes(spacing)
        k3 = lookup_tables.ENCODE_NEIGHBOURHOOD_3D_KERNEL
        np.testing.assert_allclose(
            mine, [ref[theirs(c, k3, 3)] for c in range(256)], rtol=1e-12, atol=0
        )
    for spacing in [(0.7, 1.9), (2.0, 0.5)]:
        ref = lookup_tables.create_table_neighbour_code_to_contour_length(spacing)
        mine = nsd_module._element_sizes(spacing)
        k2 = lookup_tables.ENCODE_NEIGHBOURHOOD_2D_KERNEL
        np.testing.assert_allclose(
            mine, [ref[theirs(c, k2, 2)] for c in range(16)], rtol=1e-12, atol=0
        )


def test_bad_tolerance():
    a = np.zeros((4, 4), np.int32)
    for tau in (0.0, -1.0, float("nan")):
        with pytest.raises(ValueError, match="nsd_tolerance_mm"):
            case_metrics(a, a, 2, (1.0, 1.0), nsd_tolerance_mm=tau)
