"""Knowledge distillation loss (Hinton et al. 2015), per voxel."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxseg.errors import ConfigError


def distillation_loss(
    student_logits: jax.Array, teacher_logits: jax.Array, temperature: float = 2.0
) -> jax.Array:
    """Mean over voxels of T^2 KL(softmax(teacher / T) || softmax(student / T)).

    logits `[B, *S, K]` (any float dtype; computed in float32); returns a scalar. The T^2
    factor keeps the gradient scale independent of T. The teacher gets no gradient.
    """
    if temperature <= 0:
        raise ConfigError(f"distillation temperature must be > 0; got {temperature}")
    t = jnp.float32(temperature)
    teacher = jax.lax.stop_gradient(teacher_logits.astype(jnp.float32)) / t
    log_p = jax.nn.log_softmax(teacher, axis=-1)
    log_q = jax.nn.log_softmax(student_logits.astype(jnp.float32) / t, axis=-1)
    kl = jnp.sum(jnp.exp(log_p) * (log_p - log_q), axis=-1)
    return jnp.mean(kl) * t * t
