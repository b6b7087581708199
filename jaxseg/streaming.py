"""Real-time 2D streaming: frames in, class maps and overlays out, every frame timed.

The per-frame path is the production one: decode, the run's normalisation, sliding
windows (one jitted call per frame: all of a frame's windows go in one batch), the
argmax, and a colour overlay. A reader thread decodes ahead of the model and a writer
thread saves overlays behind it, so host work (decoding, PNG encoding) overlaps with the
model; the jitted predict function is compiled on the first frame and stays warm.

Frame latency is the frame's own decode time plus the time from when the model side
takes it to when its overlay is ready; waiting in the read-ahead queue is not counted
(a live source delivers frames at its own rate). Throughput is frames per second of
wall time after the first frame, which includes compilation and is reported apart.

    frames [H, W] or [H, W, 3] uint8 (display order: row, column)
    model input [X, Y, C] float32, canonical (x = column, y = row), as jaxseg.data.io
    reads a PNG, so a model trained on PNGs sees frames the way it saw its training data.
"""

from __future__ import annotations

import dataclasses
import queue
import threading
import time
import warnings
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from jaxseg import inference
from jaxseg.data.preprocess import Preprocessing
from jaxseg.errors import DataError

FRAME_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".gif")
# Class colours of the overlay (class 0, background, is left as it is).
PALETTE = np.array(
    [[0, 0, 0], [230, 25, 75], [60, 180, 75], [255, 225, 25], [0, 130, 200], [245, 130, 48],
     [145, 30, 180], [70, 240, 240], [240, 50, 230], [210, 245, 60]],
    np.uint8,
)  # fmt: skip
OVERLAY_ALPHA = 0.45
# ITU-R BT.601 luma, what Pillow's convert("L") uses for an RGB frame and a 1-channel model.
_LUMA = np.array([0.299, 0.587, 0.114], np.float32)


@dataclasses.dataclass(frozen=True)
class Frame:
    """One decoded frame (`pixels` None when it could not be read; `error` says why)."""

    name: str
    pixels: np.ndarray | None
    decode_s: float
    error: str | None = None


def _read_file(path: Path) -> Frame:
    from PIL import Image as PILImage

    start = time.perf_counter()
    try:
        with PILImage.open(path) as im:
            pixels = np.asarray(im if im.mode in ("L", "RGB") else im.convert("RGB"))
    except Exception as err:  # noqa: BLE001 - any undecodable frame is skipped, named
        return Frame(path.name, None, time.perf_counter() - start, f"{type(err).__name__}: {err}")
    return Frame(path.name, pixels, time.perf_counter() - start)


def read_frames(source: str | Path) -> Iterator[Frame]:
    """Frames of a folder of images (sorted by name) or of a video file (imageio)."""
    source = Path(source)
    if source.is_dir():
        files = sorted(p for p in source.iterdir() if p.suffix.lower() in FRAME_SUFFIXES)
        if not files:
            raise DataError(f"{source}: no frames ({', '.join(FRAME_SUFFIXES)}) in this folder")
        for path in files:
            yield _read_file(path)
        return
    if not source.exists():
        raise DataError(f"{source}: no such folder or video file")
    if source.suffix.lower() not in VIDEO_SUFFIXES:
        raise DataError(
            f"{source}: not a folder of frames or a video ({', '.join(VIDEO_SUFFIXES)})"
        )
    import imageio.v3 as iio

    try:
        frames = iter(iio.imiter(source))
    except Exception as err:  # noqa: BLE001 - imageio raises many types for bad files
        raise DataError(f"{source}: cannot open the video ({type(err).__name__}: {err})") from None
    index = 0
    while True:
        start = time.perf_counter()
        try:
            pixels = next(frames)
        except StopIteration:
            return
        except Exception as err:  # noqa: BLE001 - a broken frame ends the decodable stream
            yield Frame(f"frame_{index:06d}", None, 0.0, f"{type(err).__name__}: {err}")
            return
        yield Frame(f"frame_{index:06d}", np.asarray(pixels), time.perf_counter() - start)
        index += 1


def model_input(pixels: np.ndarray, in_channels: int, name: str = "frame") -> np.ndarray:
    """`[H, W]` or `[H, W, 3|4]` pixels -> `[X, Y, in_channels]` float32 (canonical order).

    An RGB frame for a 1-channel model is converted to luma (BT.601), as Pillow would."""
    x = np.asarray(pixels)
    if x.ndim == 3 and x.shape[-1] == 4:
        x = x[..., :3]
    if x.ndim == 2:
        x = x[..., None]
    if x.ndim != 3:
        raise DataError(f"{name}: frame of shape {pixels.shape} is not [H, W] or [H, W, C]")
    x = x.astype(np.float32)
    if x.shape[-1] == 3 and in_channels == 1:
        x = x @ _LUMA[:, None]
    elif x.shape[-1] == 1 and in_channels == 3:
        x = np.repeat(x, 3, axis=-1)
    if x.shape[-1] != in_channels:
        raise DataError(f"{name}: frame has {x.shape[-1]} channels; the model takes {in_channels}")
    return np.swapaxes(x, 0, 1)


