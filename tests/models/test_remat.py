"""The `remat` switch of TransMed, UNETR and the U-Net family, in 2D and 3D.

Against the same model with `remat=False`: the parameter tree (names and shapes) is the
same, so checkpoints move between the two; only the remat version's gradient holds a
rematerialisation (checkpoint) primitive; and the forward pass and every gradient agree.
The last check compiles both gradients; for the cases in SLOW it is marked slow and the
default suite keeps only the first two checks.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxseg.models import build_model

# jax.checkpoint's primitive: "checkpoint" in recent jax, "remat2"/"remat" before.
REMAT_PRIMITIVES = {"checkpoint", "remat", "remat2"}

# name -> (tiny constructor args, 2D input shape, 3D input shape)
MODELS = {
    "unet": (dict(features=(4, 8)), (12, 12), (8, 8, 8)),
    "resunet": (dict(features=(4, 8), blocks_per_level=2), (12, 12), (8, 8, 8)),
    "attention_unet": (dict(features=(4, 8)), (12, 12), (8, 8, 8)),
    "unetpp": (dict(features=(4, 8)), (12, 12), (8, 8, 8)),
    # Every block remat wraps: a dynamic conv block (level 0), a plain one (level 1 and the
    # decoder) and an axial block (level 1).
    "transmed": (
        dict(variant="full", features=(4, 8), head_dim=4, axial_levels=(1,), dynamic_levels=(0,)),
        (12, 12),
        (8, 8, 8),
    ),
    "unetr": (
        dict(img_size=16, feature_size=4, hidden_size=8, mlp_dim=8, num_heads=2),
        (16, 16),
        (16, 16, 16),
    ),
}
CASES = [(name, dims) for name in MODELS for dims in (2, 3)]
# Numerical checks left to the slow suite: compiling both gradients costs ~20 s for UNETR
# (12 Transformer blocks), ~8 s for TransMed, ~3 s for a U-Net. The default suite compares
# the numbers for the U-Net family in 3D (what remat is for; the code is the same in 2D).
SLOW = {(name, dims) for name, dims in CASES if dims == 2 or name in ("transmed", "unetr")}


def _setup(name, dims):
    """-> ({remat: model}, input x `[2, *S, 1]`, cotangent `[2, *S, 3]`, rng)."""
    args, shape2d, shape3d = MODELS[name]
    shape = shape2d if dims == 2 else shape3d
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(2, *shape, 1)), jnp.float32)
    # The gradient of mean(logits * w): with a sum over voxels the gradients would be ~100,
    # and f32 rounding (XLA fuses the recomputed blocks differently) scales with them.
    cotangent = jnp.asarray(rng.normal(size=(2, *shape, 3)) / (2 * np.prod(shape) * 3), jnp.float32)
    models = {
        r: build_model(name, dims=dims, in_channels=1, num_classes=3, remat=r, **args)
        for r in (False, True)
    }
    return models, x, cotangent, rng


def _forward_and_grads(model, x, cotangent):
    """`params -> (logits, gradient of sum(logits * cotangent))`."""

    def f(params):
        out, vjp = jax.vjp(lambda p: model.apply({"params": p}, x), params)
        return out, vjp(cotangent)[0]

    return f


def _primitives(jaxpr) -> set[str]:
    """Names of every primitive in `jaxpr` and in the jaxprs nested in its equations."""
    names = set()
    for eqn in jaxpr.eqns:
        names.add(eqn.primitive.name)
        for value in eqn.params.values():
            for v in value if isinstance(value, (tuple, list)) else (value,):
                inner = getattr(v, "jaxpr", v)  # a ClosedJaxpr holds a Jaxpr
                if hasattr(inner, "eqns"):
                    names |= _primitives(inner)
    return names


def _check(name, dims, *, numeric: bool):
    models, x, cotangent, rng = _setup(name, dims)
    trees = {r: jax.eval_shape(m.init, jax.random.key(0), x)["params"] for r, m in models.items()}
    assert jax.tree_util.tree_structure(trees[True]) == jax.tree_util.tree_structure(trees[False])
    assert jax.tree_util.tree_map(jnp.shape, trees[True]) == jax.tree_util.tree_map(
        jnp.shape, trees[False]
    )
    # Random values of the right shapes: compiling a real init costs more than the test.
    params = jax.tree_util.tree_map(
        lambda s: jnp.asarray(rng.normal(scale=0.3, size=s.shape), s.dtype), trees[False]
    )
    traced = {
        r: jax.jit(_forward_and_grads(m, x, cotangent)).trace(params) for r, m in models.items()
    }
    assert _primitives(traced[True].jaxpr.jaxpr) & REMAT_PRIMITIVES
    assert not _primitives(traced[False].jaxpr.jaxpr) & REMAT_PRIMITIVES
    if not numeric:
        return
    (out, grads), (remat_out, remat_grads) = (
        traced[r].lower().compile()(params) for r in (False, True)
    )
    np.testing.assert_allclose(remat_out, out, rtol=1e-5, atol=1e-6)
    jax.tree_util.tree_map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), remat_grads, grads
    )


@pytest.mark.parametrize(
    "name,dims", [pytest.param(*c, marks=pytest.mark.slow) if c in SLOW else c for c in CASES]
)
def test_remat_keeps_parameters_outputs_and_gradients(name, dims):
    _check(name, dims, numeric=True)


@pytest.mark.parametrize("name,dims", sorted(SLOW))
def test_remat_keeps_parameters_and_recomputes(name, dims):
    """The cheap half of the test above, in the default suite for its slow cases."""
    _check(name, dims, numeric=False)
