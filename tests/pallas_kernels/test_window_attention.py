"""pallas_kernels.window_attention in the Pallas TPU interpreter vs a plain-JAX reference.

The reference is the module's plain-JAX `window_attention_reference` (einsum logits in
f32, + bias, + mask[w % Wi], jax.nn.softmax, einsum with v; no Pallas), evaluated in f32;
its gradients come from jax.vjp (XLA autodiff), so every kernel gradient (dq, dk, dv,
dbias) is checked against autodiff of a different program. The reference itself is checked
against a float64 numpy loop in `test_reference_matches_numpy`. bf16 cases are compared
with the f32 reference on the same (bf16-representable) inputs.

Error measure: max|got - want| / max(1, max|want|) per array. Tolerances (issue 4):
f32 1e-5; bf16 1e-2 forward, 2e-2 backward.

Runtime (2 shared CPU cores, noisy): each case compiles the interpreter once, ~7-10 s;
the default sweep (8 cases + 5 with M != N keys + races + flag + fast checks, among them
the reference against numpy) takes ~80 s of CPU, 2-3 min wall on the shared machine; the
full sweeps are @slow.
"""

from __future__ import annotations

import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.experimental.pallas import tpu as pltpu

from pallas_kernels.window_attention import (
    BlockSizes,
    padded_tokens,
    window_attention,
    window_attention_reference,
)

TOL = {"float32": (1e-5, 1e-5), "bfloat16": (1e-2, 2e-2)}  # (forward, backward)
MASK_VALUE = -1e9  # what jaxseg's models use


def _reference(q, k, v, bias, mask):
    """The plain-JAX reference in f32 (inputs upcast)."""
    f32 = lambda a: None if a is None else a.astype(jnp.float32)
    return window_attention_reference(f32(q), f32(k), f32(v), f32(bias), f32(mask))


def _np_reference(q, k, v, bias, mask):
    """float64 numpy, window by window and head by head."""
    q, k, v = (np.asarray(a, np.float64) for a in (q, k, v))
    out = np.zeros(q.shape)
    for w, h in itertools.product(range(q.shape[0]), range(q.shape[1])):
        s = q[w, h] @ k[w, h].T
        if bias is not None:
            s = s + np.asarray(bias, np.float64)[h]
        if mask is not None:
            s = s + np.asarray(mask, np.float64)[w % mask.shape[0]]
        p = np.exp(s - s.max(-1, keepdims=True))
        out[w, h] = (p / p.sum(-1, keepdims=True)) @ v[w, h]
    return out


def _inputs(seed, w, h, n, d, dtype, *, bias, mask_windows, keys=None):
    """q, do `[w, h, n, d]`; k, v `[w, h, keys, d]` (keys defaults to n); bias, mask."""
    keys = n if keys is None else keys
    ks = jax.random.split(jax.random.PRNGKey(seed), 6)
    q = jax.random.normal(ks[0], (w, h, n, d)) * d**-0.5  # callers pre-scale q
    k = jax.random.normal(ks[1], (w, h, keys, d))
    v = jax.random.normal(ks[2], (w, h, keys, d))
    do = jax.random.normal(ks[3], (w, h, n, d))
    q, k, v, do = (a.astype(dtype) for a in (q, k, v, do))
    b = jax.random.normal(ks[4], (h, n, keys)) if bias else None
    m = None
    if mask_windows:
        m = np.where(
            np.asarray(jax.random.bernoulli(ks[5], 0.3, (mask_windows, n, keys))), MASK_VALUE, 0.0
        )
        m[0, 0, :] = MASK_VALUE  # a fully masked row: padded keys must still get no weight
        m = jnp.asarray(m, jnp.float32)
    return q, k, v, b, m, do


def _err(got, want):
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    return float(np.max(np.abs(got - want)) / max(1.0, float(np.max(np.abs(want)))))


