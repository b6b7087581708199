"""Defaults shared by every experiment: each file in configs/ starts from `base_config()`."""

import ml_collections


def base_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.seed = 0  # model initialisation, patch sampling and augmentation

    c.data = ml_collections.ConfigDict()
    c.data.root = ""  # folder holding dataset.json (MSD or nnU-Net v2 layout)
    c.data.split_seed = 0  # patient-level train/val/test split, 7:1:2
    c.data.fold = None  # None: the 7:1:2 split; k: cross-validation fold k as val, same test split
    c.data.num_folds = 5  # folds the 7:1:2 train + val patients are dealt into (with data.fold)
    c.data.train_fraction = 1.0  # share of the train split's patients used (learning curves)
    c.data.patch_size = (128, 128)  # training patch and sliding-window size, voxels
    c.data.batch_size = 8  # global batch, split over the mesh's data axis
    c.data.foreground_fraction = 0.33  # share of patches centred on foreground (nnU-Net)
    c.data.ct_window = (-1000.0, 1000.0)  # HU clip range for channels whose modality is CT
    # Planned preprocessing (python -m jaxseg.plan writes these; docs/planning.md).
    c.data.target_spacing = None  # mm per canonical axis to resample to; None: the files' own grid
    c.data.crop_nonzero = False  # crop each case to its nonzero bounding box (undone on write)
    c.data.intensity_stats = None  # per channel: (p0.5, p99.5, mean, std) of the dataset's foreground; CT channels are clipped and z-scored with them (None: ct_window)
    # Per-channel preprocessing (docs/data.md#preprocessing).
    # data.normalize: None/"auto" (by modality), zscore, minmax01, minmax11, ct_window, none or
    # percentile_clip[+zscore|minmax01|minmax11|ct_window]; one name, or one per channel.
    c.data.normalize = None  # per-channel intensity normalisation (docs/data.md)
    # z-score statistics over: "none" (the rules of data.normalize), "foreground" (nonzero
    # voxels, any channel, as nnU-Net's use_mask_for_norm; 0 outside) or "label" (training
    # cases: the label's foreground; no label at inference: "foreground"). docs/data.md.
    c.data.normalize_mask = "none"
    c.data.window_level = None  # HU; with window_width replaces ct_window: level -+ width/2
    c.data.window_width = None  # HU, > 0; give both or neither
    c.data.clip_percentiles = (0.5, 99.5)  # per-image percentiles for the percentile_clip methods
    c.data.denoise = None  # None or "nl_means" (skimage, sigma from estimate_sigma; cached)
    c.data.denoise_patch_size = 5  # nl_means patch side, voxels
    c.data.denoise_patch_distance = 6  # nl_means search radius, voxels
    c.data.denoise_h = 0.8  # nl_means filter strength h, as a multiple of the estimated sigma
    c.data.denoise_channels = None  # channel indices to denoise; None: all
    c.data.clahe = False  # skimage equalize_adapthist per channel, output in [0, 1] (cached)
    c.data.clahe_kernel_mm = None  # region, mm (one or per axis); None: 1/8 of each axis
    c.data.clahe_clip_limit = 0.01  # CLAHE clip limit, (0, 1]
    c.data.clahe_nbins = 256  # CLAHE histogram bins
    c.data.clahe_channels = None  # channel indices to equalise; None: all
    c.data.cache_dir = None  # denoise/CLAHE result cache; None: ~/.cache/jaxseg/preprocess
    c.data.num_threads = 2  # grain threads computing batches (in each worker, if any)
    c.data.prefetch = 4  # batches prefetched by grain (by each worker, if any)
    c.data.num_workers = 0  # processes computing batches; 0: threads here (docs/training.md)
    c.data.max_image_bytes = 4 * 2**30  # largest image (header shape x dtype) read; caps gunzip too
    c.data.unlabelled = ()  # jaxseg.pretrain: extra folders of unlabelled images (nnU-Net naming)

    c.model = ml_collections.ConfigDict()
    c.model.name = "lightseg_tiny"  # a name from `jaxseg.models.available_models()`
    c.model.args = ml_collections.ConfigDict()  # constructor overrides, e.g. window_sizes

    c.loss = ml_collections.ConfigDict()
    c.loss.dice_weight = 1.0  # soft Dice term (batch Dice over foreground classes)
    c.loss.ce_weight = 1.0  # cross-entropy term
    # Weighted terms, e.g. "dice:1,ce:1,boundary:0.01" (dice, ce, focal, iou, tversky,
    # boundary; jaxseg/losses/terms.py); "": dice_weight * Dice + ce_weight * CE, as before.
    c.loss.terms = ""
    c.loss.focal_gamma = 2.0  # focal term's gamma, >= 0 (Lin et al.; 0 is CE)
    c.loss.tversky_alpha = 0.3  # Tversky weight of false positives, [0, 1] (Salehi et al.)
    c.loss.tversky_beta = 0.7  # Tversky weight of false negatives, [0, 1]
    c.loss.boundary_ramp_steps = 1000  # boundary weight rises linearly from 0 over these steps
    # Case classification (a model with a class head, e.g. lightseg_fusion's num_case_classes;
    # jaxseg/losses/classification.py, docs/multimodal.md).
    c.loss.class_weight = 0.0  # weight of the class-head softmax CE added to the loss; 0: off
    # "field" (dataset.json's per-case class), "foreground:K" (the patch holds class K,
    # after augmentation) or "auto" ("field" if the dataset declares case_classes, else
    # "foreground:1").
    c.loss.class_target = "auto"

    # On-device augmentation (jaxseg.augment), per example; each *_prob is the chance that
    # the transform fires. Probabilities follow nnU-Net's defaults where it has the transform.
    c.augment = ml_collections.ConfigDict()
    c.augment.flip_prob = 0.5  # mirror, per spatial axis
    c.augment.rot90_prob = 0.0  # per square plane: rotate by 90/180/270 deg (off: RAS orientation)
    c.augment.rotation_prob = 0.2  # arbitrary rotation (linear image, nearest label resampling)
    c.augment.rotation_degrees_2d = 180.0  # 2D: angle ~ U(-a, a), in-plane
    c.augment.rotation_degrees_3d = (30.0, 30.0, 30.0)  # 3D: max |angle| about x, y, z
    c.augment.scale_prob = 0.2  # zoom (log-uniform in scale_range; > 1 enlarges structures)
    c.augment.scale_range = (0.7, 1.4)  # zoom factor range
    c.augment.scale_per_axis = False  # independent zoom per axis (anisotropic data)
    c.augment.elastic_prob = 0.2  # smooth random displacement field
    c.augment.elastic_sigma = 10.0  # smoothness of the field (Gaussian sigma, voxels)
    c.augment.elastic_magnitude = (0.0, 6.0)  # largest displacement, voxels, ~U(range)
    c.augment.pad_mode = (
        "constant"  # outside the volume: "constant" (image 0, label 0) or "nearest"
    )
    c.augment.bias_field_prob = 0.1  # smooth multiplicative bias field exp(polynomial)
    c.augment.bias_field_magnitude = 0.3  # polynomial coefficients ~ U(-m, m)
    c.augment.bias_field_order = 3  # polynomial degree of the log field
    c.augment.brightness_prob = 0.15  # x * U(brightness_range) + U(-shift, shift), per channel
    c.augment.brightness_range = (0.75, 1.25)  # multiplicative factor
    c.augment.brightness_shift = 0.1  # additive shift half-range (images are normalised)
    c.augment.contrast_prob = 0.15  # (x - mean) * f + mean, clipped to the original range
    c.augment.contrast_range = (0.75, 1.25)  # contrast factor f
    c.augment.lowres_prob = 0.25  # nearest downsample + linear upsample along random axes
    c.augment.lowres_zoom = (0.5, 1.0)  # resolution factor per affected axis
    c.augment.gamma_prob = 0.3  # gamma on the [min, max]-rescaled channel
    c.augment.gamma_range = (0.7, 1.5)  # half the draws below 1, half above
    c.augment.gamma_retain_stats = True  # restore each channel's mean and std afterwards
    c.augment.ghosting_prob = 0.1  # MRI motion ghosts along one random axis (k-space)
    c.augment.ghosting_intensity = (0.1, 0.4)  # share of the signal moved into the ghosts
    c.augment.ghosting_shift = (0.1, 0.5)  # ghost offset, fraction of the axis length
    c.augment.noise_prob = 0.1  # additive Gaussian noise
    c.augment.noise_std = 0.1  # noise std ~ U(0, noise_std)
    # MRI acquisition artefacts (torchio's RandomGamma, RandomMotion, RandomAnisotropy;
    # docs/data.md#augmentation); off by default, ranges torchio's defaults.
    c.augment.log_gamma_prob = 0.0  # gamma = exp(U(range)) on the [min, max]-rescaled channel
    c.augment.log_gamma_range = (-0.3, 0.3)  # log of gamma; (-0.3, 0.3) is gamma in [0.74, 1.35]
    c.augment.motion_prob = 0.0  # rigid patient motion during the scan, composed in k-space
    c.augment.motion_num_transforms = 2  # positions moved to (k-space segments - 1)
    c.augment.motion_degrees = (-10.0, 10.0)  # rotation about each axis, degrees ~ U(range)
    c.augment.motion_translation = (-10.0, 10.0)  # shift per axis ~ U(range), mm (or voxels)
    c.augment.anisotropy_prob = 0.0  # downsample one axis (nearest) and upsample back (linear)
    c.augment.anisotropy_axes = (0, 1, 2)  # axes to choose from (one per example); 2D uses 0, 1
    c.augment.anisotropy_downsampling = (1.5, 5.0)  # factor on the axis' spacing ~ U(range), >= 1
    # The factor never makes an axis coarser than this (mm; voxels when the batch has no
    # spacing); None: no cap. An axis already this coarse is left alone.
    c.augment.anisotropy_max_spacing = 6.0

    c.train = ml_collections.ConfigDict()
    c.train.steps = 1000  # total optimiser steps; raise it and rerun to extend a run
    c.train.warmup_steps = 50  # linear warm-up from 0 to learning_rate
    c.train.learning_rate = 1e-3  # peak learning rate, then cosine decay
    c.train.end_learning_rate_fraction = 0.01  # final lr = this * learning_rate
    c.train.weight_decay = 1e-4  # AdamW decoupled decay (not on biases and norms)
    c.train.grad_clip_norm = 1.0  # global-norm gradient clipping
    c.train.grad_accum_steps = 1  # micro-batches per step (Dice is per micro-batch)
    c.train.compute_dtype = "float32"  # model compute dtype: float32 | bfloat16 (params f32)
    c.train.log_every = 25  # steps between TensorBoard scalars
    c.train.eval_every = 250  # steps between validation Dice runs
    c.train.checkpoint_every = 250  # steps between checkpoints
    c.train.keep_checkpoints = 3  # latest checkpoints kept (plus the best by val Dice)
    # A trained workdir whose parameters start this run (fine-tuning, e.g. after pruning);
    # the optimiser and the step start fresh. Ignored once the run has its own checkpoint.
    c.train.init_from = ""

    # Fine-tuning (docs/training.md#fine-tuning): which parameters train and what is added.
    c.finetune = ml_collections.ConfigDict()
    c.finetune.method = "full"  # full | lora | adapter | decoder_only (only decoder + head train)
    c.finetune.rank = 8  # LoRA rank r of A [d_in, r] and B [r, d_out]
    c.finetune.alpha = 16.0  # LoRA scale: the update is (alpha / rank) * A @ B
    # LoRA: the names of the Dense layers adapted (attention qkv and projections, MLP layers
    # of lightseg, SwinUNETR, UNETR and TransUNet).
    c.finetune.lora_targets = ("qkv", "proj", "out_proj", "fc1", "fc2", "linear1", "linear2")
    c.finetune.lora_convs = False  # LoRA also on every one-group convolution (nn.Conv)
    c.finetune.adapter_dim = 16  # bottleneck width of each adapter (down -> GELU -> up)
    # Adapters follow these Dense layers: attention output projections and MLP outputs.
    c.finetune.adapter_targets = ("proj", "out_proj", "fc2", "linear2")
    # lora/adapter with train.init_from: the parameters the source lacks (a pretrained
    # encoder's new decoder) train fully; False: they stay at their fresh initialisation.
    c.finetune.train_fresh = True
    c.finetune.train_also = ""  # regex on parameter paths that train too, e.g. "^head/"
    c.finetune.encoder_paths = None  # decoder_only: regex of the frozen encoder; None: the model's

    # SimMIM pretraining (python -m jaxseg.pretrain; docs/small_data.md).
    c.pretrain = ml_collections.ConfigDict()
    c.pretrain.mask_ratio = 0.6  # share of mask blocks replaced by the mask token, in (0, 1)
    # Side of a mask block, voxels: a multiple of the encoder's token stride (4) dividing
    # data.patch_size; 0: the largest such size up to 32 (SimMIM's).
    c.pretrain.mask_patch = 0
    c.pretrain.head_dim = 16  # channels between the linear head's two depth-to-space steps
    # Leave out the labelled cases the 7:1:2 split (data.split_seed) tests on: no test leakage.
    c.pretrain.exclude_test_split = True

    c.mesh = ml_collections.ConfigDict()
    c.mesh.data = -1  # data-parallel axis; -1 = the devices the other axes leave
    c.mesh.fsdp = 1  # parameter/optimiser sharding axis (ZeRO-3); the batch splits over it too
    c.mesh.model = 1  # reserved for tensor parallelism
    c.mesh.param_rules = ((".*", "fsdp"),)  # (regex on param path, "fsdp" | "replicate")
    c.mesh.fsdp_min_size = 16384  # arrays with fewer elements stay replicated

    c.eval = ml_collections.ConfigDict()
    c.eval.split = "test"  # default split for jaxseg.evaluate
    c.eval.overlap = 0.5  # sliding-window overlap
    c.eval.batch_size = 4  # windows per forward pass
    c.eval.gaussian_sigma_scale = 0.125  # Gaussian weighting sigma / patch size
    c.eval.tta = True  # mirror every spatial axis at test time (nnU-Net); --no-tta turns it off
    c.eval.tta_rot90 = False  # add 90° rotations in the plane of axes 0,1 (2x the passes with tta)
    c.eval.max_val_cases = 16  # cases used for the validation Dice during training
    c.eval.nsd_tolerance_mm = 1.0  # surface Dice tolerance tau, mm, > 0 (docs/evaluation.md)
    # e.g. ({"step": "fill_holes"},); a workdir's postprocess_chain.json takes precedence.
    c.eval.postprocess = ()  # postprocessing steps, in order (docs/postprocessing.md); () none
    return c