def overlay(pixels: np.ndarray, labels: np.ndarray, alpha: float = OVERLAY_ALPHA) -> np.ndarray:
    """An RGB `[H, W, 3]` uint8 view of `pixels` with `labels [X, Y]` (canonical) blended
    in `PALETTE` colours; background pixels are unchanged."""
    rgb = np.asarray(pixels)
    if rgb.ndim == 2:
        rgb = np.repeat(rgb[..., None], 3, axis=-1)
    rgb = rgb[..., :3].astype(np.float32)
    if rgb.max(initial=0) > 255 or rgb.dtype.kind == "f" and rgb.max(initial=0) <= 1.0:
        rgb = 255.0 * (rgb - rgb.min()) / max(float(np.ptp(rgb)), 1e-8)
    classes = np.swapaxes(labels, 0, 1)
    colour = PALETTE[classes % len(PALETTE)].astype(np.float32)
    fg = (classes > 0)[..., None]
    out = np.where(fg, (1.0 - alpha) * rgb + alpha * colour, rgb)
    return np.clip(out + 0.5, 0, 255).astype(np.uint8)


class FramePredictor:
    """`labels = predictor(pixels)`: one frame through the run's normalisation, sliding
    windows (all of a frame's windows in one call) and argmax; `[X, Y]` uint8 canonical.

    Args:
      model, params: the Flax model and its parameters (a `workdir.TrainedRun`'s).
      config: the run's config (`data.patch_size`, `eval.overlap`, sigma).
      preprocessing: the run's `Preprocessing`.
      in_channels, num_classes: the model's.
      tta: an `inference.TTA` (or mirroring axes); `()` (the default) for real time.
      temperature: the run's softmax temperature (`jaxseg.calibration`).
    """

    def __init__(self, model, params, config, preprocessing: Preprocessing, *, in_channels: int,
                 num_classes: int, tta=(), temperature: float = 1.0):  # fmt: skip
        self.predict = inference.window_predictor(model, params, tta, temperature)
        self.window = inference.window_options(config, num_classes)
        self.preprocessing = preprocessing
        self.in_channels = in_channels
        self._batch: dict[tuple[int, ...], int] = {}

    def _window(self, shape: tuple[int, ...]) -> dict:
        if shape not in self._batch:
            patch = self.window["patch_size"]
            padded = [max(n, p) for n, p in zip(shape, patch)]
            self._batch[shape] = len(inference.window_slices(padded, patch, self.window["overlap"]))
        return {**self.window, "batch_size": self._batch[shape]}

    def __call__(self, pixels: np.ndarray, name: str = "frame") -> np.ndarray:
        x = model_input(pixels, self.in_channels, name)
        return inference.predict_case(
            x,
            (1.0,) * (x.ndim - 1),
            self.predict,
            window=self._window(x.shape[:-1]),
            preprocessing=self.preprocessing,
        )


def run_predictor(run, *, tta: bool = False) -> FramePredictor:
    """The `FramePredictor` of a `workdir.TrainedRun` (2D), with its temperature."""
    from jaxseg.workdir import load_temperature

    if run.info.dims != 2:
        raise DataError(f"{run.workdir} is a {run.info.dims}D run; streaming takes 2D runs")
    return FramePredictor(
        run.model,
        run.params,
        run.config,
        Preprocessing.from_config(run.config.data, run.info.modalities),
        in_channels=run.info.in_channels,
        num_classes=run.info.num_classes,
        tta=inference.tta_from_config(run.config, 2, enabled=tta),
        temperature=load_temperature(run),
    )


def random_predictor(
    name: str, size: int, *, model_args=None, in_channels=1, num_classes=2, seed=0
) -> FramePredictor:
    """A registry model with random weights, one `size`-square window per frame: what
    streaming costs for an architecture before anything is trained."""
    import jax

    from jaxseg import models
    from jaxseg.defaults import base_config

    model = models.build_model(
        name, dims=2, in_channels=in_channels, num_classes=num_classes, **(model_args or {})
    )
    x = np.zeros((1, size, size, in_channels), np.float32)
    params = model.init(jax.random.PRNGKey(seed), x, train=False)["params"]
    config = base_config()
    config.data.patch_size = (size, size)
    prep = Preprocessing(modalities=("MRI",) * in_channels)
    return FramePredictor(
        model, params, config, prep, in_channels=in_channels, num_classes=num_classes
    )


