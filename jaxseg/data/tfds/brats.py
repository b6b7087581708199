"""BraTS 2021 and 2023 (glioma) training data: one folder per case.

    tfds name: jaxseg_brats/2021, jaxseg_brats/2023

Layouts (the official training archives, extracted):
    2021: <case>/<case>_t1.nii.gz, _t1ce, _t2, _flair, _seg   (case = BraTS2021_00000)
    2023: <case>/<case>-t1n.nii.gz, -t1c, -t2w, -t2f, -seg    (case = BraTS-GLI-00000-000)
Channels are stacked in the order T1, T1 contrast-enhanced, T2, FLAIR for both years.
Labels: 0 background, 1 necrotic tumour core, 2 peritumoral edema, 3 enhancing tumour;
BraTS 2021 stores enhancing tumour as 4, which is mapped to 3 so that classes are the
consecutive integers jaxseg expects.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import tensorflow_datasets as tfds

from jaxseg.data.tfds import common
from jaxseg.errors import DataError


@dataclasses.dataclass(eq=False)
class BratsConfig(tfds.core.BuilderConfig):
    """sep: between case id and suffix; suffixes: image channels; prefix: case folder prefix."""

    sep: str = "_"
    suffixes: tuple[str, ...] = ()
    seg: str = "seg"
    prefix: str = ""
    label_map: tuple[tuple[int, int], ...] = ()


LABELS = ("background", "necrotic tumour core", "peritumoral edema", "enhancing tumour")


class JaxsegBrats(common.JaxsegBuilder):
    """BraTS glioma segmentation, per-case 4-channel 3D volumes (see module docstring)."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Per-case volumes in canonical RAS, array_record."}
    BUILDER_CONFIGS = [
        BratsConfig(
            name="2021",
            description="BraTS 2021 (RSNA-ASNR-MICCAI) training data.",
            sep="_",
            suffixes=("t1", "t1ce", "t2", "flair"),
            prefix="BraTS2021_",
            label_map=((4, 3),),
        ),
        BratsConfig(
            name="2023",
            description="BraTS 2023 (ASNR-MICCAI, GLI) training data.",
            sep="-",
            suffixes=("t1n", "t1c", "t2w", "t2f"),
            prefix="BraTS-",
        ),
    ]
    MANUAL_DOWNLOAD_INSTRUCTIONS = """
    Register at https://www.synapse.org/brats (BraTS 2021: Synapse syn25829067; BraTS 2023
    glioma: ASNR-MICCAI-BraTS2023-GLI-Challenge-TrainingData) and extract the training archive
    so that manual_dir holds one folder per case, directly or inside one top-level folder:
      2021: <manual_dir>/BraTS2021_00000/BraTS2021_00000_{t1,t1ce,t2,flair,seg}.nii.gz
      2023: <manual_dir>/BraTS-GLI-00000-000/BraTS-GLI-00000-000-{t1n,t1c,t2w,t2f,seg}.nii.gz
    Then build with tfds.builder("jaxseg_brats/2023", data_dir=...).download_and_prepare(
        download_config=tfds.download.DownloadConfig(manual_dir=<manual_dir>)).
    """

    def _info(self) -> tfds.core.DatasetInfo:
        cfg = self.builder_config
        return self.dataset_info_from_configs(
            description=f"BraTS {cfg.name} glioma segmentation; channels {list(cfg.suffixes)}; "
            f"labels {list(LABELS)}.",
            features=common.case_features(len(cfg.suffixes)),
            homepage="https://www.synapse.org/brats",
            citation="Baid et al., The RSNA-ASNR-MICCAI BraTS 2021 Benchmark, arXiv:2107.02314.",
        )

    def _case_dirs(self, manual: Path) -> list[Path]:
        prefix = self.builder_config.prefix
        found = sorted(p for p in manual.iterdir() if p.is_dir() and p.name.startswith(prefix))
        if not found:  # one level down: the archive's top-level folder
            subs = [p for p in manual.iterdir() if p.is_dir()]
            found = sorted(
                c for s in subs for c in s.iterdir() if c.is_dir() and c.name.startswith(prefix)
            )
        if not found:
            raise DataError(
                f"{manual}: no BraTS {self.builder_config.name} case folders "
                f"({prefix}*) found here or one level down.\n"
                f"{self.MANUAL_DOWNLOAD_INSTRUCTIONS.strip()}"
            )
        return found

    def _split_generators(self, dl_manager):
        manual = common.require_dir(
            self._manual_dir(dl_manager), "BraTS manual_dir", self.MANUAL_DOWNLOAD_INSTRUCTIONS
        )
        cases = []
        cfg = self.builder_config
        for d in self._case_dirs(manual):
            cid = d.name
            paths = [
                common.require_file(
                    d / f"{cid}{cfg.sep}{s}.nii.gz", cid, self.MANUAL_DOWNLOAD_INSTRUCTIONS
                )
                for s in cfg.suffixes
            ]
            seg = common.require_file(
                d / f"{cid}{cfg.sep}{cfg.seg}.nii.gz", cid, self.MANUAL_DOWNLOAD_INSTRUCTIONS
            )
            cases.append((cid, paths, seg))
        return {"train": self._generate_examples(cases)}

    def _generate_examples(self, cases):
        cfg = self.builder_config
        for cid, paths, seg in cases:
            yield (
                cid,
                common.encode_case(
                    cid,
                    paths,
                    seg,
                    num_channels=len(cfg.suffixes),
                    label_map=dict(cfg.label_map),
                    num_classes=len(LABELS),
                ),
            )
