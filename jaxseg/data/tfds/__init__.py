"""TensorFlow Datasets builders for public medical segmentation datasets (manual download).

Importing this package registers the builders with TFDS:

    jaxseg_msd/<task>   Medical Segmentation Decathlon, task01_braintumour .. task10_colon
    jaxseg_brats/2021, jaxseg_brats/2023
    jaxseg_btcv

Each reads the user's `manual_dir` (see the builder's MANUAL_DOWNLOAD_INSTRUCTIONS), writes
array_record files (random access for grain via `builder.as_data_source()` or
`tfds.data_source(name, data_dir=...)`), and emits per-case examples described in
`jaxseg.data.tfds.common`. See docs/data.md.
"""

from jaxseg.data.tfds.brats import JaxsegBrats
from jaxseg.data.tfds.btcv import JaxsegBtcv
from jaxseg.data.tfds.msd import TASKS, JaxsegMsd

__all__ = ["JaxsegMsd", "JaxsegBrats", "JaxsegBtcv", "TASKS", "build"]


def build(name: str, manual_dir, data_dir, **builder_kwargs):
    """Builds `name` (e.g. "jaxseg_msd/task04_hippocampus") from `manual_dir` into `data_dir`
    without network access and returns the builder."""
    import tensorflow_datasets as tfds

    builder = tfds.builder(name, data_dir=str(data_dir), **builder_kwargs)
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(manual_dir=str(manual_dir))
    )
    return builder
