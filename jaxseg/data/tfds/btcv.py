"""BTCV (Multi-Atlas Labeling Beyond the Cranial Vault, abdomen) training data.

    tfds name: jaxseg_btcv

Layout (the Synapse "RawData" archive, extracted): RawData/Training/img/img0001.nii.gz and
RawData/Training/label/label0001.nii.gz. Case ids are the 4-digit numbers ("0001").
13 organs + background (labels 0..13), single-channel CT.
"""

from __future__ import annotations

import re

import tensorflow_datasets as tfds

from jaxseg.data.tfds import common
from jaxseg.errors import DataError

LABELS = (
    "background",
    "spleen",
    "right kidney",
    "left kidney",
    "gallbladder",
    "esophagus",
    "liver",
    "stomach",
    "aorta",
    "inferior vena cava",
    "portal and splenic veins",
    "pancreas",
    "right adrenal gland",
    "left adrenal gland",
)


class JaxsegBtcv(common.JaxsegBuilder):
    """BTCV abdomen CT, per-case 1-channel 3D volumes (see module docstring)."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Per-case volumes in canonical RAS, array_record."}
    MANUAL_DOWNLOAD_INSTRUCTIONS = """
    Register at https://www.synapse.org/#!Synapse:syn3193805 (Multi-Atlas Labeling Beyond the
    Cranial Vault, Abdomen), download RawData.zip and extract it into manual_dir, so that
        <manual_dir>/RawData/Training/img/img0001.nii.gz ...
        <manual_dir>/RawData/Training/label/label0001.nii.gz ...
    Then build with tfds.builder("jaxseg_btcv", data_dir=...).download_and_prepare(
        download_config=tfds.download.DownloadConfig(manual_dir=<manual_dir>)).
    """

    def _info(self) -> tfds.core.DatasetInfo:
        return self.dataset_info_from_configs(
            description=f"BTCV abdomen CT, 13 organs; labels {list(LABELS)}.",
            features=common.case_features(1),
            homepage="https://www.synapse.org/#!Synapse:syn3193805",
            citation="Landman et al., MICCAI Multi-Atlas Labeling Beyond the Cranial Vault (2015).",
        )

    def _split_generators(self, dl_manager):
        manual = self._manual_dir(dl_manager)
        img_dir = common.require_dir(
            manual / "RawData" / "Training" / "img",
            "BTCV images",
            self.MANUAL_DOWNLOAD_INSTRUCTIONS,
        )
        label_dir = manual / "RawData" / "Training" / "label"
        cases = []
        for p in sorted(img_dir.glob("img*.nii.gz")):
            m = re.fullmatch(r"img(\d+)\.nii\.gz", p.name)
            if not m:
                continue
            cid = m.group(1)
            label = common.require_file(
                label_dir / f"label{cid}.nii.gz", cid, self.MANUAL_DOWNLOAD_INSTRUCTIONS
            )
            cases.append((cid, p, label))
        if not cases:
            raise DataError(
                f"{img_dir}: no img<NNNN>.nii.gz files found.\n"
                f"{self.MANUAL_DOWNLOAD_INSTRUCTIONS.strip()}"
            )
        return {"train": self._generate_examples(cases)}

    def _generate_examples(self, cases):
        for cid, img, label in cases:
            yield (
                cid,
                common.encode_case(cid, [img], label, num_channels=1, num_classes=len(LABELS)),
            )
