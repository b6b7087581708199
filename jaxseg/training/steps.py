"""The train step: augment -> model -> loss -> grads -> optax, as one pure function."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import optax

from jaxseg import augment, losses
from jaxseg.training.state import TrainState

FINITE = "finite"  # metrics key: bool, every other metric of the step is finite


def augment_spacing(config: ml_collections.ConfigDict) -> tuple[float, ...] | None:
    """`data.target_spacing` as the augmentation's spacing (None when not resampled)."""
    target = config.data.get("target_spacing")
    return None if not target else tuple(float(v) for v in target)


def make_train_step(
    model,
    optimizer: optax.GradientTransformation,
    config: ml_collections.ConfigDict,
    trainable: Any | None = None,
    class_target: losses.ClassTarget | None = None,
) -> Callable:
    """Returns `step(state, batch, key) -> (state, metrics)`.

    batch: {"image": [B, *patch, C] f32, "label": [B, *patch] int32} (and "case_class"
    int32 [B] for a "field" class target). The key is folded
    with the step, so a step is reproducible on resume. With `train.grad_accum_steps` = n,
    the batch is cut into n micro-batches of B/n (example j goes to micro-batch j mod n, so
    every device keeps its share of each micro-batch) and their gradients are averaged in
    a `lax.scan`; the loss terms, Dice included, are per micro-batch. metrics[FINITE] is
    True when every other metric (loss, its terms, the gradient norm) is finite.

    trainable: a bool per parameter leaf (`jaxseg.training.finetune`), None for all. The
    frozen leaves' gradients are dropped (so XLA does not compute them, and grad_norm is
    the trainable one's) and the leaves are carried over as they were, bit for bit.

    class_target: the resolved `loss.class_target` (`losses.resolve_class_target`), needed
    when `loss.class_weight` > 0: the model's class logits then add `class_weight` times
    their softmax CE (`losses.class_ce`, metric "class_ce"); a derived target is computed
    from each augmented label patch. With class_weight = 0 the step is what it was.
    """
    accum = int(config.train.get("grad_accum_steps", 1))
    # The model grid's mm per axis (motion and anisotropy work in mm); None: the files' own
    # grids, which differ per case, so those stages work in voxels.
    spacing = augment_spacing(config)
    loss_config = losses.LossConfig.from_config(config.loss)  # ConfigError before any step
    weight = losses.class_weight(config.loss)
    if weight > 0:
        if class_target is None:
            raise ValueError("make_train_step: loss.class_weight > 0 needs class_target.")
        heads = getattr(model, "num_case_classes", 0)
        losses.check_class_head(class_target, heads, config.model.name)
    part_names = (*loss_config.part_names, *(("class_ce",) if weight > 0 else ()))

    def loss_fn(params, image, label, dist, case_class, dropout_key, step):
        rngs = {"dropout": dropout_key}
        if weight == 0:  # the step as it was before the class head existed
            logits = model.apply({"params": params}, image, train=True, rngs=rngs)
            return losses.segmentation_loss(
                logits, label, loss_config, distance_maps=dist, step=step
            )
        logits, class_logits = model.apply(
            {"params": params}, image, train=True, rngs=rngs, with_class_logits=True
        )
        loss, parts = losses.segmentation_loss(
            logits, label, loss_config, distance_maps=dist, step=step
        )
        if class_target.derived:  # from the augmented patch: what the model sees
            case_class = losses.foreground_target(label, class_target.foreground_class)
        ce = losses.class_ce(class_logits, case_class)
        return loss + weight * ce, {**parts, "class_ce": ce}

    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

    def accumulated(params, image, label, dist, case_class, dropout_key, step):
        def split(x):  # [B, ...] -> [accum, B / accum, ...], example j in micro-batch j % accum
            return x.reshape(x.shape[0] // accum, accum, *x.shape[1:]).swapaxes(0, 1)

        def body(carry, micro):
            (loss, parts), grads = grad_fn(params, *micro, step)
            return jax.tree_util.tree_map(jnp.add, carry, (loss, parts, grads)), None

        dist = None if dist is None else split(dist)
        case_class = None if case_class is None else split(case_class)
        micro = (
            split(image),
            split(label),
            dist,
            case_class,
            jax.random.split(dropout_key, accum),
        )
        zero = jnp.zeros((), jnp.float32)
        init = (
            zero,
            {name: zero for name in part_names},
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
                aug_key,
                batch["image"],
                batch["label"],
                config.augment,
                batch["distance_maps"],
                spacing=spacing,
            )
        else:
            image, label = augment.augment_batch(
                aug_key, batch["image"], batch["label"], config.augment, spacing=spacing
            )
            dist = None
        # Per-case targets ride along unaugmented: augmentation keeps a case's class.
        case_class = batch["case_class"] if weight > 0 and not class_target.derived else None
        run = grad_fn if accum == 1 else accumulated
        (loss, parts), grads = run(
            state.params, image, label, dist, case_class, dropout_key, state.step
        )
        if trainable is not None:
            grads = jax.tree_util.tree_map(
                lambda g, t: g if t else jnp.zeros_like(g), grads, trainable
            )
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        if trainable is not None:  # p + 0 would turn -0.0 into +0.0: keep the leaf itself
            params = jax.tree_util.tree_map(
                lambda new, old, t: new if t else old, params, state.params, trainable
            )
        metrics = {"loss": loss, "grad_norm": optax.global_norm(grads), **parts}
        # One flag the loop can read a step late, instead of syncing on every metric.
        metrics[FINITE] = jnp.all(jnp.isfinite(jnp.stack(list(metrics.values()))))
        new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state)
        return new_state, metrics

    return step
