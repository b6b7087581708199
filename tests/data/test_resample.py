"""jaxseg.data.resample against independent references.

- Images: `skimage.transform.resize(order=3, mode="edge", anti_aliasing=False)`, nnU-Net's
  own call (float64 there, float32 spline coefficients here: agreement to 1e-5 of the
  data's range). Anisotropic data: nnU-Net's "separate z" rebuilt from skimage (each
  slice resized in-plane) and `np.take` along the coarse axis with the nearest-centre
  index `floor((j + 0.5) * n / m)`.
- Labels: constructed labels whose answer is known (a 2D label doubled is the label with
  every pixel repeated 2x2, since the nearest pixel carries bilinear weight 9/16 > 1/2; a
  ball keeps its volume), class sets, and round trips.
- Affines: the world coordinates of the grid's outer corners and centre.
"""

import numpy as np
import pytest
from scipy import ndimage as ndi
from skimage.transform import resize

from jaxseg.data import resample as R
from jaxseg.errors import DataError


def _skimage(x: np.ndarray, shape, order=3) -> np.ndarray:
    """Reference: skimage per channel, `x` `[*S, C]` -> float64 `[*shape, C]`."""
    chans = [
        resize(
            x[..., c].astype(np.float64),
            shape,
            order=order,
            mode="edge",
            anti_aliasing=False,
            preserve_range=True,
        )
        for c in range(x.shape[-1])
    ]
    return np.stack(chans, -1)


def _separate_reference(x: np.ndarray, shape, axis: int, order=3) -> np.ndarray:
    """nnU-Net's separate z: each slice along `axis` resized in-plane with skimage, then
    nearest neighbour (pixel centres) along `axis`. `x` `[*S, C]`."""
    plane = tuple(n for a, n in enumerate(shape) if a != axis)
    slices = [_skimage(np.take(x, k, axis=axis), plane, order) for k in range(x.shape[axis])]
    inplane = np.stack(slices, axis)
    n, m = x.shape[axis], shape[axis]
    index = np.clip(np.floor((np.arange(m) + 0.5) * n / m).astype(int), 0, n - 1)
    return np.take(inplane, index, axis=axis)


# ----------------------------------------------------------------------------- grids


def test_target_shape_and_anisotropic_axis():
    # 155 * 1 / 1.5 = 103.3; 240 / 1.5 = 160; a tiny extent keeps one voxel.
    assert R.target_shape((240, 240, 155), (1, 1, 1), (1.5, 1.5, 1.5)) == (160, 160, 103)
    assert R.target_shape((512, 512, 40), (0.7, 0.7, 5.0), (1.0, 1.0, 2.5)) == (358, 358, 80)
    assert R.target_shape((3, 4), (1, 1), (100, 1)) == (1, 4)
    assert R.anisotropic_axis((0.8, 0.8, 5.0)) == 2
    assert R.anisotropic_axis((4.0, 1.0, 1.2)) == 0
    assert R.anisotropic_axis((1.0, 1.0, 3.0)) is None  # not more than 3x
    assert R.anisotropic_axis((0.24, 1.25, 1.25)) is None  # two coarse axes (nnU-Net)
    assert R.anisotropic_axis((1.0, 2.0), threshold=1.5) == 1


# ----------------------------------------------------------------------------- images


@pytest.mark.parametrize(
    "shape, spacing, target",
    [
        ((17, 23, 2), (1.0, 1.0), (0.6, 1.7)),  # 2D, up and down
        ((31, 26, 1), (0.5, 0.5), (1.2, 0.9)),  # 2D, down
        ((12, 9, 14, 2), (1.0, 1.0, 1.0), (0.7, 1.3, 1.9)),  # 3D, mixed
        ((10, 11, 9, 1), (1.5, 1.5, 1.5), (0.9, 0.8, 1.1)),  # 3D, up
        ((20, 18, 22, 1), (1.0, 1.0, 1.0), (2.0, 2.5, 1.6)),  # 3D, down
    ],
)
def test_resample_image_matches_skimage(shape, spacing, target):
    rng = np.random.default_rng(0)
    x = (rng.normal(size=shape) * 100 + 50).astype(np.float32)
    out = R.resample_image(x, spacing, target)
    new = R.target_shape(shape[:-1], spacing, target)
    assert out.shape == (*new, shape[-1]) and out.dtype == np.float32
    np.testing.assert_allclose(out, _skimage(x, new), rtol=0, atol=1e-5 * np.ptp(x))


