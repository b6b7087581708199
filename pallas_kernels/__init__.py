"""Pallas TPU kernels for window attention and axial attention, forward and backward.

A library of its own: it imports jax and nothing from jaxseg. `jaxseg.ops` wraps it and is
its only caller in jaxseg.

- `pallas_kernels.window_attention`: fused multi-head attention over many small windows
  (Swin-style relative bias and shift mask), `jax.custom_vjp` with a Pallas backward.
- `pallas_kernels.axial_attention`: attention along one axis of a feature map, flash-style
  online softmax over key blocks for long axes, Pallas backward.
- `python -m pallas_kernels.report`: block shapes, useful MXU work and VMEM per grid step
  for the default model configurations (see docs/kernels.md).

On a machine without a TPU the kernels run in the Pallas TPU interpreter
(`interpret=True`) and are checked for TPU with `jax.export(..., platforms=("tpu",))`.
"""
