"""Measures every model of the zoo and prints the table of docs/models.md.

    .venv/bin/python tools/models_table.py --out runs/models.jsonl > runs/models.md
    .venv/bin/python tools/models_table.py --render runs/models.jsonl   # table only, no runs

Each measurement is one `python -m jaxseg.benchmark --model ...` subprocess (batch 1,
inference: softmax of the logits), so compile caches and the process memory high-water
mark do not leak between models. The raw JSON lines go to --out; the markdown table to
stdout. Run it on a quiet machine: throughput is a median over --repeats calls, but two
busy cores still move it by tens of percent.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

# (row label, registry name, model args, paper, dims it is defined for)
ZOO = [
    ("lightseg_tiny", "lightseg_tiny", {}, "this project", (2, 3)),
    ("lightseg_small", "lightseg_small", {}, "this project", (2, 3)),
    ("lightseg_base", "lightseg_base", {}, "this project", (2, 3)),
    (
        "transmed (full)",
        "transmed",
        {"variant": "full"},
        "Wang et al. 2021 (TransMed); axial attention: Ho et al. "
        "2019, Wang et al. 2020; dynamic conv: Yang et al. 2019 (CondConv)",
        (3,),
    ),
    ("transmed (axial)", "transmed", {"variant": "axial"}, "TransMed-A", (3,)),
    ("transmed (dynamic)", "transmed", {"variant": "dynamic"}, "TransMed-D", (3,)),
    ("transmed (unet)", "transmed", {"variant": "unet"}, "TransMed's plain U-Net ablation", (3,)),
    (
        "swinunetr-24",
        "swinunetr",
        {"feature_size": 24},
        "Hatamizadeh et al. 2022 (MONAI default size)",
        (2, 3),
    ),
    (
        "swinunetr-48",
        "swinunetr",
        {"feature_size": 48},
        "Hatamizadeh et al. 2022 (paper size)",
        (2, 3),
    ),
    ("unetr", "unetr", {"img_size": "S"}, "Hatamizadeh et al. 2022 (WACV)", (2, 3)),
    ("transunet", "transunet", {"pos_grid": "S/16"}, "Chen et al. 2021", (2,)),
    ("unet", "unet", {}, "Ronneberger et al. 2015; Çiçek et al. 2016 (3D)", (2, 3)),
    ("resunet", "resunet", {}, "Zhang, Liu & Wang 2018", (2, 3)),
    ("attention_unet", "attention_unet", {}, "Oktay et al. 2018", (2, 3)),
    ("unetpp", "unetpp", {}, "Zhou et al. 2018", (2, 3)),
    ("mobilenetv3_unet", "mobilenetv3_unet", {}, "Howard et al. 2019 (encoder)", (2, 3)),
    ("shufflenetv2_unet", "shufflenetv2_unet", {}, "Ma et al. 2018 (encoder)", (2, 3)),
    ("deeplabv3plus", "deeplabv3plus", {}, "Chen et al. 2018", (2,)),
    ("umamba-bot", "umamba", {"variant": "bot"}, "Ma, Li & Wang 2024 (U-Mamba Bot)", (2, 3)),
    ("umamba-enc", "umamba", {"variant": "enc"}, "Ma, Li & Wang 2024 (U-Mamba Enc)", (2, 3)),
    (
        "umamba-bot (identity)",
        "umamba",
        {"variant": "bot", "mixer": "identity"},
        "U-Mamba Bot without its Mamba block (ablation)",
        (2, 3),
    ),
    (
        "umamba-bot (conv)",
        "umamba",
        {"variant": "bot", "mixer": "conv"},
        "U-Mamba Bot, Mamba block replaced by a residual conv block (ablation)",
        (2, 3),
    ),
    ("hcmamba", "hcmamba", {}, "Xu 2024 (HC-Mamba)", (2, 3)),
]
SIZES = {2: 256, 3: 96}


def _model_args(args: dict, dims: int) -> list[str]:
    size = SIZES[dims]
    out = []
    for key, value in args.items():
        if value == "S":  # a model whose position embeddings are sized by the input
            value = (size,) * dims
        elif value == "S/16":
            value = (size // 16,) * dims
        out += ["--model-arg", f"{key}={value!r}"]
    return out


def measure(name: str, args: dict, dims: int, repeats: int, warmup: int) -> dict:
    cmd = [
        sys.executable,
        "-m",
        "jaxseg.benchmark",
        "--model",
        name,
        "--dims",
        str(dims),
        "--size",
        str(SIZES[dims]),
        "--batch",
        "1",
        "--repeats",
        str(repeats),
        "--warmup",
        str(warmup),
        *_model_args(args, dims),
    ]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        return {
            "error": done.stderr.strip().splitlines()[-1] if done.stderr.strip() else "failed",
            "command": " ".join(cmd[1:]),
        }
    row = json.loads(done.stdout.strip().splitlines()[-1])
    row["command"] = "python " + " ".join(cmd[1:])
    return row


def _cells(row: dict | None) -> list[str]:
    if row is None:
        return ["", "", "", ""]
    if "error" in row:
        return ["error", "", "", ""]
    return [
        f"{row['params'] / 1e6:.2f}",
        f"{row['gflops']:.1f}",
        f"{row['items_per_s']:.3g} ({row['median_latency_s']:.3g} s)",
        f"{row['peak_memory_mb']:.0f}",
    ]


def render(rows: dict, only=None) -> str:
    """The markdown table of `rows` {(label, dims): benchmark JSON}."""
    lines = [
        "| model | follows | 2D params (M) | 2D GFLOPs | 2D img/s (latency) | 2D peak MiB "
        "| 3D params (M) | 3D GFLOPs | 3D vol/s (latency) | 3D peak MiB |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for label, _, _, paper, _ in ZOO:
        if not only or label in only:
            cells = _cells(rows.get((label, 2))) + _cells(rows.get((label, 3)))
            lines.append(f"| {label} | {paper} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--out", type=Path, help="JSON lines of every measurement (appended)")
    p.add_argument(
        "--render", type=Path, help="print the table of an earlier --out file; measure nothing"
    )
    p.add_argument("--only", nargs="*", help="row labels to measure (default: all)")
    p.add_argument(
        "--dims", type=int, nargs="*", default=[2, 3], help="2, 3 or both (default both)"
    )
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--warmup", type=int, default=1)
    a = p.parse_args(argv)
    if a.render:
        rows = {
            (r["label"], r["dims"]): r for r in map(json.loads, a.render.read_text().splitlines())
        }
        print(render(rows, a.only))
        return
    if not a.out:
        p.error("--out is required unless --render is given")
    rows = {}
    with a.out.open("a") as log:
        for label, name, args, _, dims_ok in ZOO:
            if a.only and label not in a.only:
                continue
            for dims in (d for d in dims_ok if d in a.dims):
                row = measure(name, args, dims, a.repeats, a.warmup)
                row["label"] = label
                rows[(label, dims)] = row
                log.write(json.dumps(row) + "\n")
                log.flush()
                print(
                    f"{label} {dims}D: {row.get('items_per_s', row.get('error'))}", file=sys.stderr
                )
    print(render(rows, a.only))


if __name__ == "__main__":
    main()
