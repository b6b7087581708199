"""MRI acquisition artefacts of the on-device augmentation (jaxseg.augment.mri, log-gamma)
against torchio 1.2.1 (`Motion`, `RandomAnisotropy`, `RescaleIntensity` + `Gamma`) on the
same parameters, and the formulas written out in numpy.

torchio's `Motion` rebuilds each rigid transform from its matrix and translation, which
drops the rotation centre it set: it rotates about the world origin. The images here get
an affine whose world origin is the array centre `(S - 1) / 2`, the centre jaxseg rotates
about, and a zero border (3 voxels), where SimpleITK (default value outside, edge-clamped
within half a voxel) and jaxseg's "constant" fill would otherwise differ.
Runtime ~15-25 s on the shared 2-core machine, most of it XLA compiles and torch import.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import SimpleITK as sitk
import torch
import torchio as tio
from scipy import ndimage

from jaxseg import augment
from jaxseg.augment.stages import _stages
from jaxseg.defaults import base_config
from jaxseg.errors import ConfigError

from .test_augment import _only  # the default config with every transform off, then kw

LPS = np.diag([-1.0, -1.0, 1.0])  # RAS <-> LPS (SimpleITK's physical frame)


def _phantom(shape, seed=0, border=3):
    """Smooth blobs on a zero background, exactly 0 within `border` voxels of the edge."""
    rng = np.random.default_rng(seed)
    x = ndimage.gaussian_filter(rng.random(shape), 1.5)
    x = (x - x.min()) / (x.max() - x.min())
    inner = tuple(slice(border, n - border) for n in shape)
    out = np.zeros(shape, np.float32)
    out[inner] = x[inner]
    return out


def _centred_affine(shape, spacing):
    c = (np.array(shape) - 1) / 2.0
    a = np.diag([*spacing, 1.0])
    a[:3, 3] = -np.asarray(spacing) * c
    return a


def _voxel_motion(degrees, translation, spacing):
    """torchio's (degrees, translation mm) -> jaxseg's voxel-grid (matrices, offsets):
    the rotation as SimpleITK's Euler3DTransform builds it, taken from LPS to voxels."""
    s = np.diag(spacing)
    mats, offs = [], []
    for d, t in zip(degrees, translation):
        e = sitk.Euler3DTransform()
        e.SetRotation(*np.radians(np.asarray(d, np.float64)).tolist())
        r = np.array(e.GetMatrix()).reshape(3, 3)
        mats.append(np.linalg.inv(s) @ LPS @ r @ LPS @ s)
        offs.append(np.linalg.inv(s) @ LPS @ np.asarray(t, np.float64))
    return np.array(mats, np.float32), np.array(offs, np.float32)


# ----------------------------------------------------------------------------- motion


@pytest.mark.parametrize("times", [(0.3, 0.62), (0.55, 0.8), (0.1, 0.25, 0.45)])
def test_kspace_composition_equals_torchio_on_the_same_moved_images(times):
    """torchio's own composition (Motion.add_artifact: fftshift(fftn), sort_spectra, line
    segments, ifftn, real part) fed the moved images jaxseg made: equal within 2e-6."""
    times = np.array(times, np.float32)
    shape = (14, 12, 10)
    rng = np.random.default_rng(1)
    moved = rng.normal(size=(len(times) + 1, *shape)).astype(np.float32)
    m = tio.Motion(degrees=0, translation=0, times=times, image_interpolation="linear")
    m.resample_images = lambda image, transforms, interpolation: [
        sitk.GetImageFromArray(a.T.copy()) for a in moved
    ]
    reference = sitk.GetImageFromArray(moved[0].T.copy())
    want = m.add_artifact(reference, None, times, "linear").numpy()
    got = np.asarray(jax.jit(augment.compose_kspace)(moved[..., None], times))[..., 0]
    np.testing.assert_allclose(got, want, atol=2e-6)
    assert np.abs(got - moved[0]).max() > 0.1  # the composition did something


