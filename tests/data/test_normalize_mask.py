"""`data.normalize_mask`: z-score statistics over the image's foreground or the label's,
against numpy mean/std over the mask written here, scipy's hole filling and MONAI's
`NormalizeIntensity(nonzero=True, channel_wise=True)`. Runtime < 2 s."""

import numpy as np
import pytest
import torch
from monai.transforms import NormalizeIntensity
from scipy import ndimage

from jaxseg.data.preprocess import Preprocessing
from jaxseg.defaults import base_config
from jaxseg.errors import ConfigError


def _brain(shape=(20, 18, 14), channels=2, seed=0, radius2=0.7):
    """Skull-stripped-like: positive intensities inside an ellipsoid, exactly 0 outside,
    the same support in every channel (as BraTS)."""
    rng = np.random.default_rng(seed)
    grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij"))
    inside = (grid**2).sum(0) < radius2
    x = rng.gamma(3.0, 100.0, shape + (channels,)) + 10.0
    return np.where(inside[..., None], x, 0.0).astype(np.float32), inside


def _zscore_over(x, stats, apply):
    """numpy: (x - mean) / std with mean, std over `stats`, inside `apply`, 0 outside."""
    v = x[stats].astype(np.float64)
    return np.where(apply, (x - v.mean()) / v.std(), 0.0)


def test_foreground_matches_numpy_and_monai_nonzero():
    x, inside = _brain()
    prep = Preprocessing(("MRI", "MRI"), normalize_mask="foreground")
    out, _ = prep.image(x, (1.0, 1.0, 1.0))
    monai = NormalizeIntensity(nonzero=True, channel_wise=True)(
        torch.from_numpy(np.moveaxis(x, -1, 0))
    )
    monai = np.moveaxis(np.asarray(monai), 0, -1)
    for c in range(2):
        np.testing.assert_allclose(out[..., c], _zscore_over(x[..., c], inside, inside), atol=1e-5)
        np.testing.assert_allclose(out[..., c], monai[..., c], atol=1e-5)
        assert abs(out[..., c][inside].mean()) < 1e-5 and not out[..., c][~inside].any()


def test_foreground_fills_holes_and_differs_from_none_on_a_mostly_nonzero_image():
    """The mask is nnU-Net's: nonzero in any channel, holes filled (a 0 voxel inside the
    brain is normalised, not kept 0). Here less than half the image is 0, so "none" uses
    every voxel and gives another result."""
    x, inside = _brain(shape=(16, 16, 16), channels=1, seed=1, radius2=1.5)
    x[8, 8, 8] = 0.0  # a hole
    support = ndimage.binary_fill_holes(x[..., 0] != 0)
    assert support[8, 8, 8] and np.mean(x == 0) < 0.5
    out, _ = Preprocessing(("MRI",), normalize_mask="foreground").image(x, (1.0,) * 3)
    np.testing.assert_allclose(out[..., 0], _zscore_over(x[..., 0], support, support), atol=1e-5)
    plain, _ = Preprocessing(("MRI",)).image(x, (1.0,) * 3)
    assert np.abs(plain - out).max() > 0.1


def test_label_statistics_in_training_foreground_at_inference():
    x, inside = _brain(channels=2, seed=2)
    label = np.zeros(x.shape[:-1], np.int32)
    label[7:12, 6:11, 5:9] = 1
    label[9:11, 8:10, 6:8] = 2  # any foreground class counts
    prep = Preprocessing(("MRI", "MRI"), normalize_mask="label")
    train, _ = prep.image(x, (1.0,) * 3, label=label)
    for c in range(2):
        want = _zscore_over(x[..., c], label > 0, inside)
        np.testing.assert_allclose(train[..., c], want, atol=1e-5)
        assert abs(train[..., c][label > 0].mean()) < 1e-5
    # no label (validation, inference, export) and an empty label: the foreground's statistics
    fg, _ = Preprocessing(("MRI", "MRI"), normalize_mask="foreground").image(x, (1.0,) * 3)
    infer, _ = prep.image(x, (1.0,) * 3)
    empty, _ = prep.image(x, (1.0,) * 3, label=np.zeros_like(label))
    np.testing.assert_array_equal(infer, fg)
    np.testing.assert_array_equal(empty, fg)


def test_label_mask_with_crop_nonzero_uses_the_cropped_label():
    x, inside = _brain(seed=3)
    label = np.zeros(x.shape[:-1], np.int32)
    label[8:12, 7:10, 5:8] = 1
    prep = Preprocessing(("MRI", "MRI"), crop_nonzero=True, normalize_mask="label")
    out, grid = prep.image(x, (1.0,) * 3, label=label)
    box = grid.box
    for c in range(2):
        want = _zscore_over(x[..., c], label > 0, ndimage.binary_fill_holes(inside))[box]
        np.testing.assert_allclose(out[..., c], want, atol=1e-5)


def test_config_key_default_and_errors():
    data = base_config().data
    assert data.normalize_mask == "none"
    mods = ("MRI",)
    assert Preprocessing.from_config(data, mods) == Preprocessing(mods)
    assert "normalize_mask" not in Preprocessing(mods).describe()  # old metadata unchanged
    data.normalize_mask = "label"
    prep = Preprocessing.from_config(data, mods)
    described = prep.describe()
    assert described["normalize_mask"] == "label"
    assert "label's foreground" in described["normalization"][0]["formula"]
    data.normalize_mask = "brain"
    with pytest.raises(ConfigError, match="data.normalize_mask"):
        Preprocessing.from_config(data, mods)
