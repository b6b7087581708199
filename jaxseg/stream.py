"""Segment a stream of 2D frames: python -m jaxseg.stream --workdir DIR --input FOLDER_OR_VIDEO

FOLDER_OR_VIDEO is a folder of frames (PNG, JPEG, BMP, TIFF; in name order) or a video
file (MP4, AVI, MOV, MKV, WebM, GIF; read with imageio). With --output FOLDER, an overlay
PNG per frame is written there (`<frame>_overlay.png`). Prints the frames per second and
the latency percentiles (p50, p95, p99) of the whole per-frame path: decode, normalise,
model, argmax and overlay (jaxseg.streaming says what is timed). An unreadable frame is
skipped with a warning naming it. Mirroring TTA is off unless --tta: real time first.
"""

from __future__ import annotations

import argparse

from jaxseg import cli


def main(argv) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m jaxseg.stream",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--workdir", required=True, help="a trained 2D run")
    parser.add_argument("--input", required=True, help="a folder of frames or a video file")
    parser.add_argument("--output", default=None, help="a folder for the overlay PNGs")
    parser.add_argument("--checkpoint", default="auto", choices=("auto", "best", "latest"))
    parser.add_argument("--tta", action="store_true", help="mirroring TTA (4x the model time)")
    parser.add_argument("--max-frames", type=int, default=None, help="stop after N frames")
    args = parser.parse_args(argv)

    import itertools
    from pathlib import Path

    from PIL import Image as PILImage

    from jaxseg import streaming
    from jaxseg.errors import JaxsegError
    from jaxseg.workdir import load_trained

    source = Path(args.input)
    output = None if args.output is None else Path(args.output)
    if output is not None and source.is_dir() and output.resolve() == source.resolve():
        raise JaxsegError(f"--output {output} is the input folder; write overlays elsewhere")
    predictor = streaming.run_predictor(load_trained(args.workdir, args.checkpoint), tta=args.tta)
    write = None
    if output is not None:
        output.mkdir(parents=True, exist_ok=True)

        def write(name, shown, labels):
            PILImage.fromarray(shown).save(output / f"{Path(name).stem}_overlay.png")

    frames = streaming.read_frames(source)
    if args.max_frames is not None:
        frames = itertools.islice(frames, args.max_frames)
    r = streaming.run_stream(frames, predictor, write=write)
    print(
        f"{r['frames'] + 1} frames ({len(r['skipped'])} skipped); after the first "
        f"({r['first_frame_ms']:.0f} ms, compiling): {r['fps']:.1f} frames/s"
    )
    print(
        f"latency per frame: p50 {r['latency_p50_ms']:.1f} ms, p95 {r['latency_p95_ms']:.1f} "
        f"ms, p99 {r['latency_p99_ms']:.1f} ms (model+argmax median "
        f"{r['model_median_ms']:.1f} ms, overlay {r['overlay_median_ms']:.1f} ms)"
    )
    if output is not None:
        print(f"overlays: {output}")
    return 0


if __name__ == "__main__":
    cli.run(main)
