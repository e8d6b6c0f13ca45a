"""Attention layers. They know nothing of the networks they are put into."""

from cbam.layers.bam import BAM
from cbam.layers.cbam import CBAM
from cbam.layers.channel import ChannelAttention, hidden_width
from cbam.layers.coord import CoordinateAttention
from cbam.layers.create import (
    ATTENTION_ABOUT,
    ATTENTION_LAYERS,
    AttentionFactory,
    AttentionSpec,
    attention_names,
    attention_placement,
    create_attention_factory,
)
from cbam.layers.eca import EfficientChannelAttention
from cbam.layers.ese import EffectiveSqueezeExcite
from cbam.layers.gather_excite import GatherExcite
from cbam.layers.global_context import GlobalContext
from cbam.layers.se import SqueezeExcite
from cbam.layers.simam import SimAM
from cbam.layers.spatial import SpatialAttention
from cbam.layers.triplet import TripletAttention

__all__ = [
    "ATTENTION_ABOUT",
    "ATTENTION_LAYERS",
    "BAM",
    "CBAM",
    "AttentionFactory",
    "AttentionSpec",
    "ChannelAttention",
    "CoordinateAttention",
    "EffectiveSqueezeExcite",
    "EfficientChannelAttention",
    "GatherExcite",
    "GlobalContext",
    "SimAM",
    "SpatialAttention",
    "SqueezeExcite",
    "TripletAttention",
    "attention_names",
    "attention_placement",
    "create_attention_factory",
    "hidden_width",
]