@pytest.mark.parametrize(
    "shape, spacing, target, axis",
    [
        ((20, 18, 7, 1), (0.8, 0.8, 4.0), (1.0, 1.0, 1.5), 2),  # thick slices, z up
        ((9, 16, 15, 2), (5.0, 0.9, 0.9), (3.1, 1.2, 0.7), 0),  # coarse axis 0
        ((14, 12, 30, 1), (1.0, 1.0, 1.0), (0.8, 0.8, 3.5), 2),  # target anisotropic
    ],
)
def test_resample_image_anisotropic_is_nearest_along_coarse_axis(shape, spacing, target, axis):
    rng = np.random.default_rng(1)
    x = rng.normal(size=shape).astype(np.float32)
    out = R.resample_image(x, spacing, target)
    new = R.target_shape(shape[:-1], spacing, target)
    ref = _separate_reference(x, new, axis)
    np.testing.assert_allclose(out, ref, rtol=0, atol=1e-5 * np.ptp(x))


def test_resample_image_no_op_and_integer_input():
    x = np.random.default_rng(2).normal(size=(6, 7, 5, 2)).astype(np.float32)
    assert R.resample_image(x, (1, 1, 2), (1, 1, 2)) is x
    ints = np.arange(6 * 8).reshape(6, 8, 1)
    out = R.resample_image(ints, (1, 1), (0.5, 1.2))
    np.testing.assert_allclose(out, _skimage(ints, (12, 7)), atol=1e-4)


def test_image_round_trip_on_smooth_data():
    g = np.mgrid[:20, :18, :16].astype(np.float32)
    x = (np.sin(g[0] / 3) * np.cos(g[1] / 4) + 0.5 * np.sin(g[2] / 5))[..., None]
    up = R.resample_image(x, (1, 1, 1), (0.5, 0.6, 0.7))
    back = R.resample_image(up, (0.5, 0.6, 0.7), (1, 1, 1))
    assert back.shape == x.shape
    # Cubic both ways on features of 3-5 voxels; the edge voxels lose a little more.
    assert np.abs(back - x).max() < 5e-3


# ----------------------------------------------------------------------------- labels


def test_label_2d_doubling_repeats_every_pixel():
    rng = np.random.default_rng(3)
    label = rng.choice([0, 2, 5], size=(13, 17)).astype(np.int32)
    up = R.resample_label(label, (1.0, 1.0), (0.5, 0.5))
    np.testing.assert_array_equal(up, np.kron(label, np.ones((2, 2), np.int32)))
    for value in (0, 2, 5):
        assert (up == value).sum() == 4 * (label == value).sum()
    np.testing.assert_array_equal(R.resample_label(up, (0.5, 0.5), (1.0, 1.0)), label)


def test_label_3d_volumes_and_round_trip():
    g = np.mgrid[:20, :20, :20]
    label = np.zeros((20, 20, 20), np.int32)
    label[((g - 9.5) ** 2).sum(0) <= 6.2**2] = 1  # a ball of 956 voxels
    label[2:6, 3:17, 12:19] = 3  # a box of 392 voxels
    up = R.resample_label(label, (1, 1, 1), (0.5, 0.5, 0.5))
    assert up.shape == (40, 40, 40) and up.dtype == np.int32
    for value in (1, 3):
        # Within rounding: a box loses only its 8 corner voxels (trilinear weight 27/64).
        assert (
            abs((up == value).sum() / 8 - (label == value).sum()) <= 0.01 * (label == value).sum()
        )
    np.testing.assert_array_equal(R.resample_label(up, (0.5,) * 3, (1, 1, 1)), label)


@pytest.mark.parametrize(
    "spacing, target",
    [((1, 1, 1), (1.7, 0.6, 1.3)), ((0.8, 0.8, 4.0), (1.1, 0.5, 1.5)), ((1, 1, 1), (3, 3, 3))],
)
def test_label_no_new_values(spacing, target):
    rng = np.random.default_rng(4)
    label = rng.choice([0, 2, 5], size=(15, 12, 9), p=[0.6, 0.3, 0.1])
    out = R.resample_label(label, spacing, target)
    assert out.shape == R.target_shape(label.shape, spacing, target)
    assert set(np.unique(out)) <= {0, 2, 5}


