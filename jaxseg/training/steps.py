"""The train step: augment -> model -> loss -> grads -> optax, as one pure function."""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import ml_collections
import optax

from jaxseg import augment, losses
from jaxseg.training.state import TrainState


def make_train_step(model, optimizer: optax.GradientTransformation,
                    config: ml_collections.ConfigDict) -> Callable:
    """Returns `step(state, batch, key) -> (state, metrics)`.

    batch: {"image": [B, *patch, C] f32, "label": [B, *patch] int32}. The key is derived
    from the run seed and the step, so the step is reproducible on resume.
    """

    def loss_fn(params, image, label, dropout_key):
        logits = model.apply({"params": params}, image, train=True,
                             rngs={"dropout": dropout_key})
        loss, parts = losses.dice_ce_loss(logits, label, dice_weight=config.loss.dice_weight,
                                          ce_weight=config.loss.ce_weight)
        return loss, parts

    def step(state: TrainState, batch: dict, key: jax.Array):
        key = jax.random.fold_in(key, state.step)
        aug_key, dropout_key = jax.random.split(key)
        image, label = augment.augment_batch(aug_key, batch["image"], batch["label"],
                                             config.augment)
        (loss, parts), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            state.params, image, label, dropout_key)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        metrics = {"loss": loss, "grad_norm": optax.global_norm(grads), **parts}
        new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state)
        return new_state, metrics

    return step


def make_predict_fn(model) -> Callable:
    """Returns `predict(params, image [b, *patch, C]) -> probabilities [b, *patch, K] f32`."""

    def predict(params, image):
        logits = model.apply({"params": params}, image, train=False)
        return jax.nn.softmax(logits.astype(jnp.float32), axis=-1)

    return predict
