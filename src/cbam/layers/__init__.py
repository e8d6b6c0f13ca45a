"""Attention layers. They know nothing of the networks they are put into."""

from cbam.layers.bam import BAM
from cbam.layers.cbam import CBAM
from cbam.layers.channel import ChannelAttention, hidden_width
from cbam.layers.create import (
    ATTENTION_LAYERS,
    AttentionFactory,
    AttentionSpec,
    attention_names,
    attention_placement,
    create_attention_factory,
)
from cbam.layers.se import SqueezeExcite
from cbam.layers.spatial import SpatialAttention

__all__ = [
    "ATTENTION_LAYERS",
    "BAM",
    "CBAM",
    "AttentionFactory",
    "AttentionSpec",
    "ChannelAttention",
    "SpatialAttention",
    "SqueezeExcite",
    "attention_names",
    "attention_placement",
    "create_attention_factory",
    "hidden_width",
]
