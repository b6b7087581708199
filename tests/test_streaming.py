"""Streaming: frames enter the model as jaxseg.data.io reads the same PNG, overlays land
where the labels are, the one-call-per-frame path agrees with predict's sliding windows,
unreadable frames are skipped by name, and videos are read with imageio."""

import warnings

import numpy as np
import pytest
from PIL import Image as PILImage

from jaxseg import inference, streaming
from jaxseg.data import io
from jaxseg.data.preprocess import Preprocessing
from jaxseg.errors import DataError


def _png(path, pixels):
    PILImage.fromarray(pixels).save(path)
    return path


def test_frames_enter_the_model_as_io_reads_the_png(tmp_path):
    rng = np.random.default_rng(0)
    grey = rng.integers(0, 256, (23, 31), dtype=np.uint8)
    rgb = rng.integers(0, 256, (23, 31, 3), dtype=np.uint8)
    for pixels, channels in ((grey, 1), (rgb, 3)):
        path = _png(tmp_path / f"f{channels}.png", pixels)
        expected = io.read_image(path, dims=2).data
        np.testing.assert_array_equal(streaming.model_input(pixels, channels), expected)
    # An RGB frame for a one-channel model: Pillow's own greyscale conversion (BT.601).
    luma = np.asarray(PILImage.fromarray(rgb).convert("L"), np.float32)
    np.testing.assert_allclose(streaming.model_input(rgb, 1)[..., 0], luma.T, atol=1.0)
    with pytest.raises(DataError, match="2 channels"):
        streaming.model_input(np.zeros((4, 4, 2), np.uint8), 1, "bad.png")


def test_overlay_colours_only_the_labelled_pixels_in_display_order():
    pixels = np.full((6, 9), 100, np.uint8)  # H=6 rows, W=9 columns
    labels = np.zeros((9, 6), np.uint8)  # canonical [x=column, y=row]
    labels[5, 2] = 1  # column 5, row 2
    out = streaming.overlay(pixels, labels, alpha=0.5)
    assert out.shape == (6, 9, 3)
    expected = np.floor(0.5 * 100 + 0.5 * streaming.PALETTE[1].astype(float) + 0.5)  # half up
    np.testing.assert_array_equal(out[2, 5], expected)
    mask = np.ones((6, 9), bool)
    mask[2, 5] = False
    assert np.all(out[mask] == 100)


def _tiny_predictor(patch=16, channels=1, num_classes=3):
    import jax

    from jaxseg.defaults import base_config
    from jaxseg.models import build_model

    model = build_model(
        "unet", dims=2, in_channels=channels, num_classes=num_classes, features=(4, 8)
    )
    x = np.zeros((1, patch, patch, channels), np.float32)
    params = model.init(jax.random.PRNGKey(1), x, train=False)["params"]
    config = base_config()
    config.data.patch_size = (patch, patch)
    prep = Preprocessing(modalities=("MRI",))
    frame = streaming.FramePredictor(
        model, params, config, prep, in_channels=channels, num_classes=num_classes
    )
    return frame, model, params, config, prep


def test_one_call_per_frame_agrees_with_predicts_batched_windows():
    frame_predictor, model, params, config, prep = _tiny_predictor()
    pixels = np.random.default_rng(2).integers(0, 256, (37, 29), dtype=np.uint8)
    got = frame_predictor(pixels)
    x = streaming.model_input(pixels, 1)
    window = inference.window_options(config, 3)  # eval.batch_size windows per call
    want = inference.predict_case(
        x, (1.0, 1.0), inference.window_predictor(model, params), window=window, preprocessing=prep
    )
    np.testing.assert_array_equal(got, want)


def test_stream_skips_unreadable_frames_by_name_and_writes_the_rest(tmp_path):
    frame_predictor = _tiny_predictor()[0]
    rng = np.random.default_rng(3)
    for i in range(4):
        _png(tmp_path / f"f{i}.png", rng.integers(0, 256, (20, 24), dtype=np.uint8))
    (tmp_path / "f2.png").write_bytes(b"not a png")
    written = {}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = streaming.run_stream(
            streaming.read_frames(tmp_path),
            frame_predictor,
            write=lambda name, shown, labels: written.setdefault(name, shown.shape),
        )
    assert result["skipped"] == ["f2.png"]
    assert any("f2.png" in str(w.message) for w in caught)
    assert written == {f"f{i}.png": (20, 24, 3) for i in (0, 1, 3)}
    assert result["frames"] == 2  # timed: all but the first (compiling) frame
    assert result["latency_p50_ms"] <= result["latency_p95_ms"] <= result["latency_p99_ms"]


def test_videos_are_read_frame_by_frame(tmp_path):
    import imageio.v3 as iio

    frames = np.random.default_rng(4).integers(0, 256, (5, 16, 20, 3), dtype=np.uint8)
    gif = tmp_path / "clip.gif"
    iio.imwrite(gif, frames, loop=0)
    read = list(streaming.read_frames(gif))
    assert [f.name for f in read] == [f"frame_{i:06d}" for i in range(5)]
    assert all(f.pixels.shape[:2] == (16, 20) for f in read)
    with pytest.raises(DataError, match="no such"):
        list(streaming.read_frames(tmp_path / "missing.mp4"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no frames"):
        list(streaming.read_frames(tmp_path / "empty"))


def test_benchmark_stream_reports_percentiles_on_synthetic_frames():
    result = streaming.benchmark_stream(_tiny_predictor()[0], (32, 40), frames=6)
    assert result["frames"] == 6 and result["frame_shape"] == [32, 40]
    assert result["png_decode_ms"] > 0 and result["fps"] > 0
    assert result["latency_p50_ms"] <= result["latency_p99_ms"]
