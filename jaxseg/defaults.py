"""Defaults shared by every experiment: each file in configs/ starts from `base_config()`."""

import ml_collections


def base_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.seed = 0  # model initialisation, patch sampling and augmentation

    c.data = ml_collections.ConfigDict()
    c.data.root = ""  # folder holding dataset.json (MSD or nnU-Net v2 layout)
    c.data.split_seed = 0  # patient-level train/val/test split, 7:1:2
    c.data.patch_size = (128, 128)  # training patch and sliding-window size, voxels
    c.data.batch_size = 8  # global batch, split over the mesh's data axis
    c.data.foreground_fraction = 0.33  # share of patches centred on foreground (nnU-Net)
    c.data.ct_window = (-1000.0, 1000.0)  # HU clip range for channels whose modality is CT
    c.data.num_threads = 2  # grain reader threads on this host
    c.data.prefetch = 4  # batches prefetched by grain

    c.model = ml_collections.ConfigDict()
    c.model.name = "lightseg_tiny"  # a name from `jaxseg.models.available_models()`
    c.model.args = ml_collections.ConfigDict()  # constructor overrides, e.g. window_sizes

    c.loss = ml_collections.ConfigDict()
    c.loss.dice_weight = 1.0  # soft Dice term (batch Dice over foreground classes)
    c.loss.ce_weight = 1.0  # cross-entropy term

    c.augment = ml_collections.ConfigDict()
    c.augment.flip_prob = 0.5  # per spatial axis
    c.augment.intensity_scale = 0.1  # multiply by U(1 - s, 1 + s)
    c.augment.intensity_shift = 0.1  # add U(-s, s) (images are normalised)
    c.augment.noise_std = 0.05  # max std of added Gaussian noise

    c.train = ml_collections.ConfigDict()
    c.train.steps = 1000  # total optimiser steps; raise it and rerun to extend a run
    c.train.warmup_steps = 50  # linear warm-up from 0 to learning_rate
    c.train.learning_rate = 1e-3  # peak learning rate, then cosine decay
    c.train.end_learning_rate_fraction = 0.01  # final lr = this * learning_rate
    c.train.weight_decay = 1e-4  # AdamW decoupled decay (not on biases and norms)
    c.train.grad_clip_norm = 1.0  # global-norm gradient clipping
    c.train.log_every = 25  # steps between TensorBoard scalars
    c.train.eval_every = 250  # steps between validation Dice runs
    c.train.checkpoint_every = 250  # steps between checkpoints
    c.train.keep_checkpoints = 3  # latest checkpoints kept (plus the best by val Dice)

    c.mesh = ml_collections.ConfigDict()
    c.mesh.data = -1  # devices on the data axis; -1 = all devices

    c.eval = ml_collections.ConfigDict()
    c.eval.split = "test"  # default split for jaxseg.evaluate
    c.eval.overlap = 0.5  # sliding-window overlap
    c.eval.batch_size = 4  # windows per forward pass
    c.eval.gaussian_sigma_scale = 0.125  # Gaussian weighting sigma / patch size
    c.eval.max_val_cases = 16  # cases used for the validation Dice during training
    return c
