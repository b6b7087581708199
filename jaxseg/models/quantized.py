"""An int8 model: any Linen model whose weight matrices are stored as int8 with per-output-
channel float32 scales, dequantised in the forward pass, with statically calibrated int8
fake-quantisation of the inputs of its matmuls and convolutions.

`QuantizedModel(inner, act_scales)` has two parameters, packed in the order of `inner`'s
flattened parameter tree: `int8` (every kernel, i.e. a param named kernel, kernel_down or
kernel_up with ndim >= 2, flattened) and `float32` (each kernel's per-output-channel scale,
then every other parameter as it is). Symmetric: `w = qvalue * scale`,
`scale = max|w| over all but the last axis / 127`. Packing matters on disk: a checkpoint
costs ~0.7 kB of metadata per array, so the per-layer tree of a small model would spend
~15% of its int8 size on metadata. Biases, norms, relative position bias tables and tokens
stay float32, and so do softmax and LayerNorm. `act_scales` maps a module path
("stage0_block0/qkv") to the per-tensor scale of its input; such an input x becomes
`clip(round(x / s), -127, 127) * s` (the inputs of other modules stay float).

It is a model-layer module so that `jaxseg.workdir.model_from_config` can build it from a
config's `quantization` block; `jaxseg.compress.quantize` calibrates and writes it.
"""

from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

KERNEL_NAMES = ("kernel", "kernel_down", "kernel_up")
QMAX = 127.0
# The modules whose inputs are fake-quantised: those that hold a quantised kernel and apply
# it as a matmul or convolution. Matched by class name, so the model zoo needs no import.
QUANTIZED_INPUT_MODULES = ("Dense", "Conv", "LowRankDense")


def is_quantized_leaf(path: tuple[str, ...], shape: tuple[int, ...]) -> bool:
    """Whether the param at `path` (names) with `shape` is stored as int8."""
    return path[-1] in KERNEL_NAMES and len(shape) >= 2


def quantize_array(w: np.ndarray) -> dict[str, np.ndarray]:
    """Symmetric per-output-channel (last axis) int8: `{"qvalue": int8, "scale": f32 [out]}`."""
    w = np.asarray(w, np.float32)
    absmax = np.abs(w).reshape(-1, w.shape[-1]).max(axis=0)
    scale = np.where(absmax > 0, absmax / QMAX, 1.0).astype(np.float32)
    q = np.clip(np.rint(w / scale), -QMAX, QMAX).astype(np.int8)
    return {"qvalue": q, "scale": scale}


def _leaves(tree) -> list[tuple[tuple[str, ...], Any]]:
    return [
        (tuple(str(getattr(k, "key", k)) for k in path), leaf)
        for path, leaf in jax.tree_util.tree_leaves_with_path(tree)
    ]


def packed_sizes(shapes: Any) -> tuple[int, int]:
    """(int8 entries, float32 entries) of the packed form of a tree of `shapes`."""
    n8 = nf = 0
    for path, leaf in _leaves(shapes):
        size = math.prod(leaf.shape)
        if is_quantized_leaf(path, leaf.shape):
            n8, nf = n8 + size, nf + leaf.shape[-1]
        else:
            nf += size
    return n8, nf


def quantize_tree(params: Any) -> dict[str, np.ndarray]:
    """A float parameter tree -> `{"int8": [n8] int8, "float32": [nf] float32}` (packed)."""
    ints, floats = [], []
    for path, leaf in _leaves(params):
        leaf = np.asarray(leaf, np.float32)
        if is_quantized_leaf(path, leaf.shape):
            q = quantize_array(leaf)
            ints.append(q["qvalue"].reshape(-1))
            floats.append(q["scale"])
        else:
            floats.append(leaf.reshape(-1))
    return {
        "int8": np.concatenate(ints) if ints else np.zeros(0, np.int8),
        "float32": np.concatenate(floats).astype(np.float32) if floats else np.zeros(0),
    }


def dequantize_tree(packed: Any, shapes: Any, dtype=jnp.float32) -> Any:
    """The float tree (structure and shapes of `shapes`) back from its packed form:
    `qvalue * scale` per kernel, in jnp, so that it is part of the graph."""
    ints, floats = packed["int8"], packed["float32"]
    i = f = 0
    out = []
    for path, leaf in _leaves(shapes):
        shape, size = tuple(leaf.shape), math.prod(leaf.shape)
        if is_quantized_leaf(path, shape):
            q = ints[i : i + size].reshape(shape).astype(dtype)
            out.append(q * floats[f : f + shape[-1]].astype(dtype))
            i, f = i + size, f + shape[-1]
        else:
            out.append(floats[f : f + size].reshape(shape).astype(leaf.dtype))
            f += size
    return jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(shapes), out)


def fake_quant(x: jax.Array, scale: float) -> jax.Array:
    """Per-tensor symmetric int8 quantise-dequantise of `x` with a static `scale`."""
    s = jnp.asarray(scale, x.dtype)
    return jnp.clip(jnp.round(x / s), -QMAX, QMAX) * s


class QuantizedModel(nn.Module):
    """`inner` with int8 weights (see the module docstring). Same input and output as
    `inner`: `[B, *S, C]` -> logits `[B, *S, K]`."""

    inner: nn.Module
    act_scales: tuple[tuple[str, float], ...] = ()

    @nn.compact
    def __call__(self, x, *, train: bool = False):
        shapes = jax.eval_shape(
            lambda: self.inner.init(jax.random.key(0), x, train=False)["params"]
        )
        n8, nf = packed_sizes(shapes)
        # Initialised as zeros: the values always come from a checkpoint; init only fixes
        # the shapes (load_trained's eval_shape).
        packed = {
            "int8": self.param("int8", lambda _: jnp.zeros((n8,), jnp.int8)),
            "float32": self.param("float32", lambda _: jnp.zeros((nf,), jnp.float32)),
        }
        params = dequantize_tree(packed, shapes)
        scales = dict(self.act_scales)
        if not scales:
            return self.inner.apply({"params": params}, x, train=train)

        def interceptor(next_fun, args, kwargs, context):
            module = context.module
            if context.method_name != "__call__" or type(module).__name__ not in (
                QUANTIZED_INPUT_MODULES
            ):
                return next_fun(*args, **kwargs)
            key = "/".join(module.path)
            if key in scales and args:
                args = (fake_quant(args[0], scales[key]), *args[1:])
            return next_fun(*args, **kwargs)

        with nn.intercept_methods(interceptor):
            return self.inner.apply({"params": params}, x, train=train)


def input_absmax(model: nn.Module, params: Any, x: jax.Array) -> dict[str, jax.Array]:
    """`{module path: max |input|}` of every Dense / Conv / LowRankDense call of `model` on
    `x` (the max over repeated calls of a shared module). Jit-compatible."""
    seen: dict[str, jax.Array] = {}

    def interceptor(next_fun, args, kwargs, context):
        module = context.module
        if (
            context.method_name == "__call__"
            and type(module).__name__ in QUANTIZED_INPUT_MODULES
            and args
        ):
            key = "/".join(module.path)
            m = jnp.max(jnp.abs(args[0])).astype(jnp.float32)
            seen[key] = m if key not in seen else jnp.maximum(seen[key], m)
        return next_fun(*args, **kwargs)

    with nn.intercept_methods(interceptor):
        model.apply({"params": params}, x, train=False)
    return dict(seen)
