"""On-device augmentation, run inside the jitted train step.

`augment_batch(key, image [B, *S, C], label [B, *S], config.augment)` splits the key into
one key per example and `vmap`s `augment_example` over the batch, so each example is
augmented independently, the result is a pure function of the step's key (identical on
resume) and every shape is static (no host round trip, no recompilation). `S` is 2D
`(X, Y)` or 3D `(X, Y, Z)`, channels last; labels are integer class maps.

Order of the transforms (each fires per example with its own probability; the arrays are
always computed and selected with `jnp.where`, because under `vmap` a `lax.cond` would run
both branches anyway):

1. spatial, one resampling for rotation + scaling + elastic deformation together (one
   gather instead of three, and no compounding of interpolation blur):
   output voxel `o` reads the input at `M @ (o - c) + c + u(o)`, with `c = (S - 1) / 2`
   the centre, `M = R(angles) @ diag(1 / zoom)` and `u` the elastic displacement field.
   This is scipy's `affine_transform(matrix=M, offset=c - M @ c)` convention. The image is
   linearly interpolated and the label takes the nearest voxel (`floor(p + 0.5)`, as
   scipy's order 0), so labels keep their original values. Outside the volume the image
   reads 0 and the label 0 (background) with `pad_mode="constant"` (scipy's
   "grid-constant"), or the edge voxel with `pad_mode="nearest"`. Everything happens in
   the voxel grid: on anisotropic data use small out-of-plane angles (e.g.
   `rotation_degrees_3d = (0, 0, 180)` for thick axial slices) and `scale_per_axis`.
2. 90-degree rotations (in each plane whose two axes have the same size; other planes
   are skipped, because rotating them would change the array shape) and flips.
3. MRI acquisition artefacts (labels unchanged; off by default): rigid patient motion
   composed in k-space and anisotropic downsampling along one axis, as torchio's
   `RandomMotion` and `RandomAnisotropy` (`jaxseg.augment.mri`). Both take the batch's
   `spacing` (mm) when `augment_batch` is given it.
4. intensity, per channel where it makes sense: smooth multiplicative bias field,
   brightness (multiply and shift), contrast, simulated low resolution, gamma (nnU-Net's
   draw), log-gamma (torchio's draw), motion ghosting, Gaussian noise.

Modules: `config` (keys and validation), `geometry`, `intensity`, `mri` (one example at a
time), `stages` (the pipeline). Each transform is also a public function on one example
so that it can be tested against `scipy.ndimage`, numpy or torchio on the same parameters.
"""

from jaxseg.augment.config import resolve_config
from jaxseg.augment.geometry import (
    PAD_MODES,
    elastic_coarse_shape,
    elastic_displacement,
    random_flip,
    resample_linear,
    resample_nearest,
    rot90,
    rot90_planes,
    rotation_matrix,
    sampling_matrix,
    spatial_coordinates,
)
from jaxseg.augment.intensity import (
    adjust_brightness,
    adjust_contrast,
    adjust_gamma,
    bias_field,
    gaussian_noise,
    ghosting,
    simulate_low_resolution,
)
from jaxseg.augment.mri import anisotropy, compose_kspace, motion, resample_under_motion
from jaxseg.augment.stages import augment_batch, augment_example

__all__ = [
    "augment_batch",
    "augment_example",
    "resolve_config",
    "rotation_matrix",
    "sampling_matrix",
    "spatial_coordinates",
    "resample_linear",
    "resample_nearest",
    "elastic_displacement",
    "elastic_coarse_shape",
    "random_flip",
    "rot90",
    "rot90_planes",
    "PAD_MODES",
    "bias_field",
    "adjust_brightness",
    "adjust_contrast",
    "adjust_gamma",
    "simulate_low_resolution",
    "ghosting",
    "gaussian_noise",
    "motion",
    "resample_under_motion",
    "compose_kspace",
    "anisotropy",
]
