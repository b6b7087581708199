"""Segmentation models (Flax Linen) and the registry that maps config names to them.

Registered: "unet", "swinunetr", "unetr", "transmed", "lightseg_tiny", "lightseg_small",
"lightseg_base", "lightseg_fusion"; baselines "resunet", "attention_unet", "unetpp", "transunet",
"mobilenetv3_unet", "shufflenetv2_unet", "deeplabv3plus"; state-space "umamba", "hcmamba"
(`available_models()` lists them).
"""

from jaxseg.models.attention_unet import AttentionUNet
from jaxseg.models.deeplab import DeepLabV3Plus
from jaxseg.models.fusion import LightSegFusion
from jaxseg.models.lightseg import LightSeg
from jaxseg.models.mamba import HCMamba, UMamba
from jaxseg.models.mobilenet import MobileNetV3UNet
from jaxseg.models.registry import available_models, build_model, model_factory, register_model
from jaxseg.models.resunet import ResUNet
from jaxseg.models.shufflenet import ShuffleNetV2UNet
from jaxseg.models.swin_unetr import SwinUNETR
from jaxseg.models.transmed import TransMed
from jaxseg.models.transunet import TransUNet
from jaxseg.models.unet import UNet
from jaxseg.models.unetpp import UNetPlusPlus
from jaxseg.models.unetr import UNETR

register_model("unet", model_factory(UNet))
register_model("swinunetr", model_factory(SwinUNETR))  # MONAI-equivalent; see jaxseg.models.convert
register_model("unetr", model_factory(UNETR))  # MONAI-equivalent; see jaxseg.models.convert
register_model("transmed", model_factory(TransMed))  # variant: unet | axial | dynamic | full


def _register_lightseg(name: str, **sizes):
    """Register a LightSeg size as `name`: built with `sizes`, errors reported as `name`."""
    register_model(name, model_factory(LightSeg, model_name=name, _hidden=("model_name",), **sizes))


_register_lightseg(
    "lightseg_tiny",
    embed_dims=(32, 64, 128),
    depths=(2, 2, 2),
    num_heads=(2, 4, 8),
    stem_dims=(16, 24),
    drop_path=0.0,
)
_register_lightseg(
    "lightseg_small",
    embed_dims=(48, 96, 192, 384),
    depths=(2, 2, 2, 2),
    num_heads=(3, 6, 12, 24),
    stem_dims=(16, 32),
    mlp_ratio=3.0,  # keeps small <= 25% of SwinUNETR-48's params with the cross-window modules
    drop_path=0.1,
)
_register_lightseg(
    "lightseg_base",
    embed_dims=(64, 128, 256, 512),
    depths=(2, 2, 6, 2),
    num_heads=(2, 4, 8, 16),
    stem_dims=(32, 48),
    drop_path=0.2,
)

# Multimodal (issue 15): one lightseg_small-sized encoder per modality (in_channels = M).
register_model(
    "lightseg_fusion",
    model_factory(
        LightSegFusion,
        _hidden=("model_name",),
        embed_dims=(48, 96, 192, 384),
        depths=(2, 2, 2, 2),
        num_heads=(3, 6, 12, 24),
        stem_dims=(16, 32),
        mlp_ratio=3.0,
        drop_path=0.1,
    ),
)

# CNN and hybrid baselines (issue 3)
register_model("resunet", model_factory(ResUNet))
register_model("attention_unet", model_factory(AttentionUNet))
register_model("unetpp", model_factory(UNetPlusPlus))
register_model("transunet", model_factory(TransUNet))
register_model("mobilenetv3_unet", model_factory(MobileNetV3UNet))
register_model("shufflenetv2_unet", model_factory(ShuffleNetV2UNet))
register_model("deeplabv3plus", model_factory(DeepLabV3Plus))

# Selective state-space models (issue 17); variant "bot" | "enc", mixer "mamba" | "identity" | "conv"
register_model("umamba", model_factory(UMamba))
register_model("hcmamba", model_factory(HCMamba))

__all__ = [
    "AttentionUNet",
    "DeepLabV3Plus",
    "HCMamba",
    "LightSeg",
    "LightSegFusion",
    "MobileNetV3UNet",
    "ResUNet",
    "ShuffleNetV2UNet",
    "TransMed",
    "TransUNet",
    "UMamba",
    "UNet",
    "UNetPlusPlus",
    "available_models",
    "build_model",
    "model_factory",
    "register_model",
]
