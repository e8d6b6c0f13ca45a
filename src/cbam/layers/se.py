"""Squeeze-and-excitation (Hu et al.), the paper's channel-attention baseline."""

from __future__ import annotations

import torch

from cbam.layers.channel import ChannelAttention


class SqueezeExcite(ChannelAttention):
    """Squeeze-and-excitation (Hu et al.), the paper's baseline: channel attention, `avg` only.

    SE's excitation sigmoid(W1 ReLU(W0 AvgPool(F))) is eq. (2) with one descriptor (Table 1).
    """

    def __init__(
        self,
        channels: int,
        reduction: float = 16,
        hidden_channels: int | None = None,
        impl: str = "auto",
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__(channels, reduction, ("avg",), hidden_channels, impl, device=device, dtype=dtype)
