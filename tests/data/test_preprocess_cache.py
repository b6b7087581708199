"""CLAHE and non-local-means denoising against scikit-image called directly, and the
on-disk cache that makes them run once per case (hits, keys, atomic writes)."""

import os

import numpy as np
import pytest
from skimage import exposure, restoration

from jaxseg.data import cache as cache_lib
from jaxseg.data.preprocess import Preprocessing
from jaxseg.defaults import base_config
from jaxseg.errors import ConfigError, DataError


def _smooth(shape, seed=0):
    rng = np.random.default_rng(seed)
    grids = np.meshgrid(*[np.linspace(0, 3, n) for n in shape], indexing="ij")
    return 100 + 40 * np.sin(sum(grids)) + rng.normal(0, 6, shape)


def _config(tmp_path, **data):
    c = base_config()
    c.data.cache_dir = str(tmp_path / "cache")
    for k, v in data.items():
        c.data[k] = v
    return c.data


def _counting(monkeypatch, module, name):
    calls = []
    original = getattr(module, name)
    target = getattr(original, "__wrapped__", original)

    def counted(*args, **kwargs):
        calls.append(1)
        return target(*args, **kwargs)

    monkeypatch.setattr(module, name, counted)
    return calls


def test_clahe_2d_matches_skimage_with_kernel_in_mm(tmp_path):
    x = _smooth((40, 36))
    data = _config(tmp_path, clahe=True, clahe_kernel_mm=8.0, clahe_clip_limit=0.02)
    prep = Preprocessing.from_config(data, ["noNorm"])
    y, _ = prep.image(x[..., None], (0.5, 0.5))
    # 8 mm at 0.5 mm per voxel: a 16-voxel kernel.
    ref = exposure.equalize_adapthist(
        (x - x.min()) / (x.max() - x.min()), kernel_size=(16, 16), clip_limit=0.02
    )
    np.testing.assert_allclose(y[..., 0], ref, atol=1e-6)
    other = exposure.equalize_adapthist((x - x.min()) / np.ptp(x), kernel_size=(5, 5))
    assert np.abs(y[..., 0] - other).max() > 1e-2  # the kernel size was honoured


def test_clahe_3d_anisotropic_kernel_and_channels(tmp_path):
    x = np.stack([_smooth((12, 14, 6), 1), _smooth((12, 14, 6), 2)], -1)
    data = _config(tmp_path, clahe=True, clahe_kernel_mm=(4.0, 4.0, 6.0), clahe_channels=(1,))
    prep = Preprocessing.from_config(data, ["noNorm", "noNorm"])
    y, _ = prep.image(x, (1.0, 1.0, 3.0))
    v = x[..., 1]
    ref = exposure.equalize_adapthist((v - v.min()) / np.ptp(v), kernel_size=(4, 4, 2))
    np.testing.assert_allclose(y[..., 1], ref, atol=1e-6)
    np.testing.assert_allclose(y[..., 0], x[..., 0], rtol=1e-6)  # channel 0 not equalised


def test_clahe_on_constant_channel_names_the_case(tmp_path):
    prep = Preprocessing.from_config(_config(tmp_path, clahe=True), ["MRI"])
    flat = np.full((8, 8, 1), 7, np.uint8).astype(np.float32)
    with pytest.raises(DataError, match=r"case 'patient_07'.*channel 0 is constant"):
        prep.image(flat, (1.0, 1.0), case="patient_07")


@pytest.mark.parametrize("shape", [(30, 28), (10, 11, 9)])
def test_nl_means_matches_skimage(tmp_path, shape):
    x = _smooth(shape, 3)
    data = _config(tmp_path, denoise="nl_means", denoise_patch_size=3, denoise_patch_distance=2)
    prep = Preprocessing.from_config(data, ["noNorm"])
    y, _ = prep.image(x[..., None], (1.0,) * len(shape))
    sigma = restoration.estimate_sigma(x)
    ref = restoration.denoise_nl_means(
        x,
        patch_size=3,
        patch_distance=2,
        h=0.8 * sigma,
        sigma=sigma,
        fast_mode=True,
        preserve_range=True,
    )
    np.testing.assert_allclose(y[..., 0], ref, rtol=1e-5, atol=1e-4)
    assert np.std(y[..., 0] - x) > 1.0  # it did denoise (noise std 6)


