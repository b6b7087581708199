"""jaxseg: real-time medical image segmentation with lightweight Transformers in JAX."""

__version__ = "0.1.0"
