"""Grad-CAM for segmentation (see the package docstring): candidate layers, the default
layer, the gradient of a score with respect to a layer's output, upsampling."""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxseg.errors import JaxsegError

METHODS = ("gradcam", "attention")
_MAX_LOG_STRIDE = 7  # strides up to 128 per axis


@dataclasses.dataclass(frozen=True)
class LayerInfo:
    """A candidate layer: its module path and output shape `[B, *s, C]`."""

    name: str
    shape: tuple[int, ...]

    @property
    def channels(self) -> int:
        return self.shape[-1]


def module_path(module: nn.Module) -> str:
    """The module's path ("" for the model, and for an unbound module: no layer)."""
    return "/".join(module.path) if module.scope is not None else ""


def _is_feature_map(out, x_shape: Sequence[int]) -> bool:
    """`out` is `[B, *s, C]` floating with each `s_i` a power-of-two division of `X_i`."""
    if not hasattr(out, "shape") or len(out.shape) != len(x_shape):
        return False
    if out.shape[0] != x_shape[0] or not jnp.issubdtype(out.dtype, jnp.floating):
        return False
    strides = [2**k for k in range(_MAX_LOG_STRIDE + 1)]
    for s, n in zip(out.shape[1:-1], x_shape[1:-1]):
        # floor/ceil of n / stride, or of n padded to a multiple m of a stride (lightseg).
        sizes = {f(n / r) for r in strides for f in (math.floor, math.ceil)}
        sizes |= {math.ceil(n / m) * m // r for m in strides for r in strides if r <= m}
        if s not in sizes:
            return False
    return True


def feature_layers(model: nn.Module, variables, x, **apply_kwargs) -> list[LayerInfo]:
    """The candidate layers of `model` on input `x [B, *X, C]` (shapes only, nothing is
    computed), in the order their last call finishes; the model itself is not one.
    variables None: traced through `model.init` (no parameters needed)."""
    found: dict[str, tuple[int, ...]] = {}

    def interceptor(next_fun, args, kwargs, context):
        out = next_fun(*args, **kwargs)
        name = module_path(context.module)
        if context.method_name == "__call__" and name and _is_feature_map(out, x.shape):
            found.pop(name, None)  # re-insert: ordered by the last call
            found[name] = tuple(int(v) for v in out.shape)
        return out

    with nn.intercept_methods(interceptor):
        if variables is None:
            jax.eval_shape(lambda x: model.init(jax.random.key(0), x, **apply_kwargs), x)
        else:
            jax.eval_shape(lambda v, x: model.apply(v, x, **apply_kwargs), variables, x)
    return [LayerInfo(n, s) for n, s in found.items()]


def default_layer(layers: Sequence[LayerInfo], num_classes: int) -> str:
    """The last candidate (in call order) that does not have `num_classes` channels: the
    last decoder layer before the head (the module docstring has the rule)."""
    for layer in reversed(layers):
        if layer.channels != num_classes:
            return layer.name
    raise JaxsegError(
        f"no feature map with other than {num_classes} channels in the model; name one "
        "with --layer (see --list-layers)"
    )


def check_layer(layers: Sequence[LayerInfo], name: str, model_name: str) -> LayerInfo:
    """The candidate called `name`, or a JaxsegError listing them all."""
    for layer in layers:
        if layer.name == name:
            return layer
    raise JaxsegError(
        f"--layer {name!r} is not a feature-map layer of {model_name}; its layers are: "
        f"{', '.join(layer.name for layer in layers)}"
    )


def _layer_calls(model, variables, x, layer: str, apply_kwargs) -> tuple[int, tuple]:
    """(how often `layer` is called, the shape of its last output), from shapes alone."""
    calls = []

    def interceptor(next_fun, args, kwargs, context):
        out = next_fun(*args, **kwargs)
        if context.method_name == "__call__" and module_path(context.module) == layer:
            calls.append(out.shape)
        return out

    with nn.intercept_methods(interceptor):
        jax.eval_shape(lambda v, x: model.apply(v, x, **apply_kwargs), variables, x)
    if not calls:
        raise JaxsegError(f"layer {layer!r} is not called by {type(model).__name__}")
    return len(calls), tuple(calls[-1])


def grad_cam(
    model: nn.Module,
    variables,
    x,
    layer: str,
    score_fn: Callable[..., jax.Array],
    score_args: tuple = (),
    *,
    upsample: bool = True,
    **apply_kwargs,
) -> jax.Array:
    """Grad-CAM of `layer` for `score_fn(model.apply(variables, x, **apply_kwargs),
    *score_args)`.

    x `[B, *X, C]`; score_fn: the model's output (and `score_args`, arrays) -> a scalar,
    summed over the batch (each image's map depends on its own score only), e.g.
    `seg_score`. Returns `ReLU(sum_c w_c A_c)` float32, `[B, *X]` (upsampled linearly,
    `upsample_map`) or `[B, *s]` at the layer's resolution; not normalised
    (`normalize_map`). Compiled once per model, layer, score_fn and shapes."""
    x = jnp.asarray(x)
    calls, shape = _layer_calls(model, variables, x, layer, apply_kwargs)
    fn = _grad_cam_fn(model, layer, calls, score_fn, tuple(sorted(apply_kwargs.items())))
    grads, acts = fn(jnp.zeros(shape, jnp.float32), variables, x, score_args)
    spatial = tuple(range(1, grads.ndim - 1))
    weights = jnp.mean(grads, axis=spatial, keepdims=True)
    cam = jax.nn.relu(jnp.sum(weights * acts, axis=-1))
    return upsample_map(cam, x.shape[1:-1]) if upsample else cam


@functools.lru_cache(maxsize=16)
def _grad_cam_fn(model, layer: str, calls: int, score_fn, apply_items: tuple) -> Callable:
    """Jitted `(delta, variables, x, score_args) -> (dScore/dA, A)` at `layer`'s last call:
    the interceptor adds `delta` (zeros) to that output, so the gradient with respect to
    `delta` is the gradient with respect to the activation."""

    def score(delta, variables, x, score_args):
        seen = {"calls": 0, "act": None}

        def interceptor(next_fun, args, kwargs, context):
            out = next_fun(*args, **kwargs)
            if context.method_name == "__call__" and module_path(context.module) == layer:
                seen["calls"] += 1
                if seen["calls"] == calls:  # explain the last call (see the module docstring)
                    out = out + delta.astype(out.dtype)
                    seen["act"] = out
            return out

        with nn.intercept_methods(interceptor):
            logits = model.apply(variables, x, **dict(apply_items))
        return score_fn(logits.astype(jnp.float32), *score_args), seen["act"].astype(jnp.float32)

    return jax.jit(jax.grad(score, has_aux=True))


def seg_score(logits, class_index, region) -> jax.Array:
    """Seg-Grad-CAM's score: the class-`class_index` logit of `logits [B, *X, K]` summed
    over `region [B, *X]` (0/1 or weights)."""
    return jnp.sum(jnp.take(logits, class_index, axis=-1) * region)


def upsample_map(cam, size: Sequence[int]) -> jax.Array:
    """`[B, *s]` -> `[B, *size]` by linear interpolation (half-pixel centres, as torch's
    `interpolate(align_corners=False)`). Strides are powers of two: a map covering more
    than `size` (a model that padded its input at the end, as lightseg does) is resized
    by its stride and cropped at the end."""
    cam = jnp.asarray(cam, jnp.float32)
    target = []
    for s, n in zip(cam.shape[1:], size):
        stride = 2 ** max(0, round(math.log2(n / s))) if n >= s else 1
        target.append(s * stride if s * stride >= n else n)
    up = jax.image.resize(cam, (cam.shape[0], *target), "linear")
    return up[(slice(None), *[slice(0, n) for n in size])]


def normalize_map(cam) -> np.ndarray:
    """Min-max to [0, 1] per image `[B, ...]` (a constant map -> zeros), float32."""
    cam = np.asarray(cam, np.float32)
    axes = tuple(range(1, cam.ndim))
    lo, hi = cam.min(axis=axes, keepdims=True), cam.max(axis=axes, keepdims=True)
    span = hi - lo
    return np.where(span > 0, (cam - lo) / np.where(span > 0, span, 1), 0).astype(np.float32)
