"""The compression table of docs/compression.md, measured from workdirs (nothing typed).

    python tools/compression_table.py LABEL=WORKDIR [LABEL=WORKDIR ...] [--frames N]
        [--size S] [--split test] [--out table.md]

The first workdir is the baseline the ratios refer to. Per row:
  params          parameters of the (float) architecture
  weights MB      the restored parameters written once more as a parameters-only orbax
                  checkpoint (the same writer for every row, so f32 and int8 compare fairly)
  ckpt MB         the checkpoint step directory the run loads, as found (a trained f32 run's
                  also holds the optimiser state)
  latency, fps    `python -m jaxseg.benchmark --stream --workdir W --size S` (CPU, median
                  model time per frame, and frames per second)
  Dice            mean foreground Dice of `python -m jaxseg.evaluate --workdir W --split S`
                  (read from W/eval_<split>/summary.json when it is already there)
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import jax
import numpy as np
import orbax.checkpoint as ocp

from jaxseg.models.quantized import QuantizedModel
from jaxseg.workdir import BEST_DIR, CHECKPOINTS_DIR, LATEST, load_trained


def dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file())


def weights_bytes(params) -> int:
    """Bytes on disk of `params` written as a parameters-only orbax checkpoint."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "params"
        ckptr = ocp.StandardCheckpointer()
        ckptr.save(path, jax.tree_util.tree_map(np.asarray, params))
        ckptr.wait_until_finished()
        return dir_bytes(path)


def param_count(run) -> int:
    model = run.model.inner if isinstance(run.model, QuantizedModel) else run.model
    x = jax.ShapeDtypeStruct((1, *run.config.data.patch_size, run.info.in_channels), np.float32)
    shapes = jax.eval_shape(lambda a: model.init(jax.random.key(0), a)["params"], x)
    return int(sum(np.prod(s.shape) for s in jax.tree_util.tree_leaves(shapes)))


def command_json(args: list[str]) -> dict:
    out = subprocess.run(
        [sys.executable, "-m", *args], capture_output=True, text=True, check=True
    ).stdout
    return json.loads([line for line in out.splitlines() if line.startswith("{")][-1])


def dice(workdir: Path, split: str) -> float:
    summary = workdir / f"eval_{split}" / "summary.json"
    if not summary.exists():
        subprocess.run(
            [sys.executable, "-m", "jaxseg.evaluate", "--workdir", str(workdir), "--split", split],
            check=True,
            capture_output=True,
        )
    return float(json.loads(summary.read_text())["mean"]["dice"])


def measure(workdir: Path, *, size: int, frames: int, split: str) -> dict:
    run = load_trained(workdir)
    slot = CHECKPOINTS_DIR if run.checkpoint == LATEST else BEST_DIR
    bench = command_json(
        [
            "jaxseg.benchmark",
            "--stream",
            "--workdir",
            str(workdir),
            "--size",
            str(size),
            "--frames",
            str(frames),
        ]
    )
    return {
        "params": param_count(run),
        "weights_bytes": weights_bytes(run.params),
        "ckpt_bytes": dir_bytes(workdir / slot / str(run.step)),
        "latency_ms": float(bench["model_median_ms"]),
        "fps": float(bench["fps"]),
        "dice": dice(workdir, split),
    }


def table(rows: list[tuple[str, dict]]) -> str:
    base = rows[0][1]
    lines = [
        "| model | params | weights MB | vs base | ckpt MB | latency ms | speed-up | fps | Dice | ΔDice |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for label, r in rows:
        lines.append(
            f"| {label} | {r['params']:,} | {r['weights_bytes'] / 1e6:.2f} "
            f"| {r['weights_bytes'] / base['weights_bytes']:.1%} | {r['ckpt_bytes'] / 1e6:.2f} "
            f"| {r['latency_ms']:.1f} | {base['latency_ms'] / r['latency_ms']:.2f}x "
            f"| {r['fps']:.1f} | {r['dice']:.4f} | {r['dice'] - base['dice']:+.4f} |"
        )
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", help="LABEL=WORKDIR, the baseline first")
    parser.add_argument("--size", type=int, default=128, help="frame size for the benchmark")
    parser.add_argument("--frames", type=int, default=30)
    parser.add_argument("--split", default="test")
    parser.add_argument("--out", help="write the markdown here too")
    parser.add_argument("--json", help="write the measured numbers here")
    args = parser.parse_args(argv)
    rows = []
    for item in args.runs:
        label, _, path = item.partition("=")
        if not path:
            parser.error(f"{item!r}: write LABEL=WORKDIR")
        rows.append(
            (label, measure(Path(path), size=args.size, frames=args.frames, split=args.split))
        )
    text = table(rows)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    if args.json:
        Path(args.json).write_text(json.dumps(dict(rows), indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