def _run_case(
    w, h, window, d, dtype, *, bias, mask_windows, block_sizes, interpret=True, seed=0, keys=None
):
    n = math.prod(window)
    q, k, v, b, m, do = _inputs(
        seed, w, h, n, d, dtype, bias=bias, mask_windows=mask_windows, keys=keys
    )
    diff = (q, k, v) + ((b,) if bias else ())

    def kernel(*a):
        return window_attention(
            a[0],
            a[1],
            a[2],
            a[3] if bias else None,
            m,
            block_sizes=block_sizes,
            interpret=interpret,
        )

    def reference(*a):
        return _reference(a[0], a[1], a[2], a[3] if bias else None, m)

    @jax.jit
    def run(fn, *a):
        out, vjp = jax.vjp(fn, *a)
        return out, vjp(do.astype(out.dtype))

    out, grads = jax.jit(lambda *a: run.__wrapped__(kernel, *a))(*diff)
    ref_out, ref_grads = jax.jit(lambda *a: run.__wrapped__(reference, *a))(*diff)
    assert out.shape == q.shape and out.dtype == q.dtype
    tf, tb = TOL[jnp.dtype(dtype).name]
    case = (
        f"window={window} keys={keys or n} d={d} {jnp.dtype(dtype).name} bias={bias} mask={mask_windows} "
        f"{block_sizes}"
    )
    errs = {"out": _err(out, ref_out)}
    for name, g, rg in zip(("dq", "dk", "dv", "dbias"), grads, ref_grads):
        assert g.shape == rg.shape, (name, case)
        errs[name] = _err(g, rg)
    bad = {k_: e for k_, e in errs.items() if e > (tf if k_ == "out" else tb)}
    assert not bad, f"{case}: errors {errs} exceed tolerance fwd {tf} / bwd {tb}"
    print(f"[errors] {case}: " + " ".join(f"{k_}={e:.1e}" for k_, e in errs.items()))
    return errs


# (windows, heads, window shape, head dim, dtype, bias, mask windows Wi, block sizes)
DEFAULT_CASES = [
    # 7x7 Swin 2D; W=6 is padded to 8 windows (bw 4) and Wi=3 is tiled to lcm(3, bw).
    (6, 2, (7, 7), 16, jnp.float32, True, 3, BlockSizes(4, 2)),
    (4, 2, (8, 8), 32, jnp.float32, True, 2, None),  # lightseg 2D, default block sizes
    (4, 2, (4, 4, 4), 64, jnp.float32, False, 4, BlockSizes(1, 2)),  # mask only
    (4, 1, (7, 7, 7), 32, jnp.float32, True, 2, BlockSizes(2, 2)),  # 343 -> 344 tokens
    (4, 2, (4, 8, 4), 32, jnp.float32, True, 1, BlockSizes(4, 4)),  # MXU-shaped 128
    (4, 2, (8, 8), 32, jnp.bfloat16, True, 2, None),
    (6, 2, (7, 7), 64, jnp.bfloat16, True, 3, BlockSizes(2, 2)),  # 49 -> 64 (bf16 tile 16)
    (4, 2, (8, 8, 2), 16, jnp.bfloat16, True, 0, BlockSizes(4, 2)),
]


@pytest.mark.parametrize(
    "w,h,window,d,dtype,bias,mask_windows,bs",
    DEFAULT_CASES,
    ids=lambda x: (
        str(x) if not isinstance(x, BlockSizes) else f"bs{x.block_windows}-{x.block_windows_bwd}"
    ),
)
def test_matches_reference(w, h, window, d, dtype, bias, mask_windows, bs):
    _run_case(w, h, window, d, dtype, bias=bias, mask_windows=mask_windows, block_sizes=bs)


# M != N: keys from a halo around the query window (lightseg halo=h: M = prod(w + 2h)) or
# from routed windows (topk_windows=k: M = k * N). (windows, heads, query window, keys M,
# head dim, dtype, bias, mask windows Wi, block sizes)
KEY_BLOCK_CASES = [
    # 4x4 queries, 6x6 halo keys; W=6 padded to 8 (bw 4), Wi=3 tiled by lcm(3, 4).
    (6, 2, (4, 4), 36, 16, jnp.float32, True, 3, BlockSizes(4, 2)),
    # 3x4 = 12 queries -> Np 16, 5x6 = 30 keys -> Mp 32: both axes padded; Wi = W (routing).
    (4, 2, (3, 4), 30, 32, jnp.float32, True, 4, BlockSizes(2, 4)),
    # bf16 8x8 queries, 12x12 halo keys (lightseg halo=2), default block sizes.
    (4, 2, (8, 8), 144, 16, jnp.bfloat16, True, 2, None),
    # bf16 2x2x2 queries (Np 16) with 4 routed windows of 8 keys (M 32), and fewer keys than
    # queries (4x4 queries, 9 keys), both without a bias.
    (4, 2, (2, 2, 2), 32, 16, jnp.bfloat16, False, 4, BlockSizes(2, 2)),
    (2, 1, (4, 4), 9, 16, jnp.float32, False, 1, BlockSizes(1, 1)),
]


