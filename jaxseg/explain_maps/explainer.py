"""`Explainer`: a map of a trained run on an image file, the way predict reads and writes
files (see the package docstring); the NIfTI map and the PNG overlay."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import jax.numpy as jnp
import numpy as np
from nibabel import orientations as nio

from jaxseg import inference
from jaxseg.data import io, outputs, resample
from jaxseg.data.preprocess import PAD_VALUE, Preprocessing
from jaxseg.errors import DataError, JaxsegError
from jaxseg.explain_maps.attention import attention_blocks, attention_map
from jaxseg.explain_maps.gradcam import (
    METHODS,
    LayerInfo,
    check_layer,
    default_layer,
    feature_layers,
    grad_cam,
    normalize_map,
    seg_score,
)
from jaxseg.workdir import load_trained


def _centre_window(
    centre: Sequence[float], shape: Sequence[int], patch: Sequence[int]
) -> tuple[tuple[slice, ...], list[tuple[int, int]]]:
    """The patch-sized window centred on `centre` (clamped into the image), and the
    padding (before, after) per axis of an image smaller than the patch (as the sliding
    window pads: `diff // 2` before)."""
    box, pads = [], []
    for c, n, p in zip(centre, shape, patch):
        if n <= p:
            box.append(slice(0, n))
            pads.append(((p - n) // 2, p - n - (p - n) // 2))
        else:
            start = int(np.clip(round(c - p / 2), 0, n - p))
            box.append(slice(start, start + p))
            pads.append((0, 0))
    return tuple(box), pads


class Explainer:
    """A trained run ready to explain images (`python -m jaxseg.explain`).

    workdir, which: as `workdir.load_trained`. max_image_bytes: the largest image read
    (`io.read_image`); None: the run's `data.max_image_bytes`.
    """

    def __init__(
        self,
        workdir: str | os.PathLike,
        which: str = "auto",
        *,
        max_image_bytes: int | None = None,
    ):
        self.run = load_trained(workdir, which)
        self.config, self.info = self.run.config, self.run.info
        self.variables = {"params": self.run.params}
        self.patch = tuple(int(p) for p in self.config.data.patch_size)
        self.max_image_bytes = max_image_bytes or self.config.data.get(
            "max_image_bytes", io.DEFAULT_MAX_IMAGE_BYTES
        )
        self.preprocessing = Preprocessing.from_config(self.config.data, self.info.modalities)
        self._sample = jnp.zeros((1, *self.patch, self.info.in_channels), jnp.float32)

    @property
    def model_name(self) -> str:
        return str(self.config.model.name)

    def layers(self, method: str = "gradcam") -> list[LayerInfo]:
        """The layers `--layer` may name for `method` (module paths, output shapes)."""
        if method == "attention":
            blocks = attention_blocks(self.run.model, self.variables, self._sample, train=False)
            if not blocks:
                raise JaxsegError(
                    f"--method attention: model {self.model_name} has no window attention "
                    "(lightseg models have); use --method gradcam"
                )
            return blocks
        return feature_layers(self.run.model, self.variables, self._sample, train=False)

    def default_layer(self, method: str = "gradcam") -> str:
        """Grad-CAM: `default_layer`; attention: the last block of the first stage (the
        finest windows)."""
        layers = self.layers(method)
        if method == "attention":
            first_stage = [b for b in layers if b.shape[1:-1] == layers[0].shape[1:-1]]
            return first_stage[-1].name
        return default_layer(layers, self.info.num_classes)

    def class_index(self, text: str | int) -> int:
        """A class index from its number or name; JaxsegError listing the run's classes."""
        labels = self.info.labels
        for k, name in labels.items():
            if str(text) in (str(k), name):
                return int(k)
        listed = ", ".join(f"{k} {name}" for k, name in sorted(labels.items()))
        raise JaxsegError(
            f"--class {text}: the run's classes (dataset labels) are {listed}; give one of them"
        )

    def explain(
        self,
        image: io.Image,
        class_index: int,
        *,
        roi: np.ndarray | None = None,
        layer: str | None = None,
        method: str = "gradcam",
        query: Sequence[int] | None = None,
    ) -> np.ndarray:
        """The map `[*S]` float32 in [0, 1] on `image`'s canonical grid (zero outside the
        explained window).

        roi: `[*S]` region on the same grid (nonzero = in), or None for the predicted
        class-`class_index` mask. query: for `method="attention"`, voxel indices on the
        canonical grid."""
        if method not in METHODS:
            raise JaxsegError(f"--method {method!r}: use one of {', '.join(METHODS)}")
        if image.num_channels != self.info.in_channels:
            raise DataError(
                f"{image.path} has {image.num_channels} channel(s); the model was trained "
                f"on {self.info.in_channels} ({', '.join(self.info.modalities)})"
            )
        layers = self.layers(method)
        layer = self.default_layer(method) if layer is None else layer
        check_layer(layers, layer, self.model_name)
        x, grid = self.preprocessing.image(image.data, image.spacing, case=str(image.path))
        model_shape = x.shape[:-1]
        if method == "attention":
            if query is None:
                raise JaxsegError("--method attention needs --query x,y[,z] (a voxel)")
            centre = [
                (q - b.start) * s / t
                for q, b, s, t in zip(query, grid.box, grid.spacing, grid.model_spacing)
            ]
            region = None
        else:
            region = self._region(x, grid, roi, class_index, image)
            centre = np.argwhere(region).mean(axis=0)
        box, pads = _centre_window(centre, model_shape, self.patch)
        window = np.pad(x[box], [*pads, (0, 0)], constant_values=PAD_VALUE)[None]
        if method == "attention":
            inside = [
                int(np.clip(round(c), b.start, b.stop - 1)) - b.start + before
                for c, b, (before, _) in zip(centre, box, pads)
            ]
            cam = attention_map(self.run.model, self.variables, window, layer, inside, train=False)
        else:
            target = np.pad(region[box], pads)[None].astype(np.float32)
            cam = grad_cam(
                self.run.model,
                self.variables,
                window,
                layer,
                seg_score,
                (jnp.int32(class_index), target),
                train=False,
            )[0]
        unpad = tuple(slice(before, p - after) for (before, after), p in zip(pads, self.patch))
        full = np.zeros(model_shape, np.float32)
        full[box] = np.asarray(cam)[unpad]
        on_file = self.preprocessing.to_file_grid(full[..., None], grid)[..., 0]
        return normalize_map(resample.uncrop(on_file, grid.box, grid.shape, fill=0.0)[None])[0]

    def _region(self, x, grid, roi, class_index: int, image: io.Image) -> np.ndarray:
        """The score's region on the model grid: the ROI, or the predicted class mask."""
        if roi is not None:
            region = self.preprocessing.label((np.asarray(roi) > 0).astype(np.int32), grid, 2)[0]
            if not region.any():
                raise DataError("--roi: the region is empty (no nonzero voxel); give a mask")
            return region > 0
        # The run's own test-time augmentation, so the region is predict's mask.
        tta = inference.tta_from_config(self.config, self.info.dims)
        predictor = inference.window_predictor(self.run.model, self.run.params, tta)
        window = inference.window_options(self.config, self.info.num_classes)
        labels = inference.argmax_labels(inference.sliding_window_predict(x, predictor, **window))
        region = labels == class_index
        if not region.any():
            raise DataError(
                f"{image.path}: the model predicts class {class_index} "
                f"({self.info.labels[class_index]}) nowhere; give the region with --roi"
            )
        return region

    def explain_file(
        self,
        input_path: str | Path,
        output: str | Path,
        class_name: str | int,
        *,
        roi: str | Path | None = None,
        layer: str | None = None,
        method: str = "gradcam",
        query: Sequence[int] | None = None,
    ) -> list[Path]:
        """Explains one image file: writes `output` (float32 NIfTI, the input's shape and
        affine) and the PNG overlay(s) beside it; returns the paths written.
        query: voxel indices on the file as stored (x, y[, z])."""
        input_path, output = Path(input_path), Path(output)
        class_index = self.class_index(class_name)
        if not output.name.lower().endswith(io.NIFTI_SUFFIXES):
            raise DataError(f"{output}: the map is written as NIfTI; use .nii.gz or .nii")
        inputs = outputs.Inputs([input_path] + ([Path(roi)] if roi is not None else []))
        outputs.check_output_file(output, inputs=inputs, what="--output")
        image = io.read_image([input_path], dims=self.info.dims, max_bytes=self.max_image_bytes)
        roi_array = None
        if roi is not None:
            roi_array = io.read_label(roi, self.info.dims, max_bytes=self.max_image_bytes)[0]
            if roi_array.shape != image.data.shape[:-1]:
                raise DataError(
                    f"--roi {roi}: shape {roi_array.shape} differs from the input's "
                    f"{image.data.shape[:-1]}; the ROI must be a mask on the input's grid"
                )
        if query is not None:
            query = disk_to_canonical(image, query)
        cam = self.explain(
            image, class_index, roi=roi_array, layer=layer, method=method, query=query
        )
        written = [write_map(cam, image, output)]
        z = int(np.unravel_index(np.argmax(cam), cam.shape)[2]) if cam.ndim == 3 else 0
        png = output.with_name(f"{_stem(output)}_slice{z}.png")
        outputs.check_output_file(png, inputs=inputs, what="overlay")
        written.append(overlay_png(image, cam, png, z))
        return written


