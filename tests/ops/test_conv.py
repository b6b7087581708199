"""depthwise_conv: the shifted formulation against lax.conv_general_dilated."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from jaxseg.ops import depthwise_conv
from jaxseg.ops.conv import _resolve_impl


def _lax_reference(x, kernel):
    d = x.ndim - 2
    sp = "DHW"[3 - d :]
    return lax.conv_general_dilated(
        x,
        kernel,
        (1,) * d,
        "SAME",
        dimension_numbers=(f"N{sp}C", f"{sp}IO", f"N{sp}C"),
        feature_group_count=x.shape[-1],
        precision=lax.Precision.HIGHEST,
    )


CASES = [
    ((2, 9, 7, 5), (3, 3)),
    ((1, 8, 10, 4), (5, 3)),
    ((1, 6, 6, 3), (1, 7)),
    ((1, 5, 6, 7, 3), (3, 3, 3)),
    ((2, 4, 5, 6, 2), (3, 1, 5)),
]


@pytest.mark.parametrize("xshape,ksize", CASES)
@pytest.mark.parametrize("impl", ["shifted", "xla"])
def test_forward_and_grad_match_lax(xshape, ksize, impl):
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=xshape), jnp.float32)
    kernel = jnp.asarray(rng.normal(size=(*ksize, 1, xshape[-1])), jnp.float32)
    cot = jnp.asarray(rng.normal(size=xshape), jnp.float32)
    out = depthwise_conv(x, kernel, impl=impl)
    np.testing.assert_allclose(
        np.asarray(out), np.asarray(_lax_reference(x, kernel)), rtol=1e-5, atol=1e-5
    )
    g = jax.grad(lambda x, k: (depthwise_conv(x, k, impl=impl) * cot).sum(), argnums=(0, 1))(
        x, kernel
    )
    g_ref = jax.grad(lambda x, k: (_lax_reference(x, k) * cot).sum(), argnums=(0, 1))(x, kernel)
    for a, b in zip(g, g_ref):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-4)


def test_even_kernel_matches_xla_same_padding():
    rng = np.random.default_rng(1)
    x = jnp.asarray(rng.normal(size=(1, 6, 7, 2)), jnp.float32)
    kernel = jnp.asarray(rng.normal(size=(2, 4, 1, 2)), jnp.float32)
    np.testing.assert_allclose(
        np.asarray(depthwise_conv(x, kernel, impl="shifted")),
        np.asarray(_lax_reference(x, kernel)),
        rtol=1e-5,
        atol=1e-5,
    )


def test_bf16_keeps_dtype():
    x = jnp.ones((1, 8, 8, 4), jnp.bfloat16)
    kernel = jnp.full((3, 3, 1, 4), 0.5, jnp.float32)
    out = depthwise_conv(x, kernel)
    assert out.dtype == jnp.bfloat16
    np.testing.assert_allclose(np.asarray(out[0, 4, 4].astype(jnp.float32)), 4.5)


def test_resolution_and_errors():
    assert _resolve_impl("auto") == ("shifted" if jax.default_backend() == "cpu" else "xla")
    x = jnp.ones((1, 4, 4, 2))
    with pytest.raises(ValueError, match="'auto', 'shifted', 'xla'"):
        depthwise_conv(x, jnp.ones((3, 3, 1, 2)), impl="fast")
    with pytest.raises(ValueError, match="kernel"):
        depthwise_conv(x, jnp.ones((3, 3, 2, 2)))
    with pytest.raises(ValueError, match="x must be"):
        depthwise_conv(jnp.ones((4, 2)), jnp.ones((3, 1, 2)))
