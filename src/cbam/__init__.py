"""cbam: channel and spatial attention for convolutional networks (Woo et al., ECCV 2018)."""

from cbam.detection.detectors import create_detector, list_detectors
from cbam.engine.run import fit
from cbam.explain import attention_maps, grad_cam
from cbam.layers import BAM, CBAM, ChannelAttention, SpatialAttention, SqueezeExcite, create_attention_factory
from cbam.networks import (
    AttentionRecorder,
    attach,
    attention_modules,
    create_model,
    detach,
    list_models,
    load_pretrained,
    register_model,
)
from cbam.runs import load_model
from cbam.version import __version__

__all__ = [
    "BAM",
    "CBAM",
    "AttentionRecorder",
    "ChannelAttention",
    "SpatialAttention",
    "SqueezeExcite",
    "__version__",
    "attach",
    "attention_maps",
    "attention_modules",
    "create_attention_factory",
    "create_detector",
    "create_model",
    "detach",
    "fit",
    "grad_cam",
    "list_detectors",
    "list_models",
    "load_model",
    "load_pretrained",
    "register_model",
]