@pytest.mark.parametrize(
    "w,h,window,keys,d,dtype,bias,mask_windows,bs",
    KEY_BLOCK_CASES,
    ids=lambda x: (
        str(x) if not isinstance(x, BlockSizes) else f"bs{x.block_windows}-{x.block_windows_bwd}"
    ),
)
def test_more_or_fewer_keys_than_queries(w, h, window, keys, d, dtype, bias, mask_windows, bs):
    _run_case(
        w, h, window, d, dtype, bias=bias, mask_windows=mask_windows, block_sizes=bs, keys=keys
    )


def _races_found():
    from jax._src.pallas.mosaic.interpret import interpret_pallas_call as ipc  # private, 0.10.x

    return ipc.races is not None and ipc.races.races_found


def test_no_races_two_cores():
    """detect_races=True with two simulated cores, so "parallel" grid axes really split.

    Forward (both axes parallel) and backward (dbias accumulated over the "arbitrary"
    window axis) are checked in separate calls: the interpreter resets its race state at
    each kernel launch."""
    ip = pltpu.InterpretParams(detect_races=True, num_cores_or_threads=2)
    w, h, n, d = 8, 2, 64, 32
    q, k, v, b, m, do = _inputs(1, w, h, n, d, jnp.float32, bias=True, mask_windows=2)
    bs = BlockSizes(2, 2)
    f = lambda q, k, v, b: window_attention(q, k, v, b, m, block_sizes=bs, interpret=ip)
    out = jax.block_until_ready(jax.jit(f)(q, k, v, b))
    assert not _races_found(), "race detected in the forward kernel"
    grads = jax.block_until_ready(jax.jit(lambda *a: jax.vjp(f, *a)[1](do))(q, k, v, b))
    assert not _races_found(), "race detected in the backward kernel"
    ref_out, vjp = jax.vjp(lambda *a: _reference(*a, m), q, k, v, b)
    assert _err(out, ref_out) <= 1e-5
    for g, rg in zip(grads, vjp(do)):
        assert _err(g, rg) <= 1e-5


def test_force_interpret_mode_flag():
    """The global interpreter switch works too (what jaxseg tests may use)."""
    q, k, v, b, m, _ = _inputs(2, 2, 1, 16, 16, jnp.float32, bias=True, mask_windows=1)
    with pltpu.force_tpu_interpret_mode():
        out = jax.jit(lambda *a: window_attention(*a, m))(q, k, v, b)
    assert _err(out, _reference(q, k, v, b, m)) <= 1e-5


@pytest.mark.parametrize("w,wi,keys", [(6, 3, None), (5, 2, 24), (4, 4, 9)])
def test_reference_matches_numpy(w, wi, keys):
    """The plain-JAX reference against float64 numpy (f32: 1e-5), including a mask whose
    window count does not divide W (the gather path) and M != N keys."""
    q, k, v, b, m, _ = _inputs(3, w, 2, 16, 8, jnp.float32, bias=True, mask_windows=wi, keys=keys)
    # _inputs masks one row entirely; f32 cannot resolve logits offset by -1e9 there (float64
    # can), so that row is unmasked for this comparison.
    m = m.at[0, 0].set(0.0)
    assert _err(window_attention_reference(q, k, v, b, m), _np_reference(q, k, v, b, m)) <= 1e-5


def test_block_size_rule():
    # 64 tokens: 16 windows reach 1024 rows; the f32 backward (7 double-buffered [64, 32]
    # blocks lane-padded to 128, plus a [16, 64, 64] mask block) exceeds 8 MiB at 16 -> 8.
    bs = BlockSizes.get_default(4096, 4, 64, 32, jnp.float32)
    assert (bs.block_windows, bs.block_windows_bwd) == (16, 8)
    assert BlockSizes.get_default(4096, 4, 64, 32, jnp.bfloat16) == BlockSizes(16, 16)
    # 343 -> 344 tokens: 4 windows by rows, halved by VMEM (the f32 [bw, 344, 344] mask).
    assert BlockSizes.get_default(4096, 4, 343, 32, jnp.float32) == BlockSizes(2, 1)
    assert BlockSizes.get_default(4096, 4, 343, 32, jnp.float32, has_mask=False) == BlockSizes(4, 1)
    # More keys than queries: the VMEM estimate grows with M, so both halve once more.
    assert BlockSizes.get_default(4096, 4, 64, 32, jnp.float32, m=256) == BlockSizes(8, 4)
    # Never more windows than there are.
    assert BlockSizes.get_default(3, 4, 64, 32, jnp.float32).block_windows == 2
    assert padded_tokens(49, jnp.float32) == 56 and padded_tokens(49, jnp.bfloat16) == 64
    with pytest.raises(ValueError, match="block_windows must be a positive power of two"):
        BlockSizes(3, 2)


