"""Explain a segmentation: python -m jaxseg.explain --workdir W --input F --class K --output OUT

Writes OUT (a float32 NIfTI map in [0, 1] with the input's shape and affine) and a PNG
overlay beside it, OUT's stem + `_slice{z}.png` (the axial slice through the map's
maximum; `_slice0.png` in 2D). docs/explain.md has the method and its checks.

--method gradcam (default): Seg-Grad-CAM of the class-K logit summed over the predicted
class-K mask, or over --roi MASK (a mask file on the input's grid), at --layer (a module
path; --list-layers lists them; default: the last decoder layer before the head).
--method attention: lightseg's window attention of the voxel --query x,y[,z] (indices on
the file as stored) in the block --layer (default: the last block of the first stage).

The input goes through the run's preprocessing; one patch-sized window, centred on the
region (or the query), is explained, and the map is zero outside it.
"""

from __future__ import annotations

import argparse

from jaxseg import cli
from jaxseg.errors import JaxsegError


def _query(text: str | None) -> tuple[int, ...] | None:
    if text is None:
        return None
    try:
        return tuple(int(v) for v in text.split(","))
    except ValueError:
        raise JaxsegError(f"--query {text!r}: give voxel indices x,y or x,y,z") from None


def main(argv) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m jaxseg.explain",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--workdir", required=True, help="a trained run")
    parser.add_argument("--input", help="an image file (NIfTI, PNG, TIFF)")
    parser.add_argument("--class", dest="class_name", help="the class: its index or name")
    parser.add_argument("--output", help="the map, a .nii.gz file")
    parser.add_argument("--roi", default=None, help="a mask on the input's grid: the region")
    parser.add_argument("--layer", default=None, help="a module path (see --list-layers)")
    parser.add_argument(
        "--list-layers", action="store_true", help="print the layers --layer may name"
    )
    parser.add_argument("--method", default="gradcam", choices=("gradcam", "attention"))
    parser.add_argument("--query", default=None, help="attention: the voxel x,y[,z]")
    parser.add_argument("--checkpoint", default="auto", choices=("auto", "best", "latest"))
    cli.add_max_image_bytes(parser)
    args = parser.parse_args(argv)

    from jaxseg.explain_maps import Explainer

    explainer = Explainer(args.workdir, args.checkpoint, max_image_bytes=args.max_image_bytes)
    if args.list_layers:
        default = explainer.default_layer(args.method)
        for layer in explainer.layers(args.method):
            mark = "  (default)" if layer.name == default else ""
            print(f"{layer.name}  {list(layer.shape)}{mark}")
        return 0
    missing = [f for f in ("input", "class_name", "output") if getattr(args, f) is None]
    if missing:
        names = ", ".join("--class" if f == "class_name" else f"--{f}" for f in missing)
        raise JaxsegError(f"give {names} (or --list-layers)")
    written = explainer.explain_file(
        args.input,
        args.output,
        args.class_name,
        roi=args.roi,
        layer=args.layer,
        method=args.method,
        query=_query(args.query),
    )
    for path in written:
        print(path)
    return 0


if __name__ == "__main__":
    cli.run(main)
