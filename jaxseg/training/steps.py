"""The train step: augment -> model -> loss -> grads -> optax, as one pure function."""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import ml_collections
import optax

from jaxseg import augment, losses
from jaxseg.training.state import TrainState

FINITE = "finite"  # metrics key: bool, every other metric of the step is finite


def make_train_step(
    model, optimizer: optax.GradientTransformation, config: ml_collections.ConfigDict
) -> Callable:
    """Returns `step(state, batch, key) -> (state, metrics)`.

    batch: {"image": [B, *patch, C] f32, "label": [B, *patch] int32}. The key is folded
    with the step, so a step is reproducible on resume. With `train.grad_accum_steps` = n,
    the batch is cut into n micro-batches of B/n (example j goes to micro-batch j mod n, so
    every device keeps its share of each micro-batch) and their gradients are averaged in
    a `lax.scan`; the loss terms, Dice included, are per micro-batch. metrics[FINITE] is
    True when every other metric (loss, its terms, the gradient norm) is finite.
    """
    accum = int(config.train.get("grad_accum_steps", 1))
    loss_config = losses.LossConfig.from_config(config.loss)  # ConfigError before any step

    def loss_fn(params, image, label, dist, dropout_key, step):
        logits = model.apply({"params": params}, image, train=True, rngs={"dropout": dropout_key})
        return losses.segmentation_loss(logits, label, loss_config, distance_maps=dist, step=step)

    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

    def accumulated(params, image, label, dist, dropout_key, step):
        def split(x):  # [B, ...] -> [accum, B / accum, ...], example j in micro-batch j % accum
            return x.reshape(x.shape[0] // accum, accum, *x.shape[1:]).swapaxes(0, 1)

        def body(carry, micro):
            (loss, parts), grads = grad_fn(params, *micro, step)
            return jax.tree_util.tree_map(jnp.add, carry, (loss, parts, grads)), None

        dist = None if dist is None else split(dist)
        micro = (split(image), split(label), dist, jax.random.split(dropout_key, accum))
        zero = jnp.zeros((), jnp.float32)
        init = (
            zero,
            {name: zero for name in loss_config.part_names},
            jax.tree_util.tree_map(jnp.zeros_like, params),
        )
        (loss, parts, grads), _ = jax.lax.scan(body, init, micro)
        scale = 1.0 / accum
        return (
            loss * scale,
            jax.tree_util.tree_map(lambda v: v * scale, parts),
        ), jax.tree_util.tree_map(lambda g: g * scale, grads)

    def step(state: TrainState, batch: dict, key: jax.Array):
        key = jax.random.fold_in(key, state.step)
        aug_key, dropout_key = jax.random.split(key)
        if loss_config.needs_distance_maps:
            # The host computed the labels' distance maps; they move with the labels.
            image, label, dist = augment.augment_batch(
                aug_key, batch["image"], batch["label"], config.augment, batch["distance_maps"]
            )
        else:
            image, label = augment.augment_batch(
                aug_key, batch["image"], batch["label"], config.augment
            )
            dist = None
        run = grad_fn if accum == 1 else accumulated
        (loss, parts), grads = run(state.params, image, label, dist, dropout_key, state.step)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        metrics = {"loss": loss, "grad_norm": optax.global_norm(grads), **parts}
        # One flag the loop can read a step late, instead of syncing on every metric.
        metrics[FINITE] = jnp.all(jnp.isfinite(jnp.stack(list(metrics.values()))))
        new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state)
        return new_state, metrics

    return step
