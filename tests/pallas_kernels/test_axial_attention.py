"""pallas_kernels.axial_attention in the Pallas TPU interpreter, against references.

References (independent of the kernel):
- `_np_reference`: float64 numpy forward and the analytic backward of softmax attention
  (dv = p^T do; ds = p * (do v^T - rowsum(p * do v^T)); dq = ds k; dk = ds^T q;
  d(bias) = sum over rows of ds). It is itself checked against `jax.vjp` of the module's
  plain-JAX `axial_attention_reference` in `test_numpy_reference_matches_plain_jax`.
- The kernel on rows made by `jaxseg.ops.fold_axis_heads` / `unfold_axis_heads` (the
  layout helpers; their row order is tested in tests/ops/test_axial.py) against a numpy
  einsum that attends along the spatial axis directly.

Tolerances (max |kernel - reference| <= tol * max(1, max |reference|)):
f32 1e-5 forward and backward; bf16 1e-2 forward, 2e-2 backward (references computed in
float64 from the same bf16-rounded inputs).

Runtime on the shared 2-core machine (noisy): the tests not marked slow take ~2.5 minutes
(18 tests), dominated by the interpreter's compile time (~10-20 s per configuration).
Marked slow: the race-detector run (~30 s) and the full cartesian sweep (96 cases,
~19 minutes in all).
"""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.experimental.pallas import tpu as pltpu

from jaxseg import ops
from pallas_kernels import axial_attention as ax
from pallas_kernels import report
from pallas_kernels.axial_attention import (
    AxialBlockSizes,
    axial_attention,
    axial_attention_reference,
)

TOL = {"float32": (1e-5, 1e-5), "bfloat16": (1e-2, 2e-2)}  # (forward, backward)


# ----------------------------------------------------------------------------- references


def _np_reference(q, k, v, bias, do):
    """float64 forward and analytic VJP. q, k, v, do [R, H, L, D]; bias [H, L, L] or None."""
    q, k, v, do = (np.asarray(a, np.float64) for a in (q, k, v, do))
    s = np.einsum("rhqd,rhkd->rhqk", q, k)
    if bias is not None:
        s = s + np.asarray(bias, np.float64)[None]
    s = s - s.max(-1, keepdims=True)
    p = np.exp(s)
    p /= p.sum(-1, keepdims=True)
    o = np.einsum("rhqk,rhkd->rhqd", p, v)
    dv = np.einsum("rhqk,rhqd->rhkd", p, do)
    dp = np.einsum("rhqd,rhkd->rhqk", do, v)
    ds = p * (dp - (dp * p).sum(-1, keepdims=True))
    dq = np.einsum("rhqk,rhkd->rhqd", ds, k)
    dk = np.einsum("rhqk,rhqd->rhkd", ds, q)
    dbias = ds.sum(0) if bias is not None else None
    return o, (dq, dk, dv, dbias)


def _inputs(rows, heads, length, d, dtype, with_bias, seed=0):
    rng = np.random.default_rng(seed)
    # Callers pre-scale q by D**-0.5; do the same so logits have a realistic spread.
    q = rng.normal(size=(rows, heads, length, d)) * d**-0.5
    k, v, do = (rng.normal(size=(rows, heads, length, d)) for _ in range(3))
    bias = rng.normal(size=(heads, length, length)) if with_bias else None
    cast = lambda a: None if a is None else jnp.asarray(a, dtype)
    return cast(q), cast(k), cast(v), cast(bias), cast(do)


def _assert_close(got, want, tol, what):
    got = np.asarray(jnp.asarray(got, jnp.float32), np.float64)
    scale = max(1.0, float(np.abs(want).max()))
    err = float(np.abs(got - want).max())
    assert got.shape == want.shape, f"{what}: shape {got.shape} != {want.shape}"
    assert err <= tol * scale, f"{what}: max abs error {err:.3g} > {tol:g} * {scale:.3g}"
    return err / scale