def test_kspace_composition_2d_matches_numpy_transcription():
    """2D (torchio's 2D is X x Y x 1, a single k-space line): the same rule along the last
    axis, written out with numpy's FFT."""
    rng = np.random.default_rng(2)
    moved = rng.normal(size=(3, 16, 12, 2)).astype(np.float32)
    times = np.array([0.2, 0.45], np.float32)  # no time after the centre: reference last
    spec = [np.fft.fftshift(np.fft.fft2(m, axes=(0, 1)), axes=(0, 1)) for m in moved]
    spec[0], spec[2] = spec[2], spec[0]
    bounds = [int(12 * t) for t in times] + [12]
    out, lo = np.empty_like(spec[0]), 0
    for s, hi in zip(spec, bounds):
        out[:, lo:hi] = s[:, lo:hi]
        lo = hi
    want = np.real(np.fft.ifft2(np.fft.ifftshift(out, axes=(0, 1)), axes=(0, 1)))
    got = np.asarray(jax.jit(augment.compose_kspace)(moved, times))
    np.testing.assert_allclose(got, want, atol=1e-5)


def test_motion_matches_torchio_motion():
    """The whole transform on one image: torchio Motion (SimpleITK linear resampling in
    float64 coordinates) against jaxseg's on the converted parameters, within 2e-5 of a
    [0, 1] image. Anisotropic spacing: rotations are rigid in mm."""
    shape, spacing = (20, 18, 16), (1.0, 1.25, 1.5)
    x = _phantom(shape)
    degrees = np.array([[3.0, -5.0, 8.0], [-4.0, 2.0, -6.0]], np.float32)
    translation = np.array([[1.5, -2.0, 0.7], [-1.0, 0.5, 2.0]], np.float32)
    times = np.array([0.3, 0.62], np.float32)
    image = tio.ScalarImage(
        tensor=torch.from_numpy(x[None]), affine=_centred_affine(shape, spacing)
    )
    want = tio.Motion(
        degrees=degrees, translation=translation, times=times, image_interpolation="linear"
    )(image)
    want = want.data[0].numpy()
    mats, offs = _voxel_motion(degrees, translation, spacing)
    got = np.asarray(jax.jit(augment.motion)(x[..., None], mats, offs, times))[..., 0]
    np.testing.assert_allclose(got, want, atol=2e-5)
    assert np.abs(want - x).max() > 0.05  # a visible artefact, not the identity


def test_motion_stage_leaves_labels_and_is_identity_without_motion():
    rng = np.random.default_rng(3)
    image = rng.normal(size=(3, 12, 10, 8, 2)).astype(np.float32)
    label = rng.integers(0, 3, (3, 12, 10, 8)).astype(np.int32)
    still = _only(motion_prob=1.0, motion_degrees=(0.0, 0.0), motion_translation=(0.0, 0.0))
    x, y = jax.jit(lambda k, a, b: augment.augment_batch(k, a, b, still))(
        jax.random.key(0), image, label
    )
    # every position is the same: the k-space is the image's own
    np.testing.assert_allclose(np.asarray(x), image, atol=1e-5)
    np.testing.assert_array_equal(np.asarray(y), label)
    # drawn parameters: times as torchio draws them (sorted, within 0.3 step of k/(K+1)),
    # angles and shifts inside their ranges, shifts divided by the spacing
    c = augment.resolve_config(
        _only(motion_prob=1.0, motion_num_transforms=3, motion_translation=(2.0, 4.0))
    )
    stage = next(s for s in _stages(c, (12, 10, 8), 2) if s.name == "motion")
    spacing = jnp.array([1.0, 2.0, 4.0])
    for seed in range(4):
        u = jax.random.uniform(jax.random.key(seed), (stage.n_draws,))
        fired, (mats, shifts, times) = stage.decide(u, jax.random.key(0), spacing)
        t = np.asarray(times)
        assert bool(fired) and np.all(np.diff(t) > 0)
        assert np.all(np.abs(t - np.arange(1, 4) / 4) <= 0.3 / 4 + 1e-6)
        mm = np.asarray(shifts) * np.asarray(spacing)
        assert np.all((mm >= 2.0 - 1e-5) & (mm <= 4.0 + 1e-5))
        # rigid in mm: S M S^-1 is a rotation by at most 10 degrees about each axis
        r = np.diag(spacing) @ np.asarray(mats) @ np.diag(1 / np.asarray(spacing))
        np.testing.assert_allclose(
            r @ np.swapaxes(r, 1, 2), np.broadcast_to(np.eye(3), r.shape), atol=1e-5
        )
        assert np.all(
            np.arccos(np.clip((np.trace(r, axis1=1, axis2=2) - 1) / 2, -1, 1)) < np.radians(18)
        )


