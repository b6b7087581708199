"""Export trained models for serving.

- `export_saved_model`: a TensorFlow SavedModel made with jax2tf, one signature per
  platform over one shared set of variables, plus `jaxseg_export.json` describing what to
  feed it.
- `load_saved_model`: load such an export back, with its metadata.

TensorFlow is imported lazily, inside the functions, so `import jaxseg.export` is cheap.
"""

from jaxseg.export.saved_model import (
    METADATA_FILENAME,
    SUPPORTED_PLATFORMS,
    export_saved_model,
    load_saved_model,
    read_export_metadata,
)

__all__ = [
    "METADATA_FILENAME",
    "SUPPORTED_PLATFORMS",
    "export_saved_model",
    "load_saved_model",
    "read_export_metadata",
]
