"""MXU and VMEM report for the Pallas kernels: `python -m pallas_kernels.report [--dtype bf16]`.

For each default model configuration: the block shapes, the fraction of MXU
multiply-accumulates doing useful work after padding on 128x128 (v4/v5) and 256x256 (v6e)
MXUs, and the VMEM bytes per grid step against a 16 MiB budget. Numbers come from a model
of the hardware (`pallas_kernels._common`), not from a TPU run: this machine has none.

Row schema (shared with other kernels): a dict with keys
  kernel, config, block_shapes (str), useful_mac_fraction_128, useful_mac_fraction_256
  (floats in [0, 1]), vmem_bytes (int, the largest grid step of the kernel's fwd/bwd calls),
  note (str); optional token_fraction_128/_256, vmem_bytes_fwd/_bwd.
Each kernel's configurations, MXU model and rows live here (`window_report_rows`,
`axial_report_rows`); the kernel modules keep only what their block-size rules need
(`window_attention.vmem_bytes_per_step`, `axial_attention.vmem_bytes`). Nothing imports
this module but its tests.

The lightseg rows mirror jaxseg/models/__init__.py (embed dims / heads -> head dim D) and
jaxseg/models/lightseg.py `default_window_sizes` (2D: 8, 8, 4, 4; 3D: 4, 4, 2, 2);
tests/pallas_kernels/test_lowering.py checks that they still agree.
"""

from __future__ import annotations

import argparse
import math

import jax.numpy as jnp

from pallas_kernels._axial_tiling import tiles as axial_tiles
from pallas_kernels._common import NUM_SUBLANES, VMEM_BUDGET_BYTES, mxu_macs, round_up
from pallas_kernels.axial_attention import AxialBlockSizes
from pallas_kernels.axial_attention import vmem_bytes as axial_vmem_bytes
from pallas_kernels.window_attention import (
    VMEM_TARGET_BYTES,
    BlockSizes,
    padded_tokens,
    vmem_bytes_per_step,
)

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

# TransMed-like axial configurations: (name, rows, heads, L, D); rows = batch 2 x the product
# of the non-attended axes.
AXIAL_CONFIGS = (
    ("3d 24^3 fmap, D=32", 2 * 24 * 24, 4, 24, 32),
    ("3d 24^3 fmap, D=64", 2 * 24 * 24, 4, 24, 64),
    ("3d 12^3 fmap, D=32", 2 * 12 * 12, 8, 12, 32),
    ("3d 12^3 fmap, D=64", 2 * 12 * 12, 8, 12, 64),
    ("2d 64x64 fmap, D=32", 2 * 64, 4, 64, 32),
    ("2d 64x64 fmap, D=64", 2 * 64, 4, 64, 64),
    ("2d 128x128 fmap, D=64", 2 * 128, 4, 128, 64),
)


# ----------------------------------------------------------------------------- window attention
def window_mxu_fractions(
    n: int, d: int, dtype, mxu: int, m: int | None = None
) -> tuple[float, float]:
    """(token fraction, useful-MAC fraction) of this kernel's matmuls on a `mxu`^2 MXU, over
    one forward plus backward pass of `window_attention`; `m` key tokens per window
    (default `n`).

    Model (`pallas_kernels._common.mxu_macs`): the rhs of `lhs [M, K] @ rhs [K, N]` is latched
    in mxu x mxu tiles, lhs rows stream (rounded to 8). Per window and head the forward runs
    `q k^T` (M, K, N) = (Np, D, Mp) and `p v` (Np, Mp, D); the backward runs two of the first
    kind (logits recompute, `do v^T`), one of the second (`ds k`) and two with the roles of
    queries and keys swapped (`p^T do`, `ds^T q`: (Mp, Np, D)). With m == n all five issue
    the same MACs, so forward and backward have one fraction:
        useful = (N / Np8) * (N / roundup(Np, mxu)) * (D / roundup(D, mxu)).
    The token fraction is the same without the head-dim factor: the part set by the window
    size and the kernel's padding. The head-dim factor is a property of the model (D < mxu
    leaves MXU rows/columns idle in every formulation of `q k^T`, whose contraction is D)."""
    m = n if m is None else m
    np_, mp = padded_tokens(n, dtype), padded_tokens(m, dtype)
    counts = (
        (3, mxu_macs(n, d, m, mxu, m_pad=np_, n_pad=mp)),
        (2, mxu_macs(n, m, d, mxu, m_pad=np_, k_pad=mp)),
        (2, mxu_macs(m, n, d, mxu, m_pad=mp, k_pad=np_)),
    )
    useful = sum(c * u for c, (u, _) in counts) / sum(c * i for c, (_, i) in counts)
    return useful / (d / round_up(d, mxu)), useful