# ----------------------------------------------------------------------------- anisotropy


def _torchio_anisotropy(x, axis, factor, spacing=(1.0, 1.0, 1.0)):
    subject = tio.Subject(
        img=tio.ScalarImage(tensor=torch.from_numpy(x[None]), affine=np.diag([*spacing, 1.0]))
    )
    t = tio.RandomAnisotropy(axes=axis, downsampling=(factor, factor))
    return t(subject)["img"].data[0].numpy()


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_anisotropy_matches_torchio(axis):
    """Nearest downsampling onto torchio's centred coarse grid and linear upsampling back,
    border slabs beyond the coarse grid 0: within 1e-5 (factors avoid exact half-voxel
    ties, where float32 and SimpleITK's float64 may round apart)."""
    x = np.random.default_rng(4).normal(size=(24, 21, 16)).astype(np.float32)
    fn = jax.jit(augment.anisotropy, static_argnums=1)
    for factor in (1.7, 2.0, 3.3, 4.4):
        got = np.asarray(fn(x[..., None], axis, factor))[..., 0]
        np.testing.assert_allclose(got, _torchio_anisotropy(x, axis, factor), atol=1e-5)


def test_anisotropy_2d_matches_torchio():
    x = np.random.default_rng(5).normal(size=(64, 64, 1)).astype(np.float32)
    for axis, factor in ((0, 2.6), (1, 3.8)):
        got = np.asarray(jax.jit(augment.anisotropy, static_argnums=1)(x, axis, factor))
        np.testing.assert_allclose(got, _torchio_anisotropy(x, axis, factor), atol=1e-5)


def test_anisotropy_factor_is_capped_by_the_axis_spacing():
    """The documented rule: factor = min(U(range), max(1, max_spacing / spacing[axis])).
    At 5 mm with a 6 mm cap a draw of 3 becomes 1.2 (torchio at 1.2 on the same 5 mm
    grid); an axis already at 8 mm stays as it is; the labels never change."""
    x = _phantom((16, 12, 21), seed=6, border=0)  # odd: no coarse sample on a half voxel
    label = (x > 0.5).astype(np.int32)
    cfg = _only(anisotropy_prob=1.0, anisotropy_axes=(2,), anisotropy_downsampling=(3.0, 3.0))
    fn = jax.jit(lambda a, b, s: augment.augment_batch(jax.random.key(1), a, b, cfg, spacing=s))
    xs, ls = np.stack([x, x])[..., None], np.stack([label, label])
    out, lab = fn(xs, ls, np.array([[1.0, 1.0, 5.0], [1.0, 1.0, 8.0]], np.float32))
    out = np.asarray(out)[..., 0]
    want = _torchio_anisotropy(x, 2, 1.2, spacing=(1.0, 1.0, 5.0))
    np.testing.assert_allclose(out[0], want, atol=1e-5)
    assert np.abs(out[0] - x).max() > 0.01
    np.testing.assert_array_equal(out[1], x)  # 8 mm >= the 6 mm cap: untouched
    np.testing.assert_array_equal(np.asarray(lab), ls)


# ----------------------------------------------------------------------------- log-gamma


