"""Triplet Attention (Misra et al., WACV 2021): three spatial-style gates over the (C, W), (H, C) and (H, W)
planes of the map, averaged."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from cbam.errors import ConfigError
from cbam.layers.maps import check_feature_map


class ZPoolGate(nn.Module):
    """One branch: Z-pool (max and mean over the first axis) -> k x k convolution -> BatchNorm -> sigmoid,
    applied to its input, as the authors' `AttentionGate` (BatchNorm with eps 1e-5, momentum 0.01)."""

    def __init__(self, kernel_size: int, device: torch.device | str | None = None,
                 dtype: torch.dtype | None = None) -> None:  # fmt: skip
        super().__init__()
        factory = {"device": device, "dtype": dtype}
        self.conv = nn.Conv2d(2, 1, kernel_size, padding=(kernel_size - 1) // 2, bias=False, **factory)
        self.bn = nn.BatchNorm2d(1, eps=1e-5, momentum=0.01, **factory)

    def forward(self, x: Tensor) -> Tensor:
        pooled = torch.cat([x.amax(dim=1, keepdim=True), x.mean(dim=1, keepdim=True)], dim=1)
        return x * torch.sigmoid(self.bn(self.conv(pooled)))


class TripletAttention(nn.Module):
    """out = (1/3) (P1^-1(G_cw(P1 F)) + P2^-1(G_hc(P2 F)) + G_hw(F)) (Sect. 3.2), each G a `ZPoolGate` over a
    rotation P of the map: the channel-height, channel-width and the spatial branch. `no_spatial=True` keeps
    the two cross-dimension branches only (averaged over two), as the authors' option does."""

    def __init__(
        self,
        channels: int,
        kernel_size: int = 7,
        no_spatial: bool = False,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise ConfigError(f"Triplet Attention's kernel_size must be odd and positive, got {kernel_size}")
        factory = {"device": device, "dtype": dtype}
        self.kernel_size, self.no_spatial = kernel_size, no_spatial
        self.cw = ZPoolGate(kernel_size, **factory)
        self.hc = ZPoolGate(kernel_size, **factory)
        self.hw = None if no_spatial else ZPoolGate(kernel_size, **factory)

    def forward(self, x: Tensor) -> Tensor:
        if not torch.jit.is_scripting():
            check_feature_map(x, "Triplet Attention")
        cw = self.cw(x.permute(0, 2, 1, 3)).permute(0, 2, 1, 3)  # H takes the channels' place
        hc = self.hc(x.permute(0, 3, 2, 1)).permute(0, 3, 2, 1)  # W takes the channels' place
        if self.hw is None:
            return (cw + hc) / 2
        return (cw + hc + self.hw(x)) / 3

    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel_size}, no_spatial={self.no_spatial}"
