"""Whole models with the Pallas kernels (in the TPU interpreter) against the XLA path,
and the remat switch: forward and every gradient must agree."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxseg import losses
from jaxseg.models import build_model


def _loss_and_grads(model, params, x, y):
    def loss(p):
        return losses.dice_ce_loss(model.apply({"params": p}, x, train=False), y)[0]

    return jax.jit(jax.value_and_grad(loss))(params)


def _compare(name, dims, shape, reference_args, other_args, rtol=2e-4, atol=2e-5, **kw):
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(1, *shape, 1)), jnp.float32)
    y = jnp.asarray(rng.integers(0, 3, (1, *shape)), jnp.int32)
    ref = build_model(name, dims=dims, in_channels=1, num_classes=3, **kw, **reference_args)
    other = build_model(name, dims=dims, in_channels=1, num_classes=3, **kw, **other_args)
    params = ref.init(jax.random.key(0), x)["params"]
    np.testing.assert_allclose(
        other.apply({"params": params}, x), ref.apply({"params": params}, x), rtol=rtol, atol=atol
    )
    loss_ref, grads_ref = _loss_and_grads(ref, params, x, y)
    loss_other, grads_other = _loss_and_grads(other, params, x, y)
    np.testing.assert_allclose(loss_other, loss_ref, rtol=rtol)
    jax.tree_util.tree_map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=rtol, atol=atol), grads_other, grads_ref
    )


def test_lightseg_with_pallas_window_attention_matches_xla():
    _compare(
        "lightseg_tiny",
        2,
        (32, 48),
        {"attention_impl": "xla"},
        {"attention_impl": "pallas_interpret"},
        embed_dims=(16, 32),
        depths=(2, 2),
        num_heads=(1, 2),
        stem_dims=(8, 8),
    )


@pytest.mark.slow  # 40-80 s each on the loaded 2 cores; the ops / kernel tests cover M != N fast
@pytest.mark.parametrize("switch", [dict(halo=1), dict(topk_windows=2)], ids=["halo", "routing"])
def test_lightseg_halo_and_routing_with_pallas_match_xla(switch):
    """M != N keys (halo blocks, routed windows) through the kernel: one stage, 12 windows."""
    _compare(
        "lightseg_tiny",
        2,
        (40, 56),
        {"attention_impl": "xla"},
        {"attention_impl": "pallas_interpret"},
        embed_dims=(8,),
        depths=(1,),
        num_heads=(2,),
        stem_dims=(4, 4),
        window_sizes=(4,),
        depthwise_kernel=1,
        decoder_refine_kernel=0,
        **switch,
    )


def test_transmed_with_pallas_axial_attention_matches_xla():
    _compare(
        "transmed",
        3,
        (16, 12, 8),
        {"attention_impl": "xla"},
        {"attention_impl": "pallas_interpret"},
        variant="axial",
        features=(8, 16, 32),
    )


def test_lightseg_remat_gives_the_same_gradients():
    _compare(
        "lightseg_tiny",
        2,
        (32, 32),
        {"remat": False},
        {"remat": True},
        rtol=1e-5,
        atol=1e-6,
        embed_dims=(16, 32),
        depths=(2, 2),
        num_heads=(1, 2),
        stem_dims=(8, 8),
    )
