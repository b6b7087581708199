"""Pallas TPU kernels for window and axial attention.

A library of its own: it imports jax and nothing from jaxseg. `jaxseg.ops` wraps it and
is its only caller. The kernels are being written (see the project's kernel issue);
until then `jaxseg.ops` runs the XLA implementations.
"""