def test_label_anisotropic_is_nearest_along_coarse_axis():
    rng = np.random.default_rng(5)
    label = rng.choice([0, 1], size=(8, 8, 5))
    out = R.resample_label(label, (1, 1, 5), (1, 1, 2))  # z: 5 -> 12 slices
    index = np.floor((np.arange(12) + 0.5) * 5 / 12).astype(int)
    np.testing.assert_array_equal(out, np.take(label, index, axis=2))


def test_one_voxel_class_vanishes_and_is_reported():
    label = np.zeros((16, 16, 16), np.int32)
    label[2:14, 2:14, 2:14] = 1
    label[8, 8, 8] = 2
    out = R.resample_label(label, (1, 1, 1), (4, 4, 4))
    assert out.shape == (4, 4, 4)
    assert R.vanished_classes(label, out) == [2]
    assert R.vanished_classes(label, label) == []


def test_label_classes_argument():
    label = np.array([[0, 1], [1, 3]])
    out = R.resample_label(label, (1, 1), (0.5, 0.5), classes=[0, 1, 2, 3])
    np.testing.assert_array_equal(out, np.kron(label, np.ones((2, 2), int)))
    with pytest.raises(DataError, match=r"\[3\]"):
        R.resample_label(label, (1, 1), (0.5, 0.5), classes=[0, 1])


# ----------------------------------------------------------------------------- back


def test_probabilities_back_match_skimage_linear_and_sum_to_one():
    rng = np.random.default_rng(6)
    logits = rng.normal(size=(9, 11, 7, 3))
    probs = (np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)).astype(np.float32)
    out = R.resample_probabilities(probs, (20, 17, 13))
    assert out.shape == (20, 17, 13, 3) and out.dtype == np.float32
    np.testing.assert_allclose(out, _skimage(probs, (20, 17, 13), order=1), atol=1e-6)
    np.testing.assert_allclose(out.sum(-1), 1.0, atol=1e-5)


def test_probabilities_back_anisotropic():
    rng = np.random.default_rng(7)
    probs = rng.random((12, 10, 16, 2)).astype(np.float32)  # on a (1, 1, 1.5) grid
    spacing, target = (0.9, 0.9, 5.0), (1.0, 1.0, 1.5)  # the original grid is anisotropic
    out = R.resample_probabilities(probs, (13, 11, 5), spacing=spacing, target_spacing=target)
    ref = _separate_reference(probs, (13, 11, 5), axis=2, order=1)
    np.testing.assert_allclose(out, ref, atol=1e-6)
    assert R.resample_probabilities(probs, (12, 10, 16)) is probs


def test_image_forward_then_probabilities_back_round_trip():
    g = np.mgrid[:24, :20, :12].astype(np.float32)
    x = (np.sin(g[0] / 4) + np.cos(g[1] / 5) * np.cos(g[2] / 4))[..., None]
    spacing, target = (0.8, 0.8, 1.2), (1.3, 1.3, 1.3)
    down = R.resample_image(x, spacing, target)
    back = R.resample_probabilities(down, x.shape[:-1], spacing=spacing, target_spacing=target)
    assert back.shape == x.shape
    assert np.abs(back - x).max() < 0.1  # linear on a coarser grid of smooth data


# ----------------------------------------------------------------------------- affines


@pytest.mark.parametrize("old, new", [((20, 18, 7), (33, 12, 19)), ((40, 30), (17, 60))])
def test_resampled_affine_keeps_corners_and_centre(old, new):
    rng = np.random.default_rng(8)
    q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    affine = np.eye(4)
    affine[:3, :3] = q * np.array([0.8, 1.1, 3.0])
    affine[:3, 3] = [-90.0, 12.5, 40.0]
    out = R.resampled_affine(affine, old, new)
    dims = len(old)

    def world(a, ijk):
        full = np.zeros(3)
        full[:dims] = ijk
        return a[:3, :3] @ full + a[:3, 3]

    for corner in np.ndindex(*(2,) * dims):
        lo_hi_old = [(-0.5, n - 0.5)[c] for c, n in zip(corner, old)]
        lo_hi_new = [(-0.5, n - 0.5)[c] for c, n in zip(corner, new)]
        np.testing.assert_allclose(world(out, lo_hi_new), world(affine, lo_hi_old), atol=1e-9)
    centre_old = [(n - 1) / 2 for n in old]
    centre_new = [(n - 1) / 2 for n in new]
    np.testing.assert_allclose(world(out, centre_new), world(affine, centre_old), atol=1e-9)
    # The new voxel size along each axis: old spacing * old / new.
    sizes = np.linalg.norm(out[:3, :dims], axis=0)
    np.testing.assert_allclose(sizes, np.array([0.8, 1.1, 3.0])[:dims] * np.divide(old, new))
    np.testing.assert_array_equal(out[3], [0, 0, 0, 1])


