"""`inference.sliding_window_predict` against MONAI 1.6.1's `sliding_window_inference`.

The same deterministic predictor (numpy; not voxelwise: each window's output depends on
its mean, so which windows are taken and how they are blended both show) runs under both,
MONAI's wrapped as a torch callable on channels-first tensors. Compared: the blended
probabilities (2D and 3D; images not a multiple of the window; smaller than the window
along some or all axes; even and odd window sizes; Gaussian and constant blending), the
windows themselves (MONAI's `with_coord=True` hands the predictor each window's slices),
and the Gaussian importance map (MONAI's `compute_importance_map`, and the published
Gaussian window `scipy.signal.windows.gaussian`).

Skipped when torch or monai is absent (`pip install -e ".[test]"` installs them).
Runtime: ~5 s (most of it importing torch and MONAI).
"""

import numpy as np
import pytest
from scipy.signal import windows

torch = pytest.importorskip("torch")
pytest.importorskip("monai", minversion="1.6.1")
from monai.data.utils import compute_importance_map  # noqa: E402
from monai.inferers import sliding_window_inference  # noqa: E402

from jaxseg.inference import (  # noqa: E402
    gaussian_importance_map,
    sliding_window_predict,
    window_slices,
)

C, K = 2, 3
_W = np.array([[1.0, -2.0, 0.5], [0.3, 1.5, -1.0]])
_B = np.array([0.1, -0.2, 0.3])


def _predict(x: np.ndarray) -> np.ndarray:
    """`[b, *patch, C] -> [b, *patch, K]` f32: softmax of a per-voxel affine map plus the
    same map of the window's mean, in float64."""
    x = np.asarray(x, np.float64)
    mean = x.mean(axis=tuple(range(1, x.ndim - 1)), keepdims=True)
    z = x @ _W + _B + mean @ _W
    e = np.exp(z - z.max(-1, keepdims=True))
    return (e / e.sum(-1, keepdims=True)).astype(np.float32)


def _torch_predict(t: torch.Tensor) -> torch.Tensor:
    channels_last = np.moveaxis(t.numpy(), 1, -1)
    return torch.from_numpy(np.ascontiguousarray(np.moveaxis(_predict(channels_last), -1, 1)))


def _monai(image, patch, overlap, mode, sw_batch_size=3):
    t = torch.from_numpy(np.ascontiguousarray(np.moveaxis(image, -1, 0)[None]))
    out = sliding_window_inference(
        t, patch, sw_batch_size, _torch_predict, overlap=overlap, mode=mode, sigma_scale=0.125
    )
    return np.moveaxis(out[0].numpy(), 0, -1)


CASES = [
    ((23, 17), (8, 8)),  # 2D, not a multiple of the window, even window
    ((23, 17), (7, 9)),  # odd window
    ((5, 30), (8, 8)),  # one axis smaller than the window
    ((6, 7), (8, 8)),  # the whole image smaller than the window
    ((16, 16), (8, 8)),  # a multiple of the window
    ((13, 11, 9), (6, 5, 4)),  # 3D, mixed even and odd
    ((13, 11, 9), (5, 5, 5)),
    ((4, 12, 3), (6, 5, 4)),  # 3D, two axes smaller than the window
    ((3, 4, 2), (6, 5, 4)),  # 3D, smaller than the window on every axis
]


@pytest.mark.parametrize("shape,patch", CASES)
@pytest.mark.parametrize("overlap", [0.0, 0.25, 0.5, 0.8])
@pytest.mark.parametrize("mode", ["gaussian", "constant"])
def test_probabilities_equal_monai(shape, patch, overlap, mode):
    image = np.random.default_rng(0).normal(size=(*shape, C)).astype(np.float32)
    ours = sliding_window_predict(
        image,
        _predict,
        patch_size=patch,
        num_classes=K,
        overlap=overlap,
        batch_size=3,
        gaussian_sigma_scale=0.125,
        mode=mode,
    )
    ref = _monai(image, patch, overlap, mode)
    assert ours.shape == ref.shape == (*shape, K)
    # float32 accumulation in both, in different orders, over up to ~40 windows a voxel
    # (measured <= 2.5e-6). Before the importance map was clipped as MONAI clips it,
    # even windows were up to 3e-2 off.
    np.testing.assert_allclose(ours, ref, rtol=0, atol=1e-5)


def _monai_windows(padded_shape, patch, overlap):
    """The windows MONAI takes over an image of `padded_shape` (>= patch on every axis)."""
    seen = []

    def predictor(t, coords):
        for c in coords:  # [batch slice, channel slice, *spatial slices]
            seen.append(tuple((s.start, s.stop) for s in c[2:]))
        return torch.zeros((t.shape[0], 1, *t.shape[2:]))

    sliding_window_inference(
        torch.zeros((1, 1, *padded_shape)), patch, 4, predictor, overlap=overlap, with_coord=True
    )
    return sorted(seen)


@pytest.mark.parametrize(
    "shape,patch",
    [((100,), (8,)), ((31,), (7,)), ((9,), (3,)), ((21, 10, 13), (8, 5, 6)), ((96, 96), (96, 40))],
)
@pytest.mark.parametrize("overlap", [0.0, 0.25, 0.5, 0.6, 0.9])
def test_windows_equal_monai(shape, patch, overlap):
    if len(shape) == 1:  # MONAI needs 2 spatial axes at least: add a trivial one
        shape, patch = (*shape, 1), (*patch, 1)
    ours = sorted(
        tuple((s.start, s.stop) for s in sl) for sl in window_slices(shape, patch, overlap)
    )
    assert ours == _monai_windows(shape, patch, overlap)


@pytest.mark.parametrize("patch", [(8, 8), (7, 10), (6, 5, 9), (96, 96), (5, 64, 64)])
@pytest.mark.parametrize("sigma_scale", [0.125, 0.25, 0.01])
def test_gaussian_importance_map_equals_monai_and_scipy(patch, sigma_scale):
    ours = gaussian_importance_map(patch, sigma_scale).astype(np.float64)
    assert ours.dtype.kind == "f" and ours.shape == patch and ours.max() == 1.0
    # MONAI's map is not scaled to a peak of 1; only the ratios enter the blend.
    monai_map = compute_importance_map(patch, mode="gaussian", sigma_scale=sigma_scale).numpy()
    np.testing.assert_allclose(ours, monai_map / monai_map.max(), rtol=2e-6, atol=1e-9)
    # The published Gaussian window w(n) = exp(-(n - (M - 1) / 2)^2 / (2 sigma^2)), one per
    # axis, multiplied, clipped below at 1e-3, in float64.
    g = np.ones(())
    for p in patch:
        g = np.multiply.outer(g, windows.gaussian(p, std=sigma_scale * p, sym=True))
    g = np.maximum(g, 1e-3)
    np.testing.assert_allclose(ours, g / g.max(), rtol=1e-6, atol=1e-9)
