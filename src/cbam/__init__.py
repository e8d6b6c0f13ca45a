"""cbam: channel and spatial attention for convolutional networks (Woo et al., ECCV 2018)."""

from cbam.layers import BAM, CBAM, ChannelAttention, SpatialAttention, SqueezeExcite, create_attention_factory
from cbam.registry import create_model, list_models, register_model

__version__ = "0.1.0"

__all__ = [
    "BAM",
    "CBAM",
    "ChannelAttention",
    "SpatialAttention",
    "SqueezeExcite",
    "__version__",
    "create_attention_factory",
    "create_model",
    "list_models",
    "register_model",
]