@pytest.mark.parametrize(
    "args,match",
    [
        (
            ((2, 1, 16, 8), (2, 1, 16, 4), None, None),
            r"q must be \[W, H, N, D\] and k, v \[W, H, M, D\]",
        ),
        (
            ((2, 1, 16, 8), (3, 1, 24, 8), None, None),
            r"q must be \[W, H, N, D\] and k, v \[W, H, M, D\]",
        ),
        (((2, 1, 16, 8), (2, 1, 16, 8), (2, 16, 16), None), r"bias must be \[H, N, M\]"),
        (
            ((2, 1, 16, 8), (2, 1, 24, 8), (1, 16, 16), None),
            r"bias must be \[H, N, M\] = \(1, 16, 24\)",
        ),
        (
            ((2, 1, 16, 8), (2, 1, 16, 8), None, (16, 16)),
            r"mask must be \[Wi, N, M\] = \[Wi, 16, 16\]",
        ),
        (
            ((2, 1, 16, 8), (2, 1, 24, 8), None, (1, 16, 16)),
            r"mask must be \[Wi, N, M\] = \[Wi, 16, 24\]",
        ),
    ],
)
def test_bad_shapes(args, match):
    qs, ks, bs, ms = args
    z = lambda s: None if s is None else jnp.zeros(s)
    with pytest.raises(ValueError, match=match):
        window_attention(z(qs), z(ks), z(ks), z(bs), z(ms), interpret=True)


def test_bad_dtype():
    x = jnp.zeros((1, 1, 8, 8), jnp.float16)
    with pytest.raises(ValueError, match="float32 or bfloat16"):
        window_attention(x, x, x, interpret=True)


SLOW_WINDOWS = [(7, 7), (8, 8), (4, 4, 4), (7, 7, 7), (8, 8, 2), (4, 8, 4)]


@pytest.mark.slow
@pytest.mark.parametrize(
    "window,d,dtype",
    list(itertools.product(SLOW_WINDOWS, (16, 32, 64), (jnp.float32, jnp.bfloat16))),
)
def test_full_sweep(window, d, dtype):
    """Every window size x head dim x dtype, with bias and mask, and the bias-only /
    mask-only / neither variants rotated in, at two block sizes. ~36 cases, ~10 min."""
    i = SLOW_WINDOWS.index(window) + (16, 32, 64).index(d)
    bias, mask_windows = [(True, 4), (True, 0), (False, 2), (False, 0)][i % 4]
    bs = [BlockSizes(2, 4), BlockSizes(4, 2)][i % 2]
    _run_case(8, 2, window, d, dtype, bias=bias, mask_windows=mask_windows, block_sizes=bs, seed=i)


# (query window, keys M): lightseg halo blocks prod(w + 2h) and routed windows k * N.
SLOW_KEY_BLOCKS = [
    ((4, 4), 36),
    ((4, 4), 100),
    ((8, 8), 144),
    ((2, 2, 2), 64),
    ((4, 4, 4), 216),
    ((4, 4), 64),
    ((2, 2, 2), 32),
]


@pytest.mark.slow
@pytest.mark.parametrize("window,keys", SLOW_KEY_BLOCKS)
@pytest.mark.parametrize("dtype", (jnp.float32, jnp.bfloat16), ids=("f32", "bf16"))
def test_key_block_sweep(window, keys, dtype):
    """M != N at every lightseg halo / routing shape, bias + mask variants rotated, two block
    sizes. 14 cases, ~3 min."""
    i = SLOW_KEY_BLOCKS.index((window, keys))
    bias, mask_windows = [(True, 4), (True, 0), (False, 2), (True, 3)][i % 4]
    bs = [BlockSizes(2, 4), BlockSizes(4, 2)][i % 2]
    _run_case(
        8,
        2,
        window,
        16,
        dtype,
        bias=bias,
        mask_windows=mask_windows,
        block_sizes=bs,
        seed=i,
        keys=keys,
    )
