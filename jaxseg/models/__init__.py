"""Segmentation models (Flax Linen) and the registry that maps config names to them.

Registered: "unet", "lightseg_tiny", "lightseg_small", "lightseg_base".
"""

from jaxseg.models.lightseg import LightSeg
from jaxseg.models.registry import available_models, build_model, model_factory, register_model
from jaxseg.models.unet import UNet

register_model("unet", model_factory(UNet))
register_model("lightseg_tiny", model_factory(
    LightSeg, model_name="lightseg_tiny", _hidden=("model_name",),
    embed_dims=(32, 64, 128), depths=(2, 2, 2), num_heads=(2, 4, 8), stem_dims=(16, 24),
    drop_path=0.0))
register_model("lightseg_small", model_factory(
    LightSeg, model_name="lightseg_small", _hidden=("model_name",),
    embed_dims=(48, 96, 192, 384), depths=(2, 2, 2, 2), num_heads=(3, 6, 12, 24), stem_dims=(16, 32),
    drop_path=0.1))
register_model("lightseg_base", model_factory(
    LightSeg, model_name="lightseg_base", _hidden=("model_name",),
    embed_dims=(64, 128, 256, 512), depths=(2, 2, 6, 2), num_heads=(2, 4, 8, 16), stem_dims=(32, 48),
    drop_path=0.2))

__all__ = ["LightSeg", "UNet", "available_models", "build_model", "model_factory", "register_model"]
