"""depthwise_conv and dynamic_conv: every formulation against lax.conv_general_dilated."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from jaxseg.ops import depthwise_conv, dynamic_conv
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


# --------------------------------------------------------------------------- dynamic_conv


def _per_sample_reference(x, kernels):
    """One ordinary lax convolution per sample, with that sample's own kernel."""
    d = x.ndim - 2
    sp = "DHW"[3 - d :]
    return jnp.concatenate(
        [
            lax.conv_general_dilated(
                x[i : i + 1],
                kernels[i],
                (1,) * d,
                "SAME",
                dimension_numbers=(f"N{sp}C", f"{sp}IO", f"N{sp}C"),
                precision=lax.Precision.HIGHEST,
            )
            for i in range(x.shape[0])
        ]
    )


DYNAMIC_CASES = [
    ((3, 7, 6, 4), (3, 3), 5),
    ((2, 6, 5, 3), (1, 5), 2),
    ((2, 5, 4, 6, 3), (3, 3, 3), 4),
    ((1, 4, 5, 3, 2), (3, 1, 2), 3),
]


@pytest.mark.parametrize("xshape,ksize,cout", DYNAMIC_CASES)
@pytest.mark.parametrize("impl", ["map", "grouped"])
def test_dynamic_conv_forward_and_grad_match_per_sample_lax(xshape, ksize, cout, impl):
    rng = np.random.default_rng(2)
    x = jnp.asarray(rng.normal(size=xshape), jnp.float32)
    kernels = jnp.asarray(rng.normal(size=(xshape[0], *ksize, xshape[-1], cout)), jnp.float32)
    cot = jnp.asarray(rng.normal(size=(*xshape[:-1], cout)), jnp.float32)
    out = jax.jit(lambda x, k: dynamic_conv(x, k, impl=impl))(x, kernels)
    np.testing.assert_allclose(
        np.asarray(out), np.asarray(_per_sample_reference(x, kernels)), rtol=1e-4, atol=1e-4
    )
    g = jax.grad(lambda x, k: (dynamic_conv(x, k, impl=impl) * cot).sum(), argnums=(0, 1))(
        x, kernels
    )
    g_ref = jax.grad(lambda x, k: (_per_sample_reference(x, k) * cot).sum(), argnums=(0, 1))(
        x, kernels
    )
    for a, b in zip(g, g_ref):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-4)


def test_dynamic_conv_keeps_x_dtype():
    x = jnp.ones((2, 6, 6, 3), jnp.bfloat16)
    kernels = jnp.full((2, 3, 3, 3, 4), 0.5, jnp.float32)
    for impl in ("map", "grouped"):
        out = dynamic_conv(x, kernels, impl=impl)
        assert out.dtype == jnp.bfloat16 and out.shape == (2, 6, 6, 4)
        np.testing.assert_allclose(np.asarray(out[0, 3, 3].astype(jnp.float32)), 13.5)


def test_dynamic_conv_errors():
    x = jnp.ones((2, 6, 5, 3))
    k = jnp.ones((2, 3, 3, 3, 4))
    with pytest.raises(ValueError, match="kernels must be"):
        dynamic_conv(x, k[:1])
    with pytest.raises(ValueError, match="kernels must be"):
        dynamic_conv(x, jnp.ones((2, 3, 3, 2, 4)))
    with pytest.raises(ValueError, match="'auto', 'map', 'grouped'"):
        dynamic_conv(x, k, impl="fft")
    with pytest.raises(ValueError, match="x must be"):
        dynamic_conv(jnp.ones((2, 5, 3)), jnp.ones((2, 3, 3, 4)))
