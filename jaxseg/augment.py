"""On-device augmentation, run inside the jitted train step.

Each example gets its own PRNG key, so the batch is augmented independently per example
and the result depends only on the step's key (reproducible on resume). Images are
`[B, *S, C]`, labels `[B, *S]`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections


def random_flip(key: jax.Array, image: jax.Array, label: jax.Array, prob: float):
    """Flips each spatial axis of one example `[*S, C]`, `[*S]` with probability `prob`."""
    keys = jax.random.split(key, label.ndim)
    for axis, k in enumerate(keys):
        flip = jax.random.bernoulli(k, prob)
        image = jnp.where(flip, jnp.flip(image, axis), image)
        label = jnp.where(flip, jnp.flip(label, axis), label)
    return image, label


def random_intensity(key: jax.Array, image: jax.Array, scale: float, shift: float,
                     noise_std: float) -> jax.Array:
    """Per-channel scale U(1-scale, 1+scale) and shift U(-shift, shift), then Gaussian noise
    with a std drawn from U(0, noise_std); one example `[*S, C]`."""
    k_scale, k_shift, k_std, k_noise = jax.random.split(key, 4)
    channels = image.shape[-1]
    a = jax.random.uniform(k_scale, (channels,), minval=1 - scale, maxval=1 + scale)
    b = jax.random.uniform(k_shift, (channels,), minval=-shift, maxval=shift)
    std = jax.random.uniform(k_std, (), maxval=noise_std)
    return image * a + b + std * jax.random.normal(k_noise, image.shape, image.dtype)


def augment_batch(key: jax.Array, image: jax.Array, label: jax.Array,
                  config: ml_collections.ConfigDict):
    """Augments a batch `[B, *S, C]`, `[B, *S]` with one key per example."""

    def one(k, x, y):
        k_flip, k_int = jax.random.split(k)
        x, y = random_flip(k_flip, x, y, config.flip_prob)
        x = random_intensity(k_int, x, config.intensity_scale, config.intensity_shift,
                             config.noise_std)
        return x, y

    keys = jax.random.split(key, image.shape[0])
    return jax.vmap(one)(keys, image, label)