def _run_case(rows, heads, length, d, dtype, with_bias, block_sizes, interpret):
    """Forward + every gradient through one jitted function (one interpreter compile)."""
    q, k, v, bias, do = _inputs(rows, heads, length, d, dtype, with_bias)

    def f(q, k, v, bias, do):
        fn = lambda q, k, v, bias: axial_attention(
            q, k, v, bias, block_sizes=block_sizes, interpret=interpret
        )
        out, vjp = jax.vjp(fn, q, k, v, bias)
        return out, vjp(do)

    out, grads = jax.jit(f)(q, k, v, bias, do)
    assert out.dtype == q.dtype and out.shape == q.shape
    ref_out, ref_grads = _np_reference(
        q.astype(jnp.float32),
        k.astype(jnp.float32),
        v.astype(jnp.float32),
        None if bias is None else bias.astype(jnp.float32),
        do.astype(jnp.float32),
    )
    fwd_tol, bwd_tol = TOL[jnp.dtype(dtype).name]
    errs = {"out": _assert_close(out, ref_out, fwd_tol, "forward")}
    for name, g, rg in zip(("dq", "dk", "dv", "dbias"), grads, ref_grads):
        if rg is None:
            assert g is None
            continue
        errs[name] = _assert_close(g, rg, bwd_tol, name)
    return errs


# ----------------------------------------------------------------------------- sweeps

# (rows, heads, L, D, dtype, bias, block sizes or None for the default rule). Chosen to
# cover: every L in {7, 24, 64, 200}, every D in {16, 32, 64}, bias on/off, f32/bf16,
# one key block vs several (online softmax), one query block vs several, padded rows
# (rows not a multiple of block_rows) and padded keys (L not a multiple of 8/128).
DEFAULT_SWEEP = [
    (3, 2, 7, 16, jnp.float32, True, None),
    (4, 2, 24, 32, jnp.float32, False, None),
    (5, 2, 24, 32, jnp.bfloat16, True, AxialBlockSizes(2, 8, 512)),
    (4, 2, 64, 64, jnp.float32, True, AxialBlockSizes(4, 32, 64)),
    (3, 1, 200, 16, jnp.float32, True, AxialBlockSizes(2, 64, 128)),
    (2, 2, 200, 32, jnp.bfloat16, False, AxialBlockSizes(1, 256, 128)),
    (3, 2, 64, 16, jnp.bfloat16, True, None),
]


def _case_id(case):
    rows, heads, length, d, dtype, bias, bs = case
    blocks = "default" if bs is None else f"r{bs.block_rows}q{bs.block_q}k{bs.block_k}"
    return f"L{length}-D{d}-{jnp.dtype(dtype).name}-{'bias' if bias else 'nobias'}-{blocks}"


@pytest.mark.parametrize("case", DEFAULT_SWEEP, ids=_case_id)
def test_interpreter_matches_reference(case):
    errs = _run_case(*case, interpret=pltpu.InterpretParams())
    print(_case_id(case), {k: f"{e:.1e}" for k, e in errs.items()})  # shown with -s


@pytest.mark.slow  # ~30-35 s on the shared machine (race detection is slow)
def test_races_on_two_simulated_cores():
    """Race detector on, 'parallel' grid axes split over 2 simulated cores and randomised:
    a d(bias) or accumulator shared across parallel steps would be reported here."""
    from jax._src.pallas.mosaic.interpret import interpret_pallas_call as interp

    params = pltpu.InterpretParams(detect_races=True, num_cores_or_threads=2, random_seed=3)
    # Several row, query and key blocks, padded rows and keys: every accumulator path.
    case = (3, 1, 200, 16, jnp.float32, True, AxialBlockSizes(2, 128, 128))
    _run_case(*case, interpret=params)
    assert interp.races is not None and not interp.races.races_found, _case_id(case)