def test_log_gamma_matches_torchio_gamma_on_the_rescaled_image():
    """gamma = exp(beta) on each channel rescaled to [0, 1] by its min and max, mapped back
    (nnU-Net's handling of negative, z-scored values): torchio RescaleIntensity((0, 1)) +
    Gamma per channel, rescaled back in numpy, within 1e-5."""
    rng = np.random.default_rng(7)
    x = rng.normal(size=(2, 10, 9, 8, 2)).astype(np.float32)  # z-scored: half negative
    beta = 0.25
    cfg = _only(log_gamma_prob=1.0, log_gamma_range=(beta, beta))
    got, lab = jax.jit(lambda a, b: augment.augment_batch(jax.random.key(2), a, b, cfg))(
        x, np.zeros(x.shape[:-1], np.int32)
    )
    gamma = float(np.exp(beta))
    for b in range(2):
        for ch in range(2):
            v = x[b, ..., ch]
            lo, hi = v.min(), v.max()
            unit = tio.RescaleIntensity(out_min_max=(0, 1))(torch.from_numpy(v[None]))
            powered = tio.Gamma(gamma)(unit).numpy()[0]
            want = powered * (hi - lo) + lo
            np.testing.assert_allclose(np.asarray(got)[b, ..., ch], want, atol=1e-5)
            np.testing.assert_allclose(
                want, ((v - lo) / (hi - lo)) ** gamma * (hi - lo) + lo, atol=1e-5
            )
    assert not np.asarray(lab).any()
    # draws: log(gamma) ~ U(range) per channel
    c = augment.resolve_config(_only(log_gamma_prob=1.0, log_gamma_range=(-0.3, 0.2)))
    stage = next(s for s in _stages(c, (8, 8), 3) if s.name == "log_gamma")
    u = jax.random.uniform(jax.random.key(3), (64, stage.n_draws))
    logs = np.log(np.asarray(jax.vmap(lambda v: stage.decide(v, None)[1])(u)))
    assert logs.min() >= -0.3 - 1e-6 and logs.max() <= 0.2 + 1e-6 and logs.std() > 0.1


# ----------------------------------------------------------------------------- the pipeline


@pytest.mark.parametrize("shape", [(3, 24, 24, 24), (4, 64, 64)])
def test_artefacts_jit_keep_labels_and_are_deterministic(shape):
    rng = np.random.default_rng(8)
    image = rng.normal(size=shape + (2,)).astype(np.float32)
    label = rng.integers(0, 4, shape).astype(np.int32)
    cfg = _only(motion_prob=1.0, anisotropy_prob=1.0, log_gamma_prob=1.0)
    spacing = [1.0, 1.5, 3.0][: len(shape) - 1]
    fn = jax.jit(lambda k, a, b: augment.augment_batch(k, a, b, cfg, spacing=spacing))
    x1, y1 = fn(jax.random.key(4), image, label)
    x2, _ = fn(jax.random.key(4), image, label)
    x3, _ = fn(jax.random.key(5), image, label)
    assert x1.shape == image.shape and x1.dtype == jnp.float32 and y1.dtype == jnp.int32
    np.testing.assert_array_equal(np.asarray(y1), label)
    np.testing.assert_array_equal(np.asarray(x1), np.asarray(x2))
    assert np.all(np.isfinite(np.asarray(x1)))
    assert not np.allclose(np.asarray(x1), np.asarray(x3))
    assert not np.allclose(np.asarray(x1)[0], image[0])


def test_artefact_config_errors_name_the_key():
    img, lab = np.zeros((1, 8, 8, 1), np.float32), np.zeros((1, 8, 8), np.int32)
    bad = {
        "motion_degrees": (5.0, -5.0),
        "motion_translation": (1.0,),
        "motion_num_transforms": 0,
        "motion_prob": 1.5,
        "log_gamma_range": (0.3, -0.3),
        "log_gamma_prob": -0.1,
        "anisotropy_downsampling": (0.5, 2.0),
        "anisotropy_axes": (0, 3),
        "anisotropy_max_spacing": -1.0,
    }
    for key, value in bad.items():
        with pytest.raises(ConfigError, match=f"augment.{key}"):
            augment.augment_batch(jax.random.key(0), img, lab, {key: value})
    with pytest.raises(ConfigError, match="augment.anisotropy_downsampling"):
        augment.resolve_config({"anisotropy_downsampling": (3.0, 2.0)})
    with pytest.raises(ConfigError, match="augment.anisotropy_axes"):  # no z in 2D
        augment.augment_batch(
            jax.random.key(0), img, lab, {"anisotropy_prob": 1.0, "anisotropy_axes": (2,)}
        )
    with pytest.raises(ConfigError, match="spacing"):
        augment.augment_batch(
            jax.random.key(0), img, lab, {"motion_prob": 1.0}, spacing=(1.0, 1.0, 1.0)
        )


def test_artefacts_are_off_by_default():
    c = augment.resolve_config(base_config().augment)
    assert c.motion_prob == c.anisotropy_prob == c.log_gamma_prob == 0.0