def phantom_2d_config(model_name: str) -> ml_collections.ConfigDict:
    """`base_config()` for the embedded 2D phantoms (the demo's data and schedule), with
    `model_name`; the configs that compare models on the demo data start from it."""
    c = base_config()
    c.data.root = "data/demo2d"  # written by `python -m jaxseg.data.synthetic --dims 2`
    c.data.patch_size = (128, 128)  # the whole 2D slice: one window per image at inference
    c.data.batch_size = 8
    c.model.name = model_name
    c.train.steps = 500  # ~0.3 s a step for lightseg_tiny on 2 cores
    c.train.warmup_steps = 50
    c.train.learning_rate = 2e-3
    c.train.eval_every = 250
    c.train.checkpoint_every = 250
    return c


def phantom_3d_config(model_name: str) -> ml_collections.ConfigDict:
    """`base_config()` for the embedded 3D phantoms (64^3 patches, batch 2, the schedule
    sized for 2 CPU cores), with `model_name`; the 3D configs start from it."""
    c = base_config()
    c.data.root = "data/demo3d"  # written by `python -m jaxseg.data.synthetic --dims 3`
    c.data.patch_size = (64, 64, 64)  # a multiple of 32, the deepest stride in the zoo
    c.data.batch_size = 2
    c.model.name = model_name
    c.train.steps = 500  # sized for 2 CPU cores; not tuned
    c.train.warmup_steps = 50
    c.train.learning_rate = 1e-3
    c.train.eval_every = 250
    c.train.checkpoint_every = 250
    c.eval.batch_size = 1  # sliding windows per forward pass
    return c


def simmim_config(segmentation: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """SimMIM pretraining settings (python -m jaxseg.pretrain) over `segmentation`, the
    config the fine-tuning run will use, so the encoder's paths and shapes agree."""
    c = segmentation
    c.unlock()  # load_config locks the keys; these set values and add none
    c.pretrain.mask_ratio = 0.6  # SimMIM's default
    c.pretrain.mask_patch = 0  # the largest valid block up to 32 voxels (SimMIM's)
    # The target is the augmented patch itself: warps add nothing for the encoder to learn
    # that flips and intensity changes do not, and cost host-visible step time.
    c.augment.rotation_prob = 0.0
    c.augment.elastic_prob = 0.0
    c.train.steps = 500  # sized for 2 CPU cores; not tuned
    c.train.learning_rate = 1e-3
    c.train.eval_every = 250  # reconstruction PNGs and the sample L1
    return c