def _stem(path: Path) -> str:
    name = path.name
    for suffix in io.NIFTI_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


def disk_to_canonical(image: io.Image, index: Sequence[int]) -> tuple[int, ...]:
    """Voxel indices on the file as stored (x, y[, z]; x = column for PNG) -> the same
    voxel's indices on `image`'s canonical grid. DataError when outside the image."""
    shape = tuple(image.original_shape)
    index = tuple(int(i) for i in index) + (0,) * (len(shape) - len(index))
    if len(index) != len(shape) or any(not 0 <= i < n for i, n in zip(index, shape)):
        raise DataError(
            f"--query {','.join(map(str, index))}: not a voxel of {image.path} (shape {shape})"
        )
    # Reorient a one-voxel marker exactly as io reads the file (a 2D file is a 3D grid
    # with a singleton axis to nibabel; a PNG has the identity affine).
    marker = np.zeros((*shape, 1, 1)[:3], bool)
    marker[(*index, 0, 0)[:3]] = True
    ornt = nio.io_orientation(image.original_affine)
    canonical = nio.apply_orientation(marker, ornt)
    if image.dims == 2:
        canonical = np.take(canonical, 0, axis=int(ornt[2, 0]))
    return tuple(int(v) for v in np.argwhere(canonical)[0])


