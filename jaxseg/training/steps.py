"""The train step: augment -> model -> loss -> grads -> optax, as one pure function."""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import ml_collections
import optax

from jaxseg import augment, losses
from jaxseg.training.state import TrainState


def make_train_step(
    model, optimizer: optax.GradientTransformation, config: ml_collections.ConfigDict
) -> Callable:
    """Returns `step(state, batch, key) -> (state, metrics)`.

    batch: {"image": [B, *patch, C] f32, "label": [B, *patch] int32}. The key is folded
    with the step, so a step is reproducible on resume. With `train.grad_accum_steps` = n,
    the batch is cut into n micro-batches of B/n (example j goes to micro-batch j mod n, so
    every device keeps its share of each micro-batch) and their gradients are averaged in
    a `lax.scan`; the loss terms, Dice included, are per micro-batch.
    """
    accum = int(config.train.get("grad_accum_steps", 1))

    def loss_fn(params, image, label, dropout_key):
        logits = model.apply({"params": params}, image, train=True, rngs={"dropout": dropout_key})
        return losses.dice_ce_loss(
            logits, label, dice_weight=config.loss.dice_weight, ce_weight=config.loss.ce_weight
        )

    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

    def accumulated(params, image, label, dropout_key):
        def split(x):  # [B, ...] -> [accum, B / accum, ...], example j in micro-batch j % accum
            return x.reshape(x.shape[0] // accum, accum, *x.shape[1:]).swapaxes(0, 1)

        def body(carry, micro):
            (loss, parts), grads = grad_fn(params, *micro)
            return jax.tree_util.tree_map(jnp.add, carry, (loss, parts, grads)), None

        micro = (split(image), split(label), jax.random.split(dropout_key, accum))
        zero = jnp.zeros((), jnp.float32)
        init = (
            zero,
            {"dice_loss": zero, "ce": zero},
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
        image, label = augment.augment_batch(
            aug_key, batch["image"], batch["label"], config.augment
        )
        if accum == 1:
            (loss, parts), grads = grad_fn(state.params, image, label, dropout_key)
        else:
            (loss, parts), grads = accumulated(state.params, image, label, dropout_key)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        metrics = {"loss": loss, "grad_norm": optax.global_norm(grads), **parts}
        new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state)
        return new_state, metrics

    return step
