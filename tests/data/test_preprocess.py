import numpy as np
import pytest

from jaxseg.data.preprocess import normalization_scheme, normalize
from jaxseg.errors import DataError


def test_zscore_ct_and_mask():
    rng = np.random.default_rng(0)
    mri = rng.normal(50, 7, size=(8, 9, 10))
    ct = rng.uniform(-1500, 2500, size=(8, 9, 10))
    brain = np.zeros((8, 9, 10))
    brain[2:5, 2:5, 2:5] = rng.normal(300, 20, size=(3, 3, 3))  # > 50% exact zeros
    out = normalize(np.stack([mri, ct, brain], -1), ["MRI", "CT", "FLAIR"], ct_window=(-1000, 1000))
    assert out.dtype == np.float32 and out.shape == (8, 9, 10, 3)
    np.testing.assert_allclose(out[..., 0], (mri - mri.mean()) / mri.std(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(out[..., 1], np.clip(ct, -1000, 1000) / 1000, rtol=1e-6, atol=1e-6)
    nz = brain != 0
    v = brain[nz]
    np.testing.assert_allclose(out[..., 2][nz], (v - v.mean()) / v.std(), rtol=1e-5, atol=1e-5)
    assert np.all(out[..., 2][~nz] == 0)
    w = normalize(ct[..., None], ["ct"], ct_window=(-100, 300))
    np.testing.assert_allclose(
        w[..., 0], (np.clip(ct, -100, 300) - 100) / 200, rtol=1e-6, atol=1e-6
    )


def test_constant_channel_and_channel_count():
    out = normalize(np.full((4, 4, 1), 3.0), ["MRI"])
    assert np.all(np.isfinite(out)) and np.all(out == 0)
    with pytest.raises(DataError, match="2 modalities"):
        normalize(np.zeros((4, 4, 1)), ["MRI", "CT"])


def test_normalization_scheme_describes_what_normalize_does():
    """Each channel's scheme, checked against `normalize` on a constructed image: the CT
    window formula, identity for noNorm, /255 for rgb_to_0_1 and z-score otherwise."""
    rng = np.random.default_rng(1)
    x = rng.uniform(-1500, 1500, size=(6, 7, 4))
    modalities = ["CT", "noNorm", "rgb_to_0_1", "T2"]
    scheme = normalization_scheme(modalities, ct_window=(-200, 400))
    assert [s["modality"] for s in scheme] == modalities
    assert [s["scheme"] for s in scheme] == ["ct_window", "none", "rgb_to_0_1", "zscore"]
    assert scheme[0]["window"] == [-200.0, 400.0]
    out = normalize(x, modalities, ct_window=(-200, 400))
    expected = {
        "ct_window": (np.clip(x[..., 0], -200, 400) - 100) / 300,
        "none": x[..., 1],
        "rgb_to_0_1": x[..., 2] / 255,
        "zscore": (x[..., 3] - x[..., 3].mean()) / x[..., 3].std(),
    }
    for s in scheme:
        np.testing.assert_allclose(
            out[..., s["channel"]], expected[s["scheme"]], rtol=1e-5, atol=1e-5
        )


def test_old_config_without_new_keys_is_the_default_preprocessing():
    """A workdir's config.json from before data.normalize/clahe/denoise existed rebuilds
    the same Preprocessing (and the same numbers) as the current defaults."""
    import json

    import ml_collections

    from jaxseg.data.preprocess import Preprocessing
    from jaxseg.defaults import base_config

    old = ml_collections.ConfigDict(
        {"ct_window": (-1000.0, 1000.0), "crop_nonzero": False, "target_spacing": None}
    )
    mods = ("CT", "FLAIR")
    prep = Preprocessing.from_config(old, mods)
    assert prep == Preprocessing.from_config(base_config().data, mods) == Preprocessing(mods)
    assert not prep.enhancement.active
    x = np.random.default_rng(5).uniform(-1200, 1200, (7, 6, 2))
    np.testing.assert_array_equal(prep.image(x, (1.0, 1.0))[0], normalize(x, mods))
    described = json.loads(json.dumps(prep.describe()))
    assert described["clahe"] is None and described["denoise"] is None
    assert described["normalization"] == normalization_scheme(mods)


def test_equal_plans_compare_equal_whatever_the_cache_folder(tmp_path):
    """Fold ensembles check that their runs share one Preprocessing: the cache folder and
    the spelling of a method do not make two plans differ; a CLAHE parameter does."""
    from jaxseg.data.preprocess import Preprocessing
    from jaxseg.defaults import base_config

    a, b = base_config().data, base_config().data
    a.clahe = b.clahe = True
    a.cache_dir, b.cache_dir = str(tmp_path / "a"), str(tmp_path / "b")
    a.normalize, b.normalize = "percentile_clip", ["Percentile_Clip+zscore"]
    assert Preprocessing.from_config(a, ["T1"]) == Preprocessing.from_config(b, ["T1"])
    b.clahe_clip_limit = 0.02
    assert Preprocessing.from_config(a, ["T1"]) != Preprocessing.from_config(b, ["T1"])
