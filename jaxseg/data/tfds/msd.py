"""Medical Segmentation Decathlon (MSD): one builder, one BuilderConfig per task.

    tfds name: jaxseg_msd/<task>   e.g. jaxseg_msd/task04_hippocampus

Reads `manual_dir/TaskXX_Name/{dataset.json, imagesTr/, labelsTr/}` (the extracted MSD
tarball) and emits the labelled training cases as the "train" split (MSD's test images have
no labels). Case ids are the file names without `.nii.gz` (e.g. `hippocampus_001`).
"""

from __future__ import annotations

import dataclasses

import tensorflow_datasets as tfds

from jaxseg.data import dataset as dataset_lib
from jaxseg.data.tfds import common
from jaxseg.errors import DataError


@dataclasses.dataclass(eq=False)
class MsdConfig(tfds.core.BuilderConfig):
    """task: the MSD folder name; channels: image channel names; labels: class names."""

    task: str = ""
    channels: tuple[str, ...] = ()
    labels: tuple[str, ...] = ()


# (task folder, channel names, label names) as published in each task's dataset.json
_TASKS = [
    (
        "Task01_BrainTumour",
        ("FLAIR", "T1w", "t1gd", "T2w"),
        ("background", "edema", "non-enhancing tumor", "enhancing tumour"),
    ),
    ("Task02_Heart", ("MRI",), ("background", "left atrium")),
    ("Task03_Liver", ("CT",), ("background", "liver", "cancer")),
    ("Task04_Hippocampus", ("MRI",), ("background", "Anterior", "Posterior")),
    ("Task05_Prostate", ("T2", "ADC"), ("background", "PZ", "TZ")),
    ("Task06_Lung", ("CT",), ("background", "cancer")),
    ("Task07_Pancreas", ("CT",), ("background", "pancreas", "cancer")),
    ("Task08_HepaticVessel", ("CT",), ("background", "Vessel", "Tumour")),
    ("Task09_Spleen", ("CT",), ("background", "spleen")),
    ("Task10_Colon", ("CT",), ("background", "colon cancer primaries")),
]

TASKS = tuple(t[0] for t in _TASKS)


class JaxsegMsd(common.JaxsegBuilder):
    """Medical Segmentation Decathlon task, per-case 3D volumes (see module docstring)."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Per-case volumes in canonical RAS, array_record."}
    BUILDER_CONFIGS = [
        MsdConfig(
            name=task.lower(),
            description=f"MSD {task}: {len(ch)} channel(s) {', '.join(ch)}; {len(lab)} classes.",
            task=task,
            channels=ch,
            labels=lab,
        )
        for task, ch, lab in _TASKS
    ]
    MANUAL_DOWNLOAD_INSTRUCTIONS = """
    Download the task tarball(s) from http://medicaldecathlon.com/ (e.g.
    Task04_Hippocampus.tar) and extract them into manual_dir, so that it contains
        <manual_dir>/Task04_Hippocampus/dataset.json
        <manual_dir>/Task04_Hippocampus/imagesTr/hippocampus_001.nii.gz ...
        <manual_dir>/Task04_Hippocampus/labelsTr/hippocampus_001.nii.gz ...
    (one folder per task, named exactly as in the tarball). Then build with
        tfds.builder("jaxseg_msd/task04_hippocampus", data_dir=...).download_and_prepare(
            download_config=tfds.download.DownloadConfig(manual_dir=<manual_dir>))
    """

    def _info(self) -> tfds.core.DatasetInfo:
        cfg = self.builder_config
        return self.dataset_info_from_configs(
            description=f"Medical Segmentation Decathlon {cfg.task}; channels "
            f"{list(cfg.channels)}; labels {list(cfg.labels)}.",
            features=common.case_features(len(cfg.channels)),
            homepage="http://medicaldecathlon.com/",
            citation="Antonelli et al., The Medical Segmentation Decathlon, Nat Commun 13, 4128 (2022).",
        )

    def _task_root(self, dl_manager):
        root = self._manual_dir(dl_manager) / self.builder_config.task
        common.require_dir(
            root, f"MSD task {self.builder_config.task}", self.MANUAL_DOWNLOAD_INSTRUCTIONS
        )
        common.require_file(
            root / "dataset.json", self.builder_config.task, self.MANUAL_DOWNLOAD_INSTRUCTIONS
        )
        return root

    def _split_generators(self, dl_manager):
        root = self._task_root(dl_manager)
        spec = dataset_lib.load_dataset(root)  # validates dataset.json and that files exist
        cfg = self.builder_config
        if len(spec.channel_names) != len(cfg.channels):
            raise DataError(
                f"{root / 'dataset.json'}: declares {len(spec.channel_names)} "
                f"channel(s), but {cfg.task} has {len(cfg.channels)}. Is this folder "
                "the right task?"
            )
        return {"train": self._generate_examples(spec)}

    def _generate_examples(self, spec):
        cfg = self.builder_config
        for case in spec.training:
            yield (
                case.case_id,
                common.encode_case(
                    case.case_id,
                    case.image_paths,
                    case.label_path,
                    num_channels=len(cfg.channels),
                    num_classes=len(cfg.labels),
                ),
            )