def write_map(cam: np.ndarray, image: io.Image, path: Path) -> Path:
    """`cam [*S]` (canonical) as a float32 NIfTI with the input's on-disk shape and affine."""
    return io.write_float_map(cam, image, path)


def _heat(v: np.ndarray) -> np.ndarray:
    """A black-red-yellow-white ramp for values in [0, 1] -> uint8 RGB `[..., 3]`."""
    rgb = np.stack([np.clip(3 * v, 0, 1), np.clip(3 * v - 1, 0, 1), np.clip(3 * v - 2, 0, 1)], -1)
    return (255 * rgb).astype(np.uint8)


def overlay_png(image: io.Image, cam: np.ndarray, path: Path, z: int = 0) -> Path:
    """The image's first channel (grey, 1-99th percentile) under the map (heat colours,
    opacity = map value) at axial slice `z` (3D) or the whole 2D image, as a PNG.
    Orientation: a PNG input as it is stored; NIfTI with anterior up (x to the right)."""
    from PIL import Image as PILImage

    grey = image.data[..., 0]
    heat = cam
    if cam.ndim == 3:
        grey, heat = grey[:, :, z], cam[:, :, z]
    lo, hi = np.percentile(grey, (1, 99))
    grey = np.clip((grey - lo) / (hi - lo if hi > lo else 1.0), 0, 1)
    alpha = heat[..., None]
    rgb = (1 - alpha) * (255 * grey[..., None]) + alpha * _heat(heat)
    rgb = np.transpose(rgb, (1, 0, 2))  # rows = y, columns = x
    if not image.path.name.lower().endswith(io.PIL_SUFFIXES):
        rgb = rgb[::-1]  # RAS: anterior (+y) up
    path.parent.mkdir(parents=True, exist_ok=True)
    PILImage.fromarray(np.ascontiguousarray(rgb.astype(np.uint8))).save(path)
    return path
