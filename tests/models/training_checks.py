"""A shared check for model tests: two Adam steps, every parameter gets a gradient."""

import jax
import jax.numpy as jnp
import numpy as np
import optax


def assert_trains_two_steps(model, params, x, labels, num_classes: int, rngs=None):
    """Logits `[B, *S, num_classes]` f32, a finite loss, a finite non-zero gradient for every
    parameter leaf, and a finite loss after one Adam update."""

    def loss_fn(p):
        logits = model.apply({"params": p}, x, train=True, rngs=rngs)
        return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean(), logits

    opt = optax.adam(1e-3)
    state = opt.init(params)

    @jax.jit
    def step(p, s):
        (loss, logits), g = jax.value_and_grad(loss_fn, has_aux=True)(p)
        u, s = opt.update(g, s, p)
        return optax.apply_updates(p, u), s, loss, logits, g

    new, state, loss, logits, grads = step(params, state)
    assert logits.shape == x.shape[:-1] + (num_classes,) and logits.dtype == jnp.float32
    assert np.isfinite(float(loss))
    bad = [
        jax.tree_util.keystr(k)
        for k, g in jax.tree_util.tree_leaves_with_path(grads)
        if not np.isfinite(np.asarray(g)).all() or not np.any(np.asarray(g) != 0)
    ]
    assert not bad, f"parameters without a finite non-zero gradient: {bad}"
    assert np.isfinite(float(step(new, state)[2]))
