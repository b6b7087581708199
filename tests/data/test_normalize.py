"""`data.normalize` per channel, each method against a float64 numpy transcription of its
formula written here (not the code under test)."""

import numpy as np
import pytest

from jaxseg.config import apply_override
from jaxseg.data.normalize import channel_methods, normalization_scheme, normalize
from jaxseg.data.preprocess import Preprocessing
from jaxseg.defaults import base_config
from jaxseg.errors import ConfigError


def _ref_zscore(x):
    return (x - x.mean()) / x.std()


def _ref_minmax01(x):
    return (x - x.min()) / (x.max() - x.min())


def _ref_window(x, lo, hi):
    return (np.clip(x, lo, hi) - (lo + hi) / 2) / ((hi - lo) / 2)


def test_each_method_matches_its_formula():
    rng = np.random.default_rng(0)
    x = np.stack(
        [
            rng.normal(300, 40, (9, 8, 7)),
            rng.gamma(2.0, 50.0, (9, 8, 7)),
            rng.uniform(-1200, 2000, (9, 8, 7)),
            rng.uniform(-1200, 2000, (9, 8, 7)),
            rng.normal(5, 2, (9, 8, 7)),
        ],
        -1,
    )
    methods = ["minmax01", "minmax11", "ct_window", "zscore", "none"]
    out = normalize(x, ["MRI"] * 5, ct_window=(-160.0, 240.0), methods=methods)
    assert out.dtype == np.float32 and out.shape == x.shape
    expected = [
        _ref_minmax01(x[..., 0]),
        2 * _ref_minmax01(x[..., 1]) - 1,
        _ref_window(x[..., 2], -160.0, 240.0),
        _ref_zscore(x[..., 3]),
        x[..., 4],
    ]
    for c, e in enumerate(expected):
        np.testing.assert_allclose(out[..., c], e, rtol=1e-5, atol=1e-5, err_msg=methods[c])
    assert out[..., 0].min() == 0 and out[..., 0].max() == pytest.approx(1)
    assert out[..., 1].min() == -1 and out[..., 1].max() == pytest.approx(1)


@pytest.mark.parametrize("then", ["zscore", "minmax01", "minmax11", "ct_window"])
def test_percentile_clip_then_method(then):
    rng = np.random.default_rng(1)
    x = rng.standard_cauchy((10, 11, 1)) * 100  # heavy tails: the clip matters
    out = normalize(
        x,
        ["CT"],
        ct_window=(-50.0, 50.0),
        methods=f"percentile_clip+{then}",
        clip_percentiles=(2.0, 97.0),
    )[..., 0]
    v = x[..., 0]
    lo, hi = np.percentile(v, [2.0, 97.0])
    clipped = np.clip(v, lo, hi)
    expected = {
        "zscore": _ref_zscore(clipped),
        "minmax01": _ref_minmax01(clipped),
        "minmax11": 2 * _ref_minmax01(clipped) - 1,
        "ct_window": _ref_window(clipped, -50.0, 50.0),
    }[then]
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)


def test_percentile_clip_keeps_mostly_zero_background():
    """Skull-stripped MRI: the percentiles come from the nonzero voxels and the zero
    background is neither clipped up nor counted in the z-score."""
    rng = np.random.default_rng(2)
    x = np.zeros((12, 12, 12))
    x[3:8, 3:8, 3:8] = rng.normal(400, 60, (5, 5, 5))
    out = normalize(x[..., None], ["T1"], methods="percentile_clip")[..., 0]
    nz = x != 0
    v = x[nz]
    c = np.clip(v, *np.percentile(v, [0.5, 99.5]))
    np.testing.assert_allclose(out[nz], (c - c.mean()) / c.std(), rtol=1e-5, atol=1e-5)
    assert np.all(out[~nz] == 0)


def test_auto_is_the_modality_default():
    """None, "auto" and the old call give the same numbers and the same description."""
    rng = np.random.default_rng(3)
    x = rng.uniform(-1500, 1500, (6, 7, 3))
    mods = ["CT", "T2", "noNorm"]
    old = normalize(x, mods)
    for m in (None, "auto", ["auto", "AUTO", "auto"]):
        np.testing.assert_array_equal(normalize(x, mods, methods=m), old)
        assert normalization_scheme(mods, methods=m) == normalization_scheme(mods)
    np.testing.assert_allclose(old[..., 0], np.clip(x[..., 0], -1000, 1000) / 1000, atol=1e-6)


def test_names_and_lengths_are_checked():
    assert channel_methods("MinMax01", 2) == ("minmax01", "minmax01")
    assert channel_methods(["percentile_clip", "zscore"], 2) == ("percentile_clip+zscore", "zscore")
    with pytest.raises(ConfigError, match=r"valid: auto, zscore, minmax01.*percentile_clip"):
        channel_methods("histogram", 1)
    with pytest.raises(ConfigError, match=r"data.normalize\[1\]"):
        channel_methods(["zscore", "percentile_clip+none"], 2)
    with pytest.raises(ConfigError, match="2 entries for 3 channel"):
        channel_methods(["zscore", "zscore"], 3)
    with pytest.raises(ConfigError, match="clip_percentiles"):
        normalize(np.ones((3, 3, 1)), ["MRI"], methods="percentile_clip", clip_percentiles=(50, 5))


def test_from_config_window_level_width_and_overrides():
    c = base_config()
    apply_override(c, "data.normalize=('ct_window','minmax11')")
    apply_override(c, "data.window_level=40")
    apply_override(c, "data.window_width=400")
    prep = Preprocessing.from_config(c.data, ["CT", "T1"])
    assert prep.ct_window == (-160.0, 240.0)
    assert prep.normalize == ("ct_window", "minmax11")
    scheme = prep.describe()["normalization"]
    assert scheme[0]["window"] == [-160.0, 240.0] and scheme[1]["scheme"] == "minmax11"
    x = np.random.default_rng(4).uniform(-500, 500, (5, 6, 2))
    y, _ = prep.image(x, (1.0, 1.0))
    np.testing.assert_allclose(y[..., 0], _ref_window(x[..., 0], -160, 240), atol=1e-6)
    c.data.window_width = None
    with pytest.raises(ConfigError, match="give both"):
        Preprocessing.from_config(c.data, ["CT", "T1"])
    c.data.window_width = -3.0
    with pytest.raises(ConfigError, match="width > 0"):
        Preprocessing.from_config(c.data, ["CT", "T1"])
    c = base_config()
    apply_override(c, "data.normalize=sobel")
    with pytest.raises(ConfigError, match="valid:"):
        Preprocessing.from_config(c.data, ["CT"])
