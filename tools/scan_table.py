"""Times every `jaxseg.ops.selective_scan` implementation and prints the table of docs/kernels.md.

    .venv/bin/python tools/scan_table.py [--shapes 1,1024,512,16 ...] [--repeats 3]

Per shape `B,L,D,N` (the Mamba blocks' scans in umamba: the 2D 256^2 bottleneck, U-Mamba
Enc's level 1, the 3D 96^3 bottleneck) and implementation: the median wall time of the
jitted forward and of forward + backward (`jax.grad` of a sum of squares w.r.t. all six
inputs), and XLA's temporary buffer size of each compiled call.
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

from jaxseg.ops import SCAN_IMPLS, selective_scan

SHAPES = ["1,1024,512,16", "1,16384,128,16", "1,1728,512,16"]


def _inputs(b, l, d, n):
    k = jax.random.split(jax.random.key(0), 4)
    u = jax.random.normal(k[0], (b, l, d))
    delta = 0.05 * jax.nn.softplus(jax.random.normal(k[1], (b, l, d)))
    a = -jnp.tile(jnp.arange(1.0, n + 1), (d, 1))  # S4D-real, as Mamba initialises A
    return (
        u,
        delta,
        a,
        jax.random.normal(k[2], (b, l, n)),
        jax.random.normal(k[3], (b, l, n)),
        jnp.ones(d),
    )


def _time(fn, args, repeats):
    compiled = jax.jit(fn).lower(*args).compile()
    jax.block_until_ready(compiled(*args))
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(compiled(*args))
        times.append(time.perf_counter() - start)
    return float(np.median(times)), compiled.memory_analysis().temp_size_in_bytes / 2**20


def main(argv=None) -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--shapes", nargs="*", default=SHAPES, help="B,L,D,N per shape")
    p.add_argument("--impls", nargs="*", default=list(SCAN_IMPLS))
    p.add_argument("--chunk", type=int, default=32)
    p.add_argument("--repeats", type=int, default=3)
    a = p.parse_args(argv)
    print("| B, L, D, N | impl | forward ms (temp MiB) | forward + backward ms (temp MiB) |")
    print("|---|---|---|---|")
    for shape in a.shapes:
        args = _inputs(*map(int, shape.split(",")))
        for impl in a.impls:
            fwd = lambda *x, impl=impl: selective_scan(*x, impl=impl, chunk=a.chunk)
            grad = jax.grad(lambda *x, f=fwd: (f(*x) ** 2).sum(), argnums=range(6))
            (tf, mf), (tb, mb) = _time(fwd, args, a.repeats), _time(grad, args, a.repeats)
            print(
                f"| {shape} | {impl} | {tf * 1e3:.0f} ({mf:.0f}) | {tb * 1e3:.0f} ({mb:.0f}) |",
                flush=True,
            )


if __name__ == "__main__":
    main()