# ----------------------------------------------------------------------------- cropping


def test_crop_uncrop_round_trip():
    rng = np.random.default_rng(9)
    x = np.zeros((20, 16, 12, 2), np.float32)
    x[3:15, 5:9, 2:12, 1] = rng.normal(size=(12, 4, 10))
    box = R.nonzero_box(x)
    assert box == (slice(3, 15), slice(5, 9), slice(2, 12))
    cropped = R.crop(x, box)
    assert cropped.shape == (12, 4, 10, 2)
    np.testing.assert_array_equal(R.uncrop(cropped, box, x.shape[:-1]), x)
    label = (x[..., 1] > 0).astype(np.int32)
    back = R.uncrop(R.crop(label, box), box, label.shape, fill=0)
    np.testing.assert_array_equal(back, label)


def test_nonzero_box_with_a_hole_is_the_outer_box():
    x = np.zeros((18, 18, 18, 1), np.float32)
    x[2:16, 3:15, 4:14] = 1.0
    x[5:13, 6:12, 7:11] = 0.0  # a hole inside
    x[0, 0, 0] = 0.0
    box = R.nonzero_box(x)
    assert box == (slice(2, 16), slice(3, 15), slice(4, 14))
    filled = ndi.binary_fill_holes(x[..., 0] != 0)
    assert filled[5:13, 6:12, 7:11].all()
    np.testing.assert_array_equal(R.nonzero_mask(x), filled)
    reference = tuple(slice(s.start, s.stop) for s in ndi.find_objects(filled.astype(int))[0])
    assert box == reference


def test_nonzero_box_of_an_empty_image_is_everything():
    assert R.nonzero_box(np.zeros((4, 5, 2))) == (slice(0, 4), slice(0, 5))


def test_uncrop_rejects_a_box_that_does_not_fit():
    with pytest.raises(DataError, match="does not fit"):
        R.uncrop(np.zeros((3, 3)), (slice(0, 4), slice(0, 3)), (5, 5))
    with pytest.raises(DataError, match="outside"):
        R.crop(np.zeros((3, 3)), (slice(1, 5), slice(0, 3)))


# ----------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    "spacing", [(0.0, 1.0, 1.0), (1.0, float("nan"), 1.0), (1.0, 1.0, -2.0), (1.0, np.inf, 1)]
)
def test_bad_spacing_is_a_data_error(spacing):
    x = np.zeros((4, 4, 4, 1), np.float32)
    with pytest.raises(DataError, match="finite and > 0"):
        R.resample_image(x, spacing, (1, 1, 1))
    with pytest.raises(DataError, match="finite and > 0"):
        R.resample_label(x[..., 0].astype(int), (1, 1, 1), spacing)
    with pytest.raises(DataError, match="finite and > 0"):
        R.target_shape((4, 4, 4), spacing, (1, 1, 1))


def test_spacing_of_the_wrong_length_is_a_data_error():
    with pytest.raises(DataError, match="2 values for a 3D image"):
        R.resample_image(np.zeros((4, 4, 4, 1)), (1, 1), (1, 1, 1))
    with pytest.raises(DataError, match="both spacing and target_spacing"):
        R.resample_probabilities(np.zeros((4, 4, 2)), (8, 8), spacing=(1, 1))


def test_label_ties_go_to_the_smaller_class():
    # One output voxel at the centre of a 2x2 block: each class scores exactly 1/2.
    for label in ([[0, 5], [5, 0]], [[5, 0], [0, 5]], [[2, 2], [7, 7]]):
        out = R.resample_label(np.array(label), (1, 1), (2, 2))
        assert out.shape == (1, 1) and out[0, 0] == min(min(row) for row in label)