def window_report_rows(dtype=jnp.bfloat16, configs=None, num_windows: int = 4096) -> list[dict]:
    """Rows of the report for window attention.

    `configs`: iterable of (name, window shape, heads, head dim[, key tokens M]); default
    `WINDOW_CONFIGS` + `KEY_BLOCK_CONFIGS`. Each row has the keys of
    the report schema (kernel, config, block_shapes, useful_mac_fraction_128/_256,
    vmem_bytes, note) plus token_fraction_128/_256 and vmem_bytes_fwd/_bwd. Block sizes are
    the defaults for `num_windows` windows (large enough that the window count does not cap
    them), with a f32 bias and a f32 mask (the shifted-window blocks; the largest VMEM case)."""
    if configs is None:
        configs = WINDOW_CONFIGS + KEY_BLOCK_CONFIGS
    rows = []
    for name, window, heads, d, *keys in configs:
        n = math.prod(window)
        m = keys[0] if keys else n
        np_, mp = padded_tokens(n, dtype), padded_tokens(m, dtype)
        bs = BlockSizes.get_default(num_windows, heads, n, d, dtype, m=m)
        vf = vmem_bytes_per_step(bs.block_windows, np_, d, dtype, backward=False, mp=mp)
        vb = vmem_bytes_per_step(bs.block_windows_bwd, np_, d, dtype, backward=True, mp=mp)
        t128, f128 = window_mxu_fractions(n, d, dtype, 128, m)
        t256, f256 = window_mxu_fractions(n, d, dtype, 256, m)
        win = "x".join(map(str, window))
        note = (
            f"N={n} -> Np={np_}"
            + (f", M={m} -> Mp={mp}" if m != n else "")
            + f"; grid (H={heads}, W/bw)."
        )
        bad = [lbl for lbl, t in (("128", t128), ("256", t256)) if t < 0.75]
        if bad:
            used = (
                f"{n} of {round_up(np_, 128 if '128' in bad else 256)} used"
                if m == n
                else f"{n} query rows, {m} keys"
            )
            note += f" Tokens < 75% on the {'/'.join(bad)} MXU ({used}); MXU-shaped: {_suggest(window, bad)}."
        if d < 128:
            note += f" D={d} caps useful MACs at {d}/{round_up(d, 128)} | {d}/{round_up(d, 256)}."
        if vf > VMEM_TARGET_BYTES or vb > VMEM_TARGET_BYTES:
            note += (
                " VMEM above the 8 MiB target even at the smallest block (still < 16 MiB)."
                if max(vf, vb) <= VMEM_BUDGET_BYTES
                else " VMEM ABOVE the 16 MiB budget."
            )
        kv = (
            f"q/o ({bs.block_windows},1,{np_},{d}) k/v ({bs.block_windows},1,{mp},{d})"
            if m != n
            else f"q/k/v/o ({bs.block_windows},1,{np_},{d})"
        )
        rows.append(
            {
                "kernel": "window_attention",
                "config": f"{name}: window {win}"
                + (f", M={m} keys" if m != n else "")
                + f", H={heads}, D={d}",
                "block_shapes": (
                    f"fwd bw={bs.block_windows}: {kv} "
                    f"bias (1,{np_},{mp}) mask ({bs.block_windows},{np_},{mp}); "
                    f"bwd bw={bs.block_windows_bwd}"
                ),
                "useful_mac_fraction_128": f128,
                "useful_mac_fraction_256": f256,
                "token_fraction_128": t128,
                "token_fraction_256": t256,
                "vmem_bytes": max(vf, vb),
                "vmem_bytes_fwd": vf,
                "vmem_bytes_bwd": vb,
                "note": note,
            }
        )
    return rows