def latency_summary(latencies_s: list[float], wall_s: float, frames: int) -> dict:
    """FPS over `frames` in `wall_s`, and p50/p95/p99 latency in ms."""
    lat = np.asarray(latencies_s, np.float64) * 1000.0
    pct = lambda q: float(np.percentile(lat, q)) if lat.size else float("nan")
    return {
        "frames": frames,
        "fps": frames / wall_s if wall_s > 0 else float("nan"),
        "latency_p50_ms": pct(50),
        "latency_p95_ms": pct(95),
        "latency_p99_ms": pct(99),
        "fps_at_p95": 1000.0 / pct(95) if lat.size else float("nan"),
    }


def run_stream(
    frames: Iterable[Frame],
    predictor: Callable[[np.ndarray, str], np.ndarray],
    *,
    write: Callable[[str, np.ndarray, np.ndarray], None] | None = None,
    read_ahead: int = 4,
) -> dict:
    """Segments `frames` in order; `write(name, overlay [H, W, 3], labels [X, Y])` is run
    on a writer thread. Unreadable frames are skipped with a warning naming them.

    Returns `latency_summary` over the frames after the first (which compiles), plus
    `first_frame_ms`, `skipped` (names) and the per-stage medians in ms.
    """
    q: queue.Queue = queue.Queue(maxsize=max(1, read_ahead))
    failure: list[BaseException] = []

    def reader():
        try:
            for frame in frames:
                q.put(frame)
        except BaseException as err:  # noqa: BLE001 - re-raised on the main thread
            failure.append(err)
        finally:
            q.put(None)

    threading.Thread(target=reader, daemon=True, name="jaxseg-stream-reader").start()
    latencies, model_s, overlay_s, skipped, pending = [], [], [], [], []
    first_ms, timed_start, processed = None, None, 0
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="jaxseg-stream-writer") as pool:
        while (frame := q.get()) is not None:
            if frame.pixels is None:
                warnings.warn(
                    f"{frame.name}: unreadable frame skipped ({frame.error})", stacklevel=2
                )
                skipped.append(frame.name)
                continue
            start = time.perf_counter()
            labels = predictor(frame.pixels, frame.name)
            mid = time.perf_counter()
            shown = overlay(frame.pixels, labels)
            done = time.perf_counter()
            if write is not None:
                pending.append(pool.submit(write, frame.name, shown, labels))
            processed += 1
            if first_ms is None:
                first_ms, timed_start = 1000.0 * (frame.decode_s + done - start), done
                continue
            latencies.append(frame.decode_s + done - start)
            model_s.append(mid - start)
            overlay_s.append(done - mid)
        end = time.perf_counter()
        for future in pending:
            future.result()  # a failed write surfaces here
    if failure:
        raise failure[0]
    if processed == 0:
        raise DataError("no readable frames: every frame was skipped")
    timed = processed - 1
    summary = latency_summary(latencies, end - timed_start if timed else 0.0, timed)
    median_ms = lambda v: float(np.median(v) * 1000.0) if v else float("nan")
    return {
        **summary,
        "first_frame_ms": first_ms,
        "model_median_ms": median_ms(model_s),
        "overlay_median_ms": median_ms(overlay_s),
        "skipped": skipped,
    }


def synthetic_frames(shape: tuple[int, int], count: int, seed: int = 0) -> list[Frame]:
    """`count` greyscale uint8 frames `[H, W]` of drifting bright discs on noise (decode
    time 0: the benchmark measures the path after decoding, plus a PNG decode it times
    separately)."""
    rng = np.random.default_rng(seed)
    h, w = shape
    yy, xx = np.mgrid[0:h, 0:w]
    out = []
    for i in range(count):
        cy, cx = h / 2 + h / 4 * np.sin(i / 10), w / 2 + w / 4 * np.cos(i / 10)
        disc = ((yy - cy) ** 2 + (xx - cx) ** 2 < (min(h, w) / 6) ** 2) * 120.0
        pixels = np.clip(60 + disc + rng.normal(0, 20, shape), 0, 255).astype(np.uint8)
        out.append(Frame(f"synthetic_{i:05d}", pixels, 0.0))
    return out


def png_decode_seconds(pixels: np.ndarray, repeats: int = 20) -> float:
    """Median seconds to decode `pixels` from PNG with Pillow (the folder path's decode)."""
    import io

    from PIL import Image as PILImage

    buffer = io.BytesIO()
    PILImage.fromarray(pixels).save(buffer, format="PNG")
    data = buffer.getvalue()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        with PILImage.open(io.BytesIO(data)) as im:
            np.asarray(im)
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def benchmark_stream(predictor: FramePredictor, shape: tuple[int, int], frames: int = 100) -> dict:
    """The streaming path on synthetic `shape` frames, with a timed PNG decode added to
    each frame's latency (so the figure is the folder path's: decode included)."""
    synthetic = synthetic_frames(shape, frames + 1)
    decode = png_decode_seconds(synthetic[0].pixels)
    synthetic = [dataclasses.replace(f, decode_s=decode) for f in synthetic]
    result = run_stream(synthetic, predictor)
    return {"frame_shape": list(shape), "png_decode_ms": 1000.0 * decode, **result}