SLOW_SWEEP = [
    (3, 2, length, d, dtype, bias, bs)
    for length, d, dtype, bias, bs in itertools.product(
        (7, 24, 64, 200),
        (16, 32, 64),
        (jnp.float32, jnp.bfloat16),
        (True, False),
        (None, AxialBlockSizes(2, 8, 128)),
    )
]


@pytest.mark.slow
@pytest.mark.parametrize("case", SLOW_SWEEP, ids=_case_id)
def test_interpreter_full_sweep(case):
    _run_case(*case, interpret=pltpu.InterpretParams())


def test_force_tpu_interpret_mode_context():
    q, k, v, bias, _ = _inputs(2, 1, 7, 16, jnp.float32, True)
    with pltpu.force_tpu_interpret_mode():
        out = axial_attention(q, k, v, bias)
    ref, _ = _np_reference(q, k, v, bias, np.zeros(q.shape))
    _assert_close(out, ref, 1e-5, "forward")


def test_numpy_reference_matches_plain_jax():
    q, k, v, bias, do = _inputs(3, 2, 9, 8, jnp.float32, True, seed=5)
    out, vjp = jax.vjp(axial_attention_reference, q, k, v, bias)
    ref_out, ref_grads = _np_reference(q, k, v, bias, do)
    _assert_close(out, ref_out, 1e-5, "out")
    for g, rg, name in zip(vjp(do), ref_grads, ("dq", "dk", "dv", "dbias")):
        _assert_close(g, rg, 1e-5, name)


# ----------------------------------------------------------------------------- layout


