"""TPU lowering of the window-attention kernel at every default configuration of the report.

`jax.export.export(jax.jit(f), platforms=("tpu",))` runs Pallas's TPU lowering here (block
shape rules, Mosaic dialect emission and serialisation) without a TPU. It does not run
libtpu's Mosaic compiler passes (vector layout, VMEM allocation): those need a TPU.

Runtime: ~70 exports, ~0.1-0.5 s each on the shared machine (~20-40 s in total).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import pytest
from jax.experimental import pallas as pl

from pallas_kernels.report import WINDOW_CONFIGS, collect_rows, format_report
from pallas_kernels.window_attention import window_attention

_SHAPES = sorted({(math.prod(w), h, d) for _, w, h, d in WINDOW_CONFIGS})


def _export(fn, *args):
    return jax.export.export(jax.jit(fn), platforms=("tpu",))(*args)


def _fwd(q, k, v, b, m):
    return window_attention(q, k, v, b, m)


def _bwd(q, k, v, b, m):
    loss = lambda q, k, v, b: jnp.sum(window_attention(q, k, v, b, m).astype(jnp.float32) ** 2)
    return jax.grad(loss, argnums=(0, 1, 2, 3))(q, k, v, b)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16], ids=["f32", "bf16"])
@pytest.mark.parametrize("n,h,d", _SHAPES)
def test_exports_for_tpu(n, h, d, dtype):
    """Forward and backward, with bias and a 4-window shift mask, default block sizes."""
    sd = jax.ShapeDtypeStruct
    w = 256  # enough windows for the default block sizes to be the uncapped ones
    args = (sd((w, h, n, d), dtype),) * 3 + (sd((h, n, n), jnp.float32), sd((4, n, n), jnp.float32))
    for fn in (_fwd, _bwd):
        exp = _export(fn, *args)
        assert "tpu_custom_call" in exp.mlir_module(), f"{fn.__name__} n={n} d={d}: no Mosaic call"


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16], ids=["f32", "bf16"])
@pytest.mark.parametrize(
    "n,m,h,d",
    [(64, 144, 3, 16), (64, 216, 3, 16), (8, 32, 12, 16)],
    ids=["8x8-halo2", "4x4x4-halo1", "2x2x2-routed4"],
)
def test_exports_more_keys_than_queries(n, m, h, d, dtype):
    """M != N (lightseg halo / routed key windows): k, v `[W, H, M, D]`, bias `[H, N, M]`,
    mask `[Wi, N, M]`; forward and backward lower with default block sizes."""
    sd = jax.ShapeDtypeStruct
    w = 256
    args = (
        sd((w, h, n, d), dtype),
        sd((w, h, m, d), dtype),
        sd((w, h, m, d), dtype),
        sd((h, n, m), jnp.float32),
        sd((16, n, m), jnp.float32),
    )
    for fn in (_fwd, _bwd):
        exp = _export(fn, *args)
        assert "tpu_custom_call" in exp.mlir_module(), f"{fn.__name__} n={n} m={m}: no Mosaic call"


@pytest.mark.parametrize("variant", ["bias_only", "mask_only", "neither"])
def test_exports_without_bias_or_mask(variant):
    sd = jax.ShapeDtypeStruct
    q = sd((64, 4, 49, 32), jnp.bfloat16)
    b = sd((4, 49, 49), jnp.bfloat16) if variant == "bias_only" else None
    m = sd((16, 49, 49), jnp.float32) if variant == "mask_only" else None
    fwd = lambda q, k, v: window_attention(
        q,
        k,
        v,
        None if b is None else jnp.zeros(b.shape, b.dtype),
        None if m is None else jnp.zeros(m.shape, m.dtype),
    )
    bwd = lambda q, k, v: jax.grad(
        lambda *a: jnp.sum(fwd(*a).astype(jnp.float32)), argnums=(0, 1, 2)
    )(q, k, v)
    for fn in (fwd, bwd):
        assert "tpu_custom_call" in _export(fn, q, q, q).mlir_module()


def test_export_rejects_illegal_block_shape():
    """Negative control: the export path does check Mosaic's block-shape rule (a block's last
    two dims must be multiples of (8, 128) or the full extent), so the checks above mean
    something."""

    def kernel(x_ref, o_ref):
        o_ref[...] = x_ref[...]

    def f(x):
        return pl.pallas_call(
            kernel,
            grid=(2,),
            in_specs=[pl.BlockSpec((8, 100), lambda i: (0, i))],
            out_specs=pl.BlockSpec((8, 100), lambda i: (0, i)),
            out_shape=jax.ShapeDtypeStruct(x.shape, x.dtype),
        )(x)

    with pytest.raises(Exception, match="(?i)block|divisible|shape"):
        _export(f, jax.ShapeDtypeStruct((8, 200), jnp.float32))


def test_report_configs_match_jaxseg_models():
    """The report's lightseg rows (hard-coded: pallas_kernels may not import jaxseg) agree
    with jaxseg's registry and default window rule."""
    from jaxseg.models import lightseg, registry

    want = set()
    for name in ("lightseg_tiny", "lightseg_small", "lightseg_base"):
        for dims in (2, 3):
            model = registry.build_model(name, dims=dims, in_channels=1, num_classes=2)
            wins = lightseg.default_window_sizes(dims, len(model.embed_dims))
            for c, heads, win in zip(model.embed_dims, model.num_heads, wins):
                want.add((name, (win,) * dims, heads, c // heads))
    have = {(n.split()[0], w, h, d) for n, w, h, d in WINDOW_CONFIGS if n.startswith("lightseg")}
    assert have == want


def test_report_runs():
    rows = collect_rows(jnp.bfloat16)
    text = format_report(rows, "bf16")
    assert any(r["kernel"] == "window_attention" for r in rows)
    for r in rows:
        assert 0 < r["useful_mac_fraction_128"] <= 1 and 0 < r["useful_mac_fraction_256"] <= 1
        assert r["vmem_bytes"] <= 16 * 2**20, r["config"]
    assert "MXU-shaped 3D: window 8x8x2" in text


def test_batch_polymorphic_shapes_lower_for_tpu():
    """A SavedModel's TPU signature has a symbolic batch: both kernels must lower with it,
    forward and backward (the window/row count is a multiple of b, never a constant)."""
    from jax import export as jax_export

    from pallas_kernels import axial_attention as axial
    from pallas_kernels import window_attention as win

    (b,) = jax_export.symbolic_shape("b")
    q = jax.ShapeDtypeStruct((16 * b, 2, 64, 32), jnp.bfloat16)
    bias = jax.ShapeDtypeStruct((2, 64, 64), jnp.float32)
    mask = jax.ShapeDtypeStruct((16, 64, 64), jnp.float32)
    fwd = lambda q, bias, mask: win.window_attention(q, q, q, bias, mask)
    jax_export.export(jax.jit(fwd), platforms=("tpu",))(q, bias, mask)
    grad = jax.grad(
        lambda q, bias, mask: fwd(q, bias, mask).astype(jnp.float32).sum(), argnums=(0, 1)
    )
    jax_export.export(jax.jit(grad), platforms=("tpu",))(q, bias, mask)

    rows = jax.ShapeDtypeStruct((24 * b, 2, 24, 32), jnp.bfloat16)
    abias = jax.ShapeDtypeStruct((2, 24, 24), jnp.float32)
    afwd = lambda q, bias: axial.axial_attention(q, q, q, bias)
    jax_export.export(jax.jit(afwd), platforms=("tpu",))(rows, abias)
    agrad = jax.grad(lambda q, bias: afwd(q, bias).astype(jnp.float32).sum(), argnums=(0, 1))
    jax_export.export(jax.jit(agrad), platforms=("tpu",))(rows, abias)
