"""What each attention block computed on the last forward: Ms and Mc, keyed by block name."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from cbam.errors import ConfigError
from cbam.layers import BAM, CBAM


@dataclass(frozen=True)
class AttentionMaps:
    """One block's maps: the spatial map Ms (N, 1, h, w) and the channel weights Mc (N, C); None for
    a branch the block does not have. For BAM (which adds its branches before one sigmoid), each
    branch through a sigmoid of its own."""

    spatial: Tensor | None
    channel: Tensor | None


def _cbam_maps(block: CBAM, x: Tensor) -> AttentionMaps:
    channel = block.channel.attention_map(x) if block.channel is not None else None
    refined = x * channel if channel is not None and block.arrangement == "channel-spatial" else x
    spatial = block.spatial.attention_map(refined) if block.spatial is not None else None
    if spatial is not None and channel is not None and block.arrangement == "spatial-channel":
        channel = block.channel.attention_map(x * spatial)
    return AttentionMaps(spatial, channel.flatten(1) if channel is not None else None)


def _bam_maps(block: BAM, x: Tensor) -> AttentionMaps:
    channel = torch.sigmoid(block.channel_mlp(x.mean(dim=(2, 3))))
    spatial = torch.sigmoid(block.spatial_convs(x))
    return AttentionMaps(spatial, channel)


def attention_maps(model: nn.Module, images: Tensor) -> dict[str, AttentionMaps]:
    """Run `model` on `images` (eval mode, no gradients) and return every CBAM/BAM block's maps.

    The maps are recomputed from each block's input by its own branches, so they are the same
    whichever implementation (`impl`) ran the block.
    """
    blocks = {name: m for name, m in model.named_modules() if isinstance(m, CBAM | BAM)}
    if not blocks:
        raise ConfigError(f"{type(model).__name__} has no CBAM or BAM block")
    found: dict[str, AttentionMaps] = {}

    def keep(name: str):
        def hook(module: nn.Module, inputs: tuple[Tensor, ...], output: Tensor) -> None:
            maker = _cbam_maps if isinstance(module, CBAM) else _bam_maps
            found[name] = maker(module, inputs[0])

        return hook

    handles = [m.register_forward_hook(keep(name)) for name, m in blocks.items()]
    training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(images)
    finally:
        model.train(training)
        for handle in handles:
            handle.remove()
    return found