def test_second_read_hits_the_cache_and_config_changes_the_key(tmp_path, monkeypatch):
    clahe_calls = _counting(monkeypatch, exposure, "equalize_adapthist")
    nlm_calls = _counting(monkeypatch, restoration, "denoise_nl_means")
    x = _smooth((24, 20))[..., None]
    data = _config(tmp_path, clahe=True, denoise="nl_means", denoise_patch_distance=2)
    first, _ = Preprocessing.from_config(data, ["MRI"]).image(x, (1.0, 1.0), case="a")
    second, _ = Preprocessing.from_config(data, ["MRI"]).image(x, (1.0, 1.0), case="a")
    assert (len(clahe_calls), len(nlm_calls)) == (1, 1)
    np.testing.assert_array_equal(first, second)
    assert len(list((tmp_path / "cache").glob("*.npy"))) == 1
    # Normalisation runs after the cached step: another method reuses the entry.
    data.normalize = "minmax01"
    Preprocessing.from_config(data, ["MRI"]).image(x, (1.0, 1.0))
    assert len(clahe_calls) == 1
    # A step parameter, the spacing or the image content: a new entry.
    data.clahe_clip_limit = 0.05
    Preprocessing.from_config(data, ["MRI"]).image(x, (1.0, 1.0))
    Preprocessing.from_config(data, ["MRI"]).image(x, (2.0, 1.0))
    Preprocessing.from_config(data, ["MRI"]).image(x + 1, (2.0, 1.0))
    assert (len(clahe_calls), len(nlm_calls)) == (4, 4)
    assert len(list((tmp_path / "cache").glob("*.npy"))) == 4


def test_array_key_depends_on_content_spacing_and_description():
    x = np.arange(24, dtype=np.float32).reshape(4, 6, 1)
    k = cache_lib.array_key(x, (1.0, 1.0), {"clahe": {"clip_limit": 0.01}})
    assert k == cache_lib.array_key(x.copy(), (1, 1), {"clahe": {"clip_limit": 0.01}})
    others = [
        cache_lib.array_key(x, (1.0, 1.0), {"clahe": {"clip_limit": 0.02}}),
        cache_lib.array_key(x, (1.0, 0.5), {"clahe": {"clip_limit": 0.01}}),
        cache_lib.array_key(x.reshape(6, 4, 1), (1.0, 1.0), {"clahe": {"clip_limit": 0.01}}),
        cache_lib.array_key(x.astype(np.float64), (1.0, 1.0), {"clahe": {"clip_limit": 0.01}}),
    ]
    assert len({k, *others}) == 5


def test_interrupted_write_leaves_no_entry(tmp_path, monkeypatch):
    store = cache_lib.ArrayCache(tmp_path)
    real_replace = os.replace

    def interrupted(src, dst):
        raise KeyboardInterrupt  # killed between writing the temp file and renaming it

    monkeypatch.setattr(cache_lib.os, "replace", interrupted)
    with pytest.raises(KeyboardInterrupt):
        store.get_or_compute("k", lambda: np.ones(1000))
    assert os.listdir(tmp_path) == []  # neither the entry nor a temp file
    monkeypatch.setattr(cache_lib.os, "replace", real_replace)
    np.testing.assert_array_equal(store.get_or_compute("k", lambda: np.ones(3)), np.ones(3))
    np.testing.assert_array_equal(store.get_or_compute("k", lambda: np.zeros(3)), np.ones(3))
    assert (store.hits, store.misses) == (1, 2)


