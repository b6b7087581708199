"""Convolutions with a per-platform formulation: depthwise and per-sample (dynamic).

XLA:CPU runs grouped convolutions (`feature_group_count` > 1) an order of magnitude slower
than dense ones. `depthwise_conv` is a sum of shifted multiply-adds there (~10x faster than
`feature_group_count=C`); `dynamic_conv` a loop of dense convolutions, one per sample.
Elsewhere each is one XLA convolution.
"""

from __future__ import annotations

import math

import jax.numpy as jnp
from jax import lax

from jaxseg.ops._impl import IMPL_AUTO, resolve_impl

DEPTHWISE_IMPLS = ("shifted", "xla")
DYNAMIC_IMPLS = ("map", "grouped")


def _resolve_impl(impl: str) -> str:
    return resolve_impl("depthwise_conv", impl, DEPTHWISE_IMPLS, IMPL_AUTO["depthwise_impl"])


def _same_pads(ksize):
    # XLA 'SAME' for stride 1: total padding k - 1, the smaller half first.
    return [((k - 1) // 2, k - 1 - (k - 1) // 2) for k in ksize]


def _conv_same(x, kernel, groups=1):
    """`lax.conv_general_dilated` of channels-last `x` with an HWIO `kernel`, 'SAME', stride 1."""
    d = x.ndim - 2
    spatial = "DHW"[3 - d :]
    dn = lax.conv_dimension_numbers(
        x.shape, kernel.shape, (f"N{spatial}C", f"{spatial}IO", f"N{spatial}C")
    )
    return lax.conv_general_dilated(
        x,
        kernel,
        window_strides=(1,) * d,
        padding=_same_pads(kernel.shape[:d]),
        dimension_numbers=dn,
        feature_group_count=groups,
    )


def _depthwise_xla(x, kernel):
    return _conv_same(x, kernel.astype(x.dtype), groups=x.shape[-1])


def _depthwise_shifted(x, kernel):
    d = x.ndim - 2
    ksize = kernel.shape[:d]
    spatial = x.shape[1:-1]
    w = kernel.reshape(*ksize, x.shape[-1]).astype(x.dtype)
    xp = jnp.pad(x, [(0, 0), *_same_pads(ksize), (0, 0)])
    out = None
    for tap in range(math.prod(ksize)):
        offs = []
        rem = tap
        for k in reversed(ksize):
            offs.append(rem % k)
            rem //= k
        offs = tuple(reversed(offs))
        sl = lax.slice(
            xp, (0, *offs, 0), (x.shape[0], *(o + s for o, s in zip(offs, spatial)), x.shape[-1])
        )
        term = sl * w[offs]
        out = term if out is None else out + term
    return out


def depthwise_conv(x, kernel, *, impl: str = "auto"):
    """Depthwise convolution, 'SAME' padding, stride 1, 2D or 3D.

    Args:
      x: `[B, *S, C]` with 2 or 3 spatial axes.
      kernel: `[*k, 1, C]` (HWIO with I=1, one filter per channel).
      impl: "auto" (shifted on CPU, xla elsewhere), "shifted" (sum over kernel taps of shifted
        slices of the padded input times the tap weights) or "xla"
        (`lax.conv_general_dilated(feature_group_count=C)`).

    Returns:
      `[B, *S, C]` in `x.dtype`.
    """
    d = x.ndim - 2
    if d not in (2, 3):
        raise ValueError(f"depthwise_conv: x must be [B, X, Y, (Z,) C]; got shape {x.shape}.")
    if kernel.ndim != d + 2 or kernel.shape[-2] != 1 or kernel.shape[-1] != x.shape[-1]:
        raise ValueError(
            f"depthwise_conv: kernel must be [*k, 1, C] with {d} spatial axes and C={x.shape[-1]}; "
            f"got {kernel.shape}."
        )
    impl = _resolve_impl(impl)
    if impl == "shifted":
        return _depthwise_shifted(x, kernel)
    return _depthwise_xla(x, kernel)


def dynamic_conv(x, kernels, *, impl: str = "auto"):
    """Convolve each sample with its own kernel ('SAME', stride 1), 2D or 3D.

    Args:
      x: `[B, *S, Cin]`, 2 or 3 spatial axes.
      kernels: `[B, *k, Cin, Cout]`, one HWIO kernel per sample.
      impl: "auto" ("map" on CPU, "grouped" elsewhere), "map" (a loop of ordinary
        convolutions, one per sample: XLA:CPU runs grouped convolutions an order of magnitude
        slower than dense ones) or "grouped" (ONE convolution with the batch folded into
        channels and `feature_group_count=B`: a single large op, the better shape for TPU).

    Returns:
      `[B, *S, Cout]` in `x.dtype`.
    """
    b, *s, cin = x.shape
    d = len(s)
    if d not in (2, 3):
        raise ValueError(f"dynamic_conv: x must be [B, X, Y, (Z,) Cin]; got shape {x.shape}.")
    if kernels.ndim != d + 3 or kernels.shape[0] != b or kernels.shape[-2] != cin:
        raise ValueError(
            f"dynamic_conv: kernels must be [B={b}, *k, Cin={cin}, Cout] with {d} spatial axes; "
            f"got {kernels.shape}."
        )
    impl = resolve_impl("dynamic_conv", impl, DYNAMIC_IMPLS, IMPL_AUTO["dynamic_impl"])
    kernels = kernels.astype(x.dtype)
    if impl == "map":
        return lax.map(lambda xk: _conv_same(xk[0][None], xk[1])[0], (x, kernels))
    cout = kernels.shape[-1]
    # Batch into channels: [1, *S, B*Cin]; group g = sample g sees only its own Cin channels
    # and produces its own Cout outputs.
    xg = jnp.moveaxis(x, 0, -2).reshape(1, *s, b * cin)
    kg = jnp.moveaxis(kernels, 0, -2).reshape(*kernels.shape[1:-2], cin, b * cout)
    y = _conv_same(xg, kg, groups=b).reshape(*s, b, cout)
    return jnp.moveaxis(y, -2, 0)