def _suggest(window, bad) -> str:
    two_d = len(window) == 2
    if "128" in bad:
        return "16x8 (128 tokens)" if two_d else "8x8x2 or 4x8x4 (128 tokens)"
    return "16x16 (256 tokens)" if two_d else "8x8x4 (256 tokens)"


# ----------------------------------------------------------------------------- axial attention
def axial_mac_fraction(
    length: int, head_dim: int, block_sizes: AxialBlockSizes, mxu: int = 128
) -> float:
    """Fraction of MXU multiply-accumulates doing useful work in the axial forward kernel.

    Model: a matmul `[M, K] @ [K, N]` on an `mxu x mxu` systolic array loads the
    `[K, N]` operand in `mxu x mxu` weight tiles (K and N padded to multiples of `mxu`)
    and streams M rows through it (M padded to the 8-row sublane tile). Per row and
    head the kernel runs, per (query block, key block): `q k^T` with (M, K, N) =
    (block_q, D, block_k) and `p v` with (block_q, block_k, D). Useful MACs are those
    of the unpadded problem, `2 * L * L * D`. The backward's four matmuls have the same
    (K, N) pairs up to order, so the fraction is the same.
    """
    padded, bq, bk = axial_tiles(length, block_sizes)
    n_blocks = (padded // bq) * (padded // bk)
    m = round_up(bq, NUM_SUBLANES)
    executed = n_blocks * 2 * m * round_up(head_dim, mxu) * round_up(bk, mxu)
    useful = 2 * length * length * head_dim
    return useful / executed


def axial_report_rows(dtype=jnp.bfloat16, configs=AXIAL_CONFIGS) -> list[dict]:
    """Rows of the report for axial attention at its default block sizes.

    `configs`: iterable of (name, rows, heads, L, D); default `AXIAL_CONFIGS`.
    Each dict: kernel, config, block_shapes, useful_mac_fraction_128,
    useful_mac_fraction_256, vmem_bytes (max over the fwd/dq/dkv kernels, with bias),
    note.
    """
    out = []
    for name, rows, heads, length, d in configs:
        bs = AxialBlockSizes.get_default(rows, heads, length, d, dtype, has_bias=True)
        padded, bq, bk = axial_tiles(length, bs)
        f128 = axial_mac_fraction(length, d, bs, 128)
        f256 = axial_mac_fraction(length, d, bs, 256)
        note = (
            f"L={length} padded to {padded}; {padded // bk} key block(s); "
            f"grid (H={heads}, row steps={-(-rows // bs.block_rows)}, q blocks={padded // bq}, "
            f"k blocks={padded // bk})."
        )
        if f128 < 0.75:
            note += (
                f" Below the 75% MXU goal: both matmuls have one MXU dim set by L={length} "
                f"and the other by D={d}, so utilisation is bounded by "
                f"(L/{round_up(length, 128)})*(D/{round_up(d, 128)}) no matter how rows are "
                "packed (packing rows makes the product block-diagonal). Here the kernel's gain "
                "is fusion (no [L, L] logits in HBM), not MXU use; MXU-shaped alternatives are "
                "attending over a plane (L = 24*24 = 576) or window attention with 128 tokens."
            )
        out.append(
            {
                "kernel": "axial_attention",
                "config": f"{name}, H={heads}, rows={rows}",
                "block_shapes": (
                    f"q/o ({bs.block_rows},1,{bq},{d}) k/v ({bs.block_rows},1,{bk},{d}) "
                    f"bias (1,{bq},{bk})"
                ),
                "useful_mac_fraction_128": f128,
                "useful_mac_fraction_256": f256,
                "vmem_bytes": axial_vmem_bytes(bs, length, d, dtype, has_bias=True),
                "note": note,
            }
        )
    return out


# ----------------------------------------------------------------------------- the report
def collect_rows(dtype=jnp.bfloat16) -> list[dict]:
    """Rows of every kernel; window attention first."""
    return window_report_rows(dtype) + axial_report_rows(dtype)


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
