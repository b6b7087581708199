"""Pallas TPU kernels for window attention and axial attention, forward and backward.

A library of its own: it imports jax and nothing from jaxseg. `jaxseg.ops` wraps it and is
its only caller in jaxseg.

Each kernel module exports its block-size dataclass (`get_default`), its `jax.custom_vjp`
entry point and a plain-JAX reference of the same contract:

- `pallas_kernels.window_attention`: fused multi-head attention over many small windows
  (Swin-style relative bias and shift mask), Pallas backward; `window_attention_reference`.
- `pallas_kernels.axial_attention`: attention along one axis of a feature map, flash-style
  online softmax over key blocks for long axes, Pallas backward; `axial_attention_reference`
  (its tiling rule and VMEM estimate live in `pallas_kernels._axial_tiling`).
- `pallas_kernels._common`: tiling/VMEM/MXU helpers and `attention_reference`, the
  attention maths both references share.
- `python -m pallas_kernels.report`: block shapes, useful MXU work and VMEM per grid step
  for the default model configurations (see docs/kernels.md).

On a machine without a TPU the kernels run in the Pallas TPU interpreter
(`interpret=True`) and are checked for TPU with `jax.export(..., platforms=("tpu",))`.
"""