def test_axial_attention_through_rows_matches_direct_einsum():
    """Attention along the Y axis of a [B, X, Y, Z, H, D] map, end to end through
    `jaxseg.ops.fold_axis_heads` / `unfold_axis_heads`; f32, tolerance 1e-5."""
    rng = np.random.default_rng(1)
    shape = (1, 3, 12, 2, 2, 16)
    q, k, v = (rng.normal(size=shape).astype(np.float32) for _ in range(3))
    bias = rng.normal(size=(2, 12, 12)).astype(np.float32)
    qkv = np.concatenate([a.reshape(*shape[:-2], -1) for a in (q, k, v)], -1)
    rows = ops.fold_axis_heads(jnp.asarray(qkv), 2, 3, 2)
    out = axial_attention(*rows, jnp.asarray(bias), interpret=True)
    out = ops.unfold_axis_heads(out, 2, shape[1:-2]).reshape(shape)
    s = np.einsum("bxyzhd,bxwzhd->bxzhyw", q, k) + bias  # bias [h, y, w] broadcasts
    p = np.exp(s - s.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    want = np.einsum("bxzhyw,bxwzhd->bxyzhd", p, v)
    np.testing.assert_allclose(np.asarray(out), want, rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------- block sizes


def test_default_rule():
    for rows, heads, length, d in [
        (1152, 4, 24, 32),
        (288, 8, 12, 64),
        (128, 4, 64, 64),
        (4, 2, 600, 64),
        (3, 2, 7, 16),
    ]:
        for dtype in (jnp.float32, jnp.bfloat16):
            bs = AxialBlockSizes.get_default(rows, heads, length, d, dtype)
            l8 = -(-length // 8) * 8
            if l8 <= 512:
                assert bs.block_q == bs.block_k == l8
            else:
                assert bs.block_k in (128, 256, 512) and bs.block_q == min(256, bs.block_k)
            assert 1 <= bs.block_rows <= min(64, rows)
            assert bs.block_rows * min(bs.block_q, l8) <= 1024 or bs.block_rows == 1
            assert ax.vmem_bytes(bs, length, d, dtype) <= 12 * 2**20
    assert AxialBlockSizes.get_default(1152, 4, 24, 32).block_rows == 32
    assert AxialBlockSizes.get_default(3, 2, 7, 16).block_rows == 3  # clamped to the row count
    # L=600: 512 -> 1024 padded, 256 -> 768, 128 -> 640: the least padding wins.
    assert AxialBlockSizes.get_default(4, 2, 600, 64).block_k == 128
    assert AxialBlockSizes.get_default(4, 2, 1000, 64).block_k == 512  # 1024 for all: largest


def test_block_size_errors():
    with pytest.raises(ValueError, match="block_q=12"):
        AxialBlockSizes(1, 12, 128)
    with pytest.raises(ValueError, match="block_rows"):
        AxialBlockSizes(0, 8, 128)
    q = jnp.zeros((2, 1, 200, 16))
    with pytest.raises(ValueError, match="block_k=64 .* multiple of 128"):
        axial_attention(q, q, q, block_sizes=AxialBlockSizes(1, 64, 64), interpret=True)


def test_input_errors():
    q = jnp.zeros((2, 2, 8, 16))
    with pytest.raises(ValueError, match=r"bias must be \[H, L, L\] = \(2, 8, 8\)"):
        axial_attention(q, q, q, jnp.zeros((2, 8, 7)), interpret=True)
    with pytest.raises(ValueError, match="same shape"):
        axial_attention(q, q[:1], q, interpret=True)
    with pytest.raises(ValueError, match="float32 or bfloat16"):
        axial_attention(q.astype(jnp.float16), q.astype(jnp.float16), q.astype(jnp.float16))
    with pytest.raises(ValueError, match=r"bias must be \[H, L, L\]"):
        axial_attention_reference(q, q, q, jnp.zeros((2, 8, 7)))


def test_report_rows():
    rows = report.axial_report_rows()
    assert len(rows) >= 6
    for row in rows:
        assert set(row) == {
            "kernel",
            "config",
            "block_shapes",
            "useful_mac_fraction_128",
            "useful_mac_fraction_256",
            "vmem_bytes",
            "note",
        }
        assert 0 < row["useful_mac_fraction_256"] <= row["useful_mac_fraction_128"] <= 1
        assert row["vmem_bytes"] <= 16 * 2**20
        if row["useful_mac_fraction_128"] < 0.75:
            assert "Below the 75% MXU goal" in row["note"]
    # Model check by hand: L=24, D=32, one block: (24*24*32) / (24*128*128) per matmul.
    bs = AxialBlockSizes.get_default(1152, 4, 24, 32)
    assert report.axial_mac_fraction(24, 32, bs, 128) == pytest.approx(24 * 32 / (128 * 128))
    assert report.axial_mac_fraction(128, 128, AxialBlockSizes(1, 128, 128), 128) == 1.0


# ----------------------------------------------------------------------------- lowering

# Every default configuration of the report (rows, heads, L, D), plus a long axis that
# uses the multi-key-block path under the default rule.
LOWERING_CONFIGS = [(r, h, l, d) for _, r, h, l, d in report.AXIAL_CONFIGS] + [(4, 2, 600, 64)]


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16], ids=lambda d: jnp.dtype(d).name)
@pytest.mark.parametrize("with_bias", [True, False], ids=["bias", "nobias"])
def test_lowers_for_tpu(dtype, with_bias):
    """jax.export for TPU runs the Pallas->Mosaic lowering, which rejects illegal block
    shapes; done for the forward and the full backward at every default config."""
    for rows, heads, length, d in LOWERING_CONFIGS:
        args = [jax.ShapeDtypeStruct((rows, heads, length, d), dtype)] * 3
        if with_bias:
            args.append(jax.ShapeDtypeStruct((heads, length, length), dtype))

        def fwd(q, k, v, *bias):
            return axial_attention(q, k, v, *bias)

        def loss(q, k, v, *bias):
            return jnp.sum(axial_attention(q, k, v, *bias).astype(jnp.float32) ** 2)

        bwd = jax.grad(loss, argnums=tuple(range(len(args))))
        for f in (fwd, bwd):
            exported = jax.export.export(jax.jit(f), platforms=("tpu",))(*args)
            text = exported.mlir_module()
            assert "tpu_custom_call" in text, (rows, heads, length, d)
        # The backward really contains the Pallas backward kernels.
        assert text.count("tpu_custom_call") >= 3
