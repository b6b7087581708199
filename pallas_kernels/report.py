"""MXU and VMEM report for the Pallas kernels: `python -m pallas_kernels.report [--dtype bf16]`.

For each default model configuration: the block shapes, the fraction of MXU
multiply-accumulates doing useful work after padding on 128x128 (v4/v5) and 256x256 (v6e)
MXUs, and the VMEM bytes per grid step against a 16 MiB budget. Numbers come from a model
of the hardware (`pallas_kernels._common`), not from a TPU run: this machine has none.

Row schema (shared with other kernels): a dict with keys
  kernel, config, block_shapes (str), useful_mac_fraction_128, useful_mac_fraction_256
  (floats in [0, 1]), vmem_bytes (int, the largest grid step of the kernel's fwd/bwd calls),
  note (str); optional token_fraction_128/_256, vmem_bytes_fwd/_bwd.
A kernel module adds its rows by defining `report_rows() -> list[dict]`; this module imports
`pallas_kernels.axial_attention.report_rows` when that exists.

The lightseg rows mirror jaxseg/models/__init__.py (embed dims / heads -> head dim D) and
jaxseg/models/lightseg.py `default_window_sizes` (2D: 8, 8, 4, 4; 3D: 4, 4, 2, 2);
tests/pallas_kernels/test_lowering.py checks that they still agree.
"""

from __future__ import annotations

import argparse
import importlib

import jax.numpy as jnp

from pallas_kernels._common import VMEM_BUDGET_BYTES

GOAL = 0.75

# (name, window shape, heads, head dim). One row per distinct (window, heads, D) stage.
WINDOW_CONFIGS = (
    # lightseg_tiny: embed (32, 64, 128), heads (2, 4, 8) -> D 16.
    ("lightseg_tiny 2D s0", (8, 8), 2, 16),
    ("lightseg_tiny 2D s1", (8, 8), 4, 16),
    ("lightseg_tiny 2D s2", (4, 4), 8, 16),
    ("lightseg_tiny 3D s0", (4, 4, 4), 2, 16),
    ("lightseg_tiny 3D s1", (4, 4, 4), 4, 16),
    ("lightseg_tiny 3D s2", (2, 2, 2), 8, 16),
    # lightseg_small: embed (48, 96, 192, 384), heads (3, 6, 12, 24) -> D 16.
    ("lightseg_small 2D s0", (8, 8), 3, 16),
    ("lightseg_small 2D s1", (8, 8), 6, 16),
    ("lightseg_small 2D s2", (4, 4), 12, 16),
    ("lightseg_small 2D s3", (4, 4), 24, 16),
    ("lightseg_small 3D s0", (4, 4, 4), 3, 16),
    ("lightseg_small 3D s1", (4, 4, 4), 6, 16),
    ("lightseg_small 3D s2", (2, 2, 2), 12, 16),
    ("lightseg_small 3D s3", (2, 2, 2), 24, 16),
    # lightseg_base: embed (64, 128, 256, 512), heads (2, 4, 8, 16) -> D 32.
    ("lightseg_base 2D s0", (8, 8), 2, 32),
    ("lightseg_base 2D s1", (8, 8), 4, 32),
    ("lightseg_base 2D s2", (4, 4), 8, 32),
    ("lightseg_base 2D s3", (4, 4), 16, 32),
    ("lightseg_base 3D s0", (4, 4, 4), 2, 32),
    ("lightseg_base 3D s1", (4, 4, 4), 4, 32),
    ("lightseg_base 3D s2", (2, 2, 2), 8, 32),
    ("lightseg_base 3D s3", (2, 2, 2), 16, 32),
    # Swin-style windows (Swin-T / SwinUNETR: head dim 32 / 16).
    ("swin 2D", (7, 7), 3, 32),
    ("swin 3D (SwinUNETR 48)", (7, 7, 7), 3, 16),
    ("swin 3D", (7, 7, 7), 4, 32),
    ("3D 4x4x4", (4, 4, 4), 4, 32),
    # MXU-shaped alternatives.
    ("MXU-shaped 2D", (16, 8), 4, 32),
    ("MXU-shaped 3D", (8, 8, 2), 4, 32),
    ("MXU-shaped 3D", (4, 8, 4), 4, 32),
    ("MXU-shaped 3D (v6e)", (8, 8, 4), 4, 32),
)

# (name, query window, heads, head dim, key tokens M per window): attention whose keys are
# not the query window. lightseg `halo=h` (keys: the window grown by h per side) and
# `topk_windows=k` (keys: k routed windows, k * N tokens), on lightseg_small's stage 0.
KEY_BLOCK_CONFIGS = (
    ("lightseg_small 2D s0 halo 2", (8, 8), 3, 16, 12 * 12),
    ("lightseg_small 2D s0 topk_windows 4", (8, 8), 3, 16, 4 * 64),
    ("lightseg_small 3D s0 halo 1", (4, 4, 4), 3, 16, 6 * 6 * 6),
    ("lightseg_small 3D s0 topk_windows 4", (4, 4, 4), 3, 16, 4 * 64),
)


def collect_rows(dtype=jnp.bfloat16) -> list[dict]:
    """Rows of every kernel that provides `report_rows`; window attention first."""
    from pallas_kernels import window_attention

    rows = list(window_attention.report_rows(dtype))
    try:
        axial = importlib.import_module("pallas_kernels.axial_attention")
    except ImportError:
        axial = None
    if axial is not None and hasattr(axial, "report_rows"):
        rows += list(axial.report_rows(dtype))
    return rows


def _pct(x) -> str:
    return "-" if x is None else f"{100 * x:5.1f}%"


def format_report(rows: list[dict], dtype_name: str) -> str:
    """A Markdown table plus the notes, as printed by the CLI and pasted in docs/kernels.md."""
    lines = [
        f"MXU / VMEM report ({dtype_name} inputs; goal: >= {GOAL:.0%} useful MACs; "
        f"VMEM budget {VMEM_BUDGET_BYTES / 2**20:.0f} MiB per grid step)",
        "",
        "| # | kernel | config | useful MACs 128 | useful MACs 256 | tokens 128 | tokens 256 "
        "| VMEM/step | block shapes |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for i, r in enumerate(rows, 1):
        v = r["vmem_bytes"]
        lines.append(
            f"| {i} | {r['kernel']} | {r['config']} | {_pct(r['useful_mac_fraction_128'])} | "
            f"{_pct(r['useful_mac_fraction_256'])} | {_pct(r.get('token_fraction_128'))} | "
            f"{_pct(r.get('token_fraction_256'))} | {v / 2**20:.2f} MiB "
            f"({100 * v / VMEM_BUDGET_BYTES:.0f}%) | {r['block_shapes']} |"
        )
    lines += ["", "Notes:"]
    for i, r in enumerate(rows, 1):
        lines.append(f"{i}. {r['note']}")
    meets = [r for r in rows if r["useful_mac_fraction_128"] >= GOAL]
    tok = [r for r in rows if r.get("token_fraction_128", 0) >= GOAL]
    lines += [
        "",
        f"Rows at >= {GOAL:.0%} useful MACs (128 MXU): {len(meets)} of {len(rows)}; "
        f"window rows whose token fraction reaches it: {len(tok)}.",
    ]
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m pallas_kernels.report", description=__doc__.split("\n")[0]
    )
    p.add_argument(
        "--dtype", choices=("bf16", "f32"), default="bf16", help="input dtype (default bf16)"
    )
    args = p.parse_args(argv)
    dtype = jnp.bfloat16 if args.dtype == "bf16" else jnp.float32
    print(format_report(collect_rows(dtype), args.dtype))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
