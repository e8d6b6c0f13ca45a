"""CBAM: channel and spatial attention composed (paper eq. 1, Tables 1-3)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from cbam.errors import ConfigError
from cbam.layers.channel import ChannelAttention
from cbam.layers.fused import FusableAttention, channel_fusable, check_impl, spatial_fusable
from cbam.layers.spatial import SpatialAttention

ARRANGEMENTS: tuple[str, ...] = ("channel-spatial", "spatial-channel", "parallel")


class CBAM(FusableAttention, nn.Module):
    """Convolutional Block Attention Module: F' = Mc(F) * F, then F'' = Ms(F') * F', eq. (1).

    `arrangement` chooses the order of Table 3: `"channel-spatial"` (the paper's), the
    reverse, or `"parallel"`, where both raw maps are computed from F, broadcast-added to a
    C x H x W map and passed through one sigmoid. `channel=False` or `spatial=False` drops a
    branch, so every ablation row of Tables 1-3 is one constructor call. `impl` picks the
    implementation (`cbam.layers.fused`): the paper's arrangement runs as one fused gate.
    """

    def __init__(
        self,
        channels: int,
        reduction: float = 16,
        pool_types: str | Sequence[str] = ("avg", "max"),
        kernel_size: int = 7,
        spatial_descriptor: str = "pool",
        spatial_batch_norm: bool = True,
        arrangement: str = "channel-spatial",
        channel: bool = True,
        spatial: bool = True,
        impl: str = "auto",
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        factory = {"device": device, "dtype": dtype}
        if arrangement not in ARRANGEMENTS:
            raise ConfigError(f"unknown arrangement {arrangement!r}; choose from {', '.join(ARRANGEMENTS)}")
        if not (channel or spatial):
            raise ConfigError("CBAM needs the channel or the spatial branch (or both); both were disabled")
        self.arrangement = arrangement
        if impl in ("compiled", "triton") and arrangement == "parallel" and channel and spatial:
            raise ConfigError(f"impl={impl!r} fuses the sequential arrangements only, not 'parallel'")
        self.channel: ChannelAttention | None = (
            ChannelAttention(channels, reduction, pool_types, impl=impl, **factory) if channel else None
        )
        self.spatial: SpatialAttention | None = (
            SpatialAttention(channels, kernel_size, spatial_descriptor, spatial_batch_norm, impl, **factory)
            if spatial
            else None
        )
        self.impl = check_impl(impl)

    def forward(self, x: Tensor) -> Tensor:
        if self.channel is not None and self.spatial is not None:
            if self.arrangement == "channel-spatial" and not torch.jit.is_scripting():
                fused = self._fused(x)
                if fused is not None:
                    return fused
            if self.arrangement == "parallel":
                # (N, C, 1, 1) + (N, 1, H, W) -> (N, C, H, W), one sigmoid
                logits = self.channel.logits(x) + self.spatial.logits(x)
                return x * torch.sigmoid(logits).to(x.dtype)
            if self.arrangement == "spatial-channel":
                return self.channel(self.spatial(x))
            return self.spatial(self.channel(x))
        if self.channel is not None:
            return self.channel(x)
        if self.spatial is not None:
            return self.spatial(x)
        return x

    def _fused_branches(self) -> tuple[nn.Module | None, nn.Module | None] | None:
        """Both branches in the paper's order, or the one branch there is; None where they cannot fuse."""
        if self.channel is not None and self.spatial is not None and self.arrangement != "channel-spatial":
            return None
        if self.channel is not None and not channel_fusable(self.channel):
            return None
        if self.spatial is not None and not spatial_fusable(self.spatial):
            return None
        return self.channel, self.spatial

    def extra_repr(self) -> str:
        return f"arrangement={self.arrangement}, impl={self.impl}"