def test_unwritable_cache_warns_and_still_computes(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    store = cache_lib.ArrayCache(blocker / "sub")
    with pytest.warns(UserWarning, match="data.cache_dir"):
        out = store.get_or_compute("k", lambda: np.arange(3.0))
    np.testing.assert_array_equal(out, np.arange(3.0))


def test_predict_path_and_description_carry_the_enhancement(tmp_path, monkeypatch):
    """inference.case_probabilities (evaluate, predict, validation) feeds the model what
    Preprocessing.image makes, from the same cache entry; describe() records the steps."""
    from jaxseg import inference

    calls = _counting(monkeypatch, exposure, "equalize_adapthist")
    data = _config(tmp_path, clahe=True, clahe_kernel_mm=4.0, normalize="minmax11")
    prep = Preprocessing.from_config(data, ["R"])
    x = _smooth((16, 16))[..., None].astype(np.float32)
    seen = []

    def predictor(batch):
        seen.append(np.array(batch))
        return np.ones(batch.shape[:-1] + (2,), np.float32) / 2

    window = {"patch_size": (16, 16), "num_classes": 2, "overlap": 0.5, "batch_size": 1}
    inference.case_probabilities(x, (1.0, 1.0), predictor, window=window, preprocessing=prep)
    expected, _ = prep.image(x, (1.0, 1.0))
    np.testing.assert_allclose(seen[0][0], expected, atol=1e-6)
    assert len(calls) == 1
    described = prep.describe()
    assert described["clahe"] == {
        "kernel_mm": (4.0,),
        "clip_limit": 0.01,
        "nbins": 256,
        "channels": None,
    }
    assert described["denoise"] is None
    assert described["normalization"][0]["scheme"] == "minmax11"


def test_bad_enhancement_config(tmp_path):
    with pytest.raises(ConfigError, match="valid: None, nl_means"):
        Preprocessing.from_config(_config(tmp_path, denoise="bilateral"), ["MRI"])
    with pytest.raises(ConfigError, match="does not have"):
        Preprocessing.from_config(_config(tmp_path, clahe=True, clahe_channels=(2,)), ["R", "G"])
    with pytest.raises(ConfigError, match="clahe_clip_limit"):
        Preprocessing.from_config(_config(tmp_path, clahe=True, clahe_clip_limit=0.0), ["MRI"])
    with pytest.raises(ConfigError, match="clahe_kernel_mm"):
        Preprocessing.from_config(_config(tmp_path, clahe=True, clahe_kernel_mm=-1.0), ["MRI"])
    prep = Preprocessing.from_config(
        _config(tmp_path, clahe=True, clahe_kernel_mm=(1.0, 2.0, 3.0)), ["MRI"]
    )
    with pytest.raises(ConfigError, match="3 values for a 2D image"):
        prep.image(np.random.default_rng(0).random((6, 6, 1)), (1.0, 1.0))


def test_evaluate_and_predict_name_the_case_of_a_constant_channel(tmp_path):
    """evaluation.predict_labels (evaluate, predict, validation) passes the case on."""
    from jaxseg import evaluation
    from jaxseg.data.io import Image

    prep = Preprocessing.from_config(_config(tmp_path, clahe=True), ["MRI"])
    image = Image(
        data=np.zeros((8, 8, 1), np.float32),
        affine=np.eye(4),
        spacing=(1.0, 1.0),
        original_affine=np.eye(4),
        original_shape=(8, 8),
        path=tmp_path / "blank_0007.png",
    )
    window = {"patch_size": (8, 8), "num_classes": 2, "overlap": 0.5, "batch_size": 1}
    with pytest.raises(DataError, match=r"blank_0007\.png.*constant"):
        evaluation.predict_labels(image, None, window=window, preprocessing=prep)


def test_clahe_3d_volume_with_three_slices_is_not_taken_for_rgb(tmp_path):
    """skimage's public function equalises any array whose last axis is 3 long as an RGB
    image (on its HSV value); a 3-slice volume must be equalised as a volume. Reference:
    the public function on the same volume with the short axis moved first."""
    v = _smooth((16, 14, 3), 4)
    data = _config(tmp_path, clahe=True, clahe_kernel_mm=(4.0, 4.0, 2.0))
    y, _ = Preprocessing.from_config(data, ["noNorm"]).image(v[..., None], (1.0, 1.0, 1.0))
    moved = np.moveaxis((v - v.min()) / np.ptp(v), 2, 0)
    ref = np.moveaxis(exposure.equalize_adapthist(moved, kernel_size=(2, 4, 4)), 0, 2)
    np.testing.assert_allclose(y[..., 0], ref, atol=1e-6)


def test_drive_fundus_green_clahe_is_cached_and_raises_vessel_contrast(tmp_path, monkeypatch):
    """A real DRIVE fundus: CLAHE on the green channel (the classic use) runs once, the
    second read comes from the cache, and the vessels stand out more inside the field of
    view than with z-score alone."""
    from pathlib import Path

    from jaxseg.data.dataset import load_case, load_dataset

    folder = Path(__file__).resolve().parents[3] / "shared" / "data" / "drive_retina"
    if not (folder / "dataset.json").is_file():
        pytest.skip(
            f"expected in a clean clone: ../shared/data is not shipped ({folder} is absent)"
        )
    spec = load_dataset(folder)
    case = spec.training[0]
    image, label = load_case(spec, case)
    calls = _counting(monkeypatch, exposure, "equalize_adapthist")
    data = _config(tmp_path, clahe=True, clahe_channels=(1,))
    prep = Preprocessing.from_config(data, spec.modalities)
    x, _ = prep.image(image.data, image.spacing, case=case.case_id)
    again, _ = prep.image(image.data, image.spacing, case=case.case_id)
    assert len(calls) == 1
    np.testing.assert_array_equal(x, again)
    plain, _ = Preprocessing(spec.modalities).image(image.data, image.spacing)
    fov = image.data[..., 0] > 20  # the black border outside the fundus
    vessel, tissue = (label > 0) & fov, (label == 0) & fov

    def contrast(g):
        return (g[tissue].mean() - g[vessel].mean()) / g[tissue].std()

    assert contrast(x[..., 1]) > 1.5 * contrast(plain[..., 1])
