"""TFLite from an exported SavedModel's patch signature (`export --tflite`).

    saved_model/model_float16.tflite   serving_default: image [b, *patch, C] f32 ->
                                       probabilities [b, *patch, K] f32, float16 weights

TensorFlow's converter reads the SavedModel that `export_saved_model` wrote (jax2tf's
StableHLO inside it), so the TFLite model is the same function with its weights stored
as float16 and dequantised on load. It runs under `ai-edge-litert`'s interpreter. 2D
models convert; 3D ones convert as far as TFLite's ops allow (CONV_3D stays float; a 3D
transposed convolution does not convert), and a failure names the op and leaves no file.
"""

from __future__ import annotations

import os
import re
import uuid

from etils import epath

from jaxseg.errors import JaxsegError

TFLITE_FLOAT16 = "model_float16.tflite"


def _failed_ops(message: str) -> list[str]:
    """Op names in a converter error ("'tf.Foo' op ...", "ops: ..., ..."), for the user."""
    found = re.findall(r"'((?:tf|tfl|stablehlo|mhlo|vhlo)\.[A-Za-z0-9_]+)'", message)
    return sorted(set(found))


def write_tflite_float16(saved_model_dir, out_path=None) -> epath.Path:
    """Converts `saved_model_dir`'s `serving_default` into a float16 TFLite model at
    `out_path` (default: `saved_model_dir/model_float16.tflite`), atomically."""
    import tensorflow as tf

    saved_model_dir = epath.Path(saved_model_dir)
    out_path = epath.Path(out_path) if out_path is not None else saved_model_dir / TFLITE_FLOAT16
    converter = tf.lite.TFLiteConverter.from_saved_model(
        str(saved_model_dir), signature_keys=["serving_default"]
    )
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.target_spec.supported_types = [tf.float16]
    try:
        flatbuffer = converter.convert()
    except Exception as err:  # noqa: BLE001 - the converter raises many types; all mean "cannot"
        ops = _failed_ops(str(err))
        raise JaxsegError(
            f"export --tflite: {saved_model_dir} does not convert to TFLite"
            + (f" (ops: {', '.join(ops)})" if ops else "")
            + f": {str(err).strip().splitlines()[0][:300]}; the SavedModel itself is fine"
        ) from None
    tmp = out_path.parent / f".{out_path.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp"
    try:
        tmp.write_bytes(flatbuffer)
        tmp.replace(out_path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return out_path
