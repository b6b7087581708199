"""The distillation loss against a float64 numpy transcription of Hinton et al.'s formula."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxseg.compress import distillation_loss
from jaxseg.errors import ConfigError


def reference(student, teacher, t):
    def log_softmax(z):
        z = z / t
        z = z - z.max(-1, keepdims=True)
        return z - np.log(np.exp(z).sum(-1, keepdims=True))

    lp, lq = log_softmax(teacher), log_softmax(student)
    return float(np.mean(np.sum(np.exp(lp) * (lp - lq), -1)) * t * t)


def test_zero_for_equal_logits_and_matches_the_formula():
    rng = np.random.default_rng(0)
    s = rng.normal(size=(2, 6, 5, 4, 3)) * 3
    t = rng.normal(size=s.shape) * 3
    for temp in (1.0, 2.0, 4.0):
        assert float(distillation_loss(jnp.asarray(s), jnp.asarray(s), temp)) == pytest.approx(
            0.0, abs=1e-6
        )
        got = float(distillation_loss(jnp.asarray(s, jnp.float32), jnp.asarray(t), temp))
        assert got == pytest.approx(reference(s, t, temp), rel=1e-4)
        assert got > 0
    # The teacher is frozen: no gradient flows into its logits.
    g = jax.grad(lambda tt: distillation_loss(jnp.asarray(s), tt, 2.0))(jnp.asarray(t))
    assert float(jnp.abs(g).max()) == 0.0
    with pytest.raises(ConfigError, match="temperature"):
        distillation_loss(jnp.asarray(s), jnp.asarray(t), 0.0)
