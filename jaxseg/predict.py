"""Segment files: python -m jaxseg.predict --workdir DIR[,DIR2,...] --input PATH --output PATH

Several workdirs (the folds of one plan) are a fold ensemble. Mirroring test-time
augmentation is on unless --no-tta (or the run's eval.tta is false).

PATH is a file (NIfTI, PNG, TIFF, GIF) or a folder of them. Each mask has its input's
shape, affine and orientation and holds the label values of the training data's files
(0/255 for a model trained on 0/255 masks), as uint8 (uint16 when a value exceeds 255).
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
    args = parser.parse_args(argv)

    from jaxseg.segment import Segmenter

    workdirs = [w for w in args.workdir.split(",") if w]
    segmenter = Segmenter(workdirs, args.checkpoint, tta=not args.no_tta)
    written = segmenter.segment_path(args.input, args.output)
    for path in written:
        print(path)
    return 0


if __name__ == "__main__":
    cli.run(main)
