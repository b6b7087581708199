"""Constructed fingerprints and a memory function with a known formula, shared by the
planning tests."""

import math

from jaxseg.workdir import RunInfo

TINY_UNET = {"features": (4, 8)}  # stride 2, two levels
STATE, PER_VOXEL = 1000, 10  # the fake train step: STATE + PER_VOXEL * batch * patch voxels


def fp_dict(
    shapes,
    spacings,
    *,
    modalities=("MRI",),
    cropped=None,
    rel=1.0,
    n_cases=None,
    thickness=None,
    props=None,
):
    """A hand-made fingerprint holding what the plan reads."""
    return {
        "dataset": "constructed",
        "root": "/nowhere",
        "dims": len(shapes[0]),
        "channel_names": list(modalities),
        "modalities": list(modalities),
        "labels": {"0": "background", "1": "fg"},
        "label_values": [0, 1],
        "num_classes": 2,
        "num_training_cases": n_cases or len(shapes),
        "spacings": [list(s) for s in spacings],
        "shapes": [list(s) for s in shapes],
        "shapes_after_crop": [list(s) for s in (cropped or shapes)],
        "median_relative_size_after_cropping": rel,
        "foreground_intensity_properties_per_channel": props
        or {str(c): {"num_samples": 0} for c in range(len(modalities))},
        "class_thickness_mm": thickness or [None, None],
    }


def run_info(dims, channels=1):
    return RunInfo(
        dims=dims,
        in_channels=channels,
        num_classes=2,
        labels={0: "a", 1: "b"},
        modalities=("MRI",) * channels,
        dataset_root="/nowhere",
    )


def fake_budget(*patch, batch=2):
    """The budget the fake train step at `patch` and `batch` just fits."""
    return STATE + PER_VOXEL * batch * math.prod(patch)
