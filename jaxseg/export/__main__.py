"""Export a trained run: python -m jaxseg.export --workdir DIR --output DIR/saved_model

Writes a TensorFlow SavedModel whose `serving_default` takes normalised float32 patches
[b, *patch, C] (any b) and returns class probabilities [b, *patch, K].

--pipeline adds the `segment` signature: the raw image [*spatial, C] in the scanner's
units (canonical voxel order, any size) and its spacing in; uint8 labels in the
label-file values and probabilities on the same grid out. The whole inference path runs
in the graph (docs/serving.md), so a client needs TensorFlow alone. --tflite adds a
float16 TFLite model of the patch signature (OUTPUT/model_float16.tflite).
"""

from __future__ import annotations

import argparse

from jaxseg import cli


def main(argv) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m jaxseg.export",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--workdir", required=True, help="a trained run")
    parser.add_argument("--output", required=True, help="SavedModel folder to write")
    parser.add_argument(
        "--platforms", default="cpu", help="comma-separated: cpu, tpu (one signature per platform)"
    )
    parser.add_argument("--checkpoint", default="auto", choices=("auto", "best", "latest"))
    parser.add_argument(
        "--pipeline", action="store_true", help="also the whole-pipeline `segment` signature"
    )
    parser.add_argument(
        "--no-tta", action="store_true", help="no mirroring TTA inside `segment` (eval.tta)"
    )
    parser.add_argument(
        "--tflite",
        action="store_true",
        help="also OUTPUT/model_float16.tflite (the patch signature, float16 weights)",
    )
    args = parser.parse_args(argv)

    from jaxseg.export.from_workdir import export_run

    path = export_run(
        args.workdir,
        args.output,
        platforms=tuple(args.platforms.split(",")),
        which=args.checkpoint,
        pipeline=args.pipeline,
        tta=not args.no_tta,
        tflite=args.tflite,
    )
    print(path)
    return 0


if __name__ == "__main__":
    cli.run(main)
