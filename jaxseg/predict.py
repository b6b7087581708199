"""Segment files: python -m jaxseg.predict --workdir DIR[,DIR2,...] --input PATH --output PATH

Several workdirs (the folds of one plan) are a fold ensemble. Mirroring test-time
augmentation is on unless --no-tta (or the run's eval.tta is false).

PATH is a file (NIfTI, PNG, TIFF, GIF, a .dcm multi-frame) or a folder of them; a folder
of DICOM files is one series, a folder of series folders one case each. Each mask has its
input's shape, affine and orientation and holds the label values of the training data's
files (0/255 for a model trained on 0/255 masks), as uint8 (uint16 when a value exceeds
255). --output-format dicom-seg writes a DICOM-SEG referencing the input series instead.

--probabilities PATH also writes each case's class probabilities (16-bit NIfTI on the
input's grid, classes on the last axis), at the temperature python -m jaxseg.calibrate
fitted (none: the raw softmax): a file for one input file, else a folder of CASE.nii.gz.

--modalities FLAIR,T1c: the input holds only these channels (exactly as many, in this
order: a multi-channel file, or nnU-Net channel files _0000, _0001, ...); the model's other
channels are absent (zeros, masked out by the presence vector; multimodal models only).
"""

from __future__ import annotations

import argparse

from jaxseg import cli


def main(argv) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m jaxseg.predict",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--workdir",
        required=True,
        help="a trained run, or several comma-separated (a fold ensemble: probabilities averaged)",
    )
    parser.add_argument("--input", required=True, help="an image file or a folder")
    parser.add_argument("--output", required=True, help="a mask file, or a folder")
    parser.add_argument("--checkpoint", default="auto", choices=("auto", "best", "latest"))
    parser.add_argument(
        "--no-tta", action="store_true", help="no mirroring test-time augmentation (eval.tta)"
    )
    cli.add_tta_rot90(parser)
    parser.add_argument(
        "--output-format",
        default="auto",
        choices=("auto", "dicom-seg"),
        help="auto: a mask like the input (NIfTI for DICOM input); dicom-seg: a DICOM-SEG "
        "(.dcm) referencing the input DICOM series, one segment per class",
    )
    parser.add_argument(
        "--probabilities",
        default=None,
        metavar="PATH",
        help="also write calibrated class probabilities (16-bit NIfTI, classes last): a "
        ".nii.gz file for one input file, else a folder",
    )
    parser.add_argument(
        "--modalities",
        default=None,
        metavar="NAMES",
        help="comma-separated channel names (dataset.json's channel_names) the input holds, "
        "in its channel order; the others are absent (multimodal models, e.g. "
        "lightseg_fusion). Default: every channel",
    )
    cli.add_max_image_bytes(parser)
    args = parser.parse_args(argv)

    from jaxseg.segment import Segmenter

    workdirs = [w for w in args.workdir.split(",") if w]
    segmenter = Segmenter(
        workdirs,
        args.checkpoint,
        tta=not args.no_tta,
        tta_rot90=args.tta_rot90,
        max_image_bytes=args.max_image_bytes,
        modalities=None if args.modalities is None else args.modalities.split(","),
    )
    written = segmenter.segment_path(
        args.input, args.output, args.output_format, probabilities=args.probabilities
    )
    for path in written:
        print(path)
    return 0


if __name__ == "__main__":
    cli.run(main)
