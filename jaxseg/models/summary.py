"""Model summary: parameter count and forward FLOPs, without allocating parameters.

    python -m jaxseg.models --summary unet --dims 2 --size 128 --model-arg features=(16,32)

`summarize_model` builds a registered model, gets its parameter shapes with
`jax.eval_shape(model.init, ...)` (no arrays are allocated, so a 3D model that would not fit
in memory can still be summarised) and compiles the forward pass on abstract inputs to read
XLA's cost analysis.

What the FLOP count is (read `docs/benchmarks.md` before comparing numbers):
- it is XLA's `HloCostAnalysis` of the *compiled* (optimised) forward pass for the backend
  it was compiled for, at batch 1 unless asked otherwise;
- a multiply-add counts as 2 flops, every elementwise op (add, max, ...) as 1 flop per
  element; transcendentals (exp, tanh, ...) are counted separately and not in "flops";
- convolution taps that fall on 'SAME' zero padding are not counted, so a 3x3 convolution
  at 16x16 counts (46/48)^2 = 92% of the textbook 2*9*Cin*Cout*256;
- the body of an XLA while loop (lax.scan / fori_loop / nn.scan) is counted once, not once
  per iteration; `has_loops` in the result says when that applies;
- an op the backend formulates differently is counted as formulated: on CPU
  `jaxseg.ops.depthwise_conv` is shifted multiply-adds, on TPU a grouped convolution.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxseg.errors import ConfigError
from jaxseg.models.registry import build_model

__all__ = [
    "DEFAULT_SIZE",
    "DEFAULT_NUM_CLASSES",
    "parse_model_args",
    "input_shape",
    "count_params",
    "compiled_cost",
    "compiled_flops",
    "summarize_model",
]

DEFAULT_SIZE = {2: 128, 3: 96}  # voxels per spatial axis when no size is given
DEFAULT_NUM_CLASSES = 2  # background + one foreground class


def parse_model_args(items: Sequence[str]) -> dict[str, Any]:
    """Parses `["key=value", ...]` into constructor keyword arguments.

    A value is read as a Python literal when it is one (`48`, `(32, 64)`, `0.1`, `True`,
    `None`) and kept as a string otherwise (`norm=group`); lists become tuples, as the
    models' fields are tuples. Raises ConfigError for a missing '=', a bad key or a repeat.
    """
    out: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(
                f"--model-arg {item!r} has no '=': write --model-arg key=value, "
                "e.g. --model-arg feature_size=48"
            )
        key, raw = item.split("=", 1)
        key = key.strip()
        if not key.isidentifier():
            raise ConfigError(f"--model-arg {item!r}: {key!r} is not a valid argument name")
        if key in out:
            raise ConfigError(f"--model-arg {key} is given twice")
        try:
            value = ast.literal_eval(raw.strip())
        except (ValueError, SyntaxError):
            value = raw.strip()  # a bare word such as `group` is a string
        out[key] = _tuples(value)
    return out


def _tuples(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return tuple(_tuples(v) for v in value)
    return value


def input_shape(
    dims: int, size: int | Sequence[int] | None, in_channels: int, batch: int = 1
) -> tuple[int, ...]:
    """`[batch, *spatial, in_channels]`; `size` is one int (a square/cube) or `dims` ints,
    None for `DEFAULT_SIZE[dims]`."""
    if dims not in (2, 3):
        raise ConfigError(f"dims must be 2 or 3; got {dims!r}")
    if size is None:
        size = DEFAULT_SIZE[dims]
    spatial = (int(size),) * dims if np.isscalar(size) else tuple(int(s) for s in size)
    if len(spatial) != dims or min(spatial) < 1:
        raise ConfigError(f"size {size!r} must be a positive int or {dims} positive ints")
    if in_channels < 1 or batch < 1:
        raise ConfigError(f"in_channels and batch must be >= 1; got {in_channels} and {batch}")
    return (int(batch), *spatial, int(in_channels))


def count_params(model, shape: Sequence[int]) -> tuple[int, Any]:
    """(number of parameters, abstract params pytree of ShapeDtypeStruct) of `model` for an
    input `[B, *S, C]` of `shape`, via `jax.eval_shape`: nothing is allocated."""
    x = jax.ShapeDtypeStruct(tuple(shape), jnp.float32)
    variables = jax.eval_shape(lambda x: model.init(jax.random.key(0), x, train=False), x)
    # Contract: models keep only "params" (no batch statistics); count anything else too so
    # a model breaking the contract is not silently under-counted.
    leaves = jax.tree_util.tree_leaves(variables)
    total = sum(int(np.prod(leaf.shape)) for leaf in leaves)
    return total, variables["params"]


def compiled_cost(compiled) -> dict[str, float]:
    """XLA's cost analysis of a compiled executable as {"flops", "transcendentals",
    "bytes_accessed"} (0.0 when XLA reports nothing for a key).

    `Compiled.cost_analysis()` returns a dict in current jax and a one-element list of
    dicts in older versions; both are accepted.
    """
    analysis = compiled.cost_analysis()
    if isinstance(analysis, (list, tuple)):
        analysis = analysis[0] if analysis else {}
    if not isinstance(analysis, Mapping) or "flops" not in analysis:
        raise RuntimeError(
            f"XLA returned no cost analysis for this executable ({analysis!r}); "
            f"the {jax.default_backend()} backend may not support it."
        )
    return {
        "flops": float(analysis.get("flops", 0.0)),
        "transcendentals": float(analysis.get("transcendentals", 0.0)),
        "bytes_accessed": float(analysis.get("bytes accessed", 0.0)),
    }


def compiled_flops(fn, *args) -> float:
    """XLA's flop count of `jax.jit(fn)(*args)` (args may be ShapeDtypeStructs)."""
    return compiled_cost(jax.jit(fn).lower(*args).compile())["flops"]


_WHILE = re.compile(r"\swhile\(")  # an HLO while instruction: `%w = (...) while(%init)`


def summarize_model(
    name: str,
    dims: int,
    size: int | Sequence[int] | None = None,
    in_channels: int = 1,
    num_classes: int = DEFAULT_NUM_CLASSES,
    model_args: Mapping[str, Any] | None = None,
    batch: int = 1,
) -> dict:
    """Parameter count and forward cost of the registered model `name`.

    Input `[batch, *S, in_channels]` with S = `size` per axis (default 128 in 2D, 96 in 3D).
    Returns {"model", "dims", "input_shape", "params", "gflops" (forward, 1e9 XLA flops per
    call of the whole batch), "transcendentals", "has_loops", "backend"}.
    Unknown names or arguments raise the registry's ConfigError.
    """
    shape = input_shape(dims, size, in_channels, batch)
    model = build_model(
        name, dims=dims, in_channels=in_channels, num_classes=num_classes, **dict(model_args or {})
    )
    params_count, params = count_params(model, shape)
    x = jax.ShapeDtypeStruct(shape, jnp.float32)
    forward = jax.jit(lambda p, x: model.apply({"params": p}, x, train=False))
    compiled = forward.lower(params, x).compile()
    cost = compiled_cost(compiled)
    return {
        "model": name,
        "dims": dims,
        "input_shape": list(shape),
        "params": params_count,
        "gflops": cost["flops"] / 1e9,
        "transcendentals": cost["transcendentals"],
        "has_loops": bool(_WHILE.search(compiled.as_text() or "")),
        "backend": jax.default_backend(),
    }
