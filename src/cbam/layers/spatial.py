"""Spatial attention: the "where" branch of CBAM (paper eq. 3, Table 2)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from cbam.errors import ConfigError
from cbam.layers.fused import FusableAttention, check_impl, spatial_fusable
from cbam.layers.pooling import channel_pool

SPATIAL_DESCRIPTORS: tuple[str, ...] = ("pool", "conv")
BN_MOMENTUM = 0.01
"""The spatial gate's BatchNorm momentum, the authors' (`BasicConv`): running statistics move 10x slower
than with PyTorch's default 0.1."""
BN_EPS = 1e-5


class SpatialAttention(FusableAttention, nn.Module):
    """Spatial attention Ms(F) = sigmoid(f_kxk([AvgPool_c(F); MaxPool_c(F)])), paper eq. (3).

    `descriptor="pool"` pools mean and max across channels (the paper's choice); `"conv"` is
    the learned 1x1 convolution to one channel that Table 2 compares against. The k x k conv
    keeps H x W ("same" padding); with `batch_norm` it has no bias and is followed by
    BatchNorm (momentum 0.01, eps 1e-5), as in the authors' code. `forward` returns the refined map Ms(F) * F.
    `impl` picks the implementation (`cbam.layers.fused`); every choice computes the same function.
    """

    def __init__(
        self,
        channels: int,
        kernel_size: int = 7,
        descriptor: str = "pool",
        batch_norm: bool = True,
        impl: str = "auto",
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        factory = {"device": device, "dtype": dtype}
        if descriptor not in SPATIAL_DESCRIPTORS:
            raise ConfigError(
                f"unknown spatial descriptor {descriptor!r}; choose from {', '.join(SPATIAL_DESCRIPTORS)}"
            )
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise ConfigError(f"kernel_size must be a positive odd number for 'same' padding, got {kernel_size}")
        self.descriptor = descriptor
        self.impl = check_impl(impl)
        if impl in ("compiled", "triton") and descriptor != "pool":
            raise ConfigError(f"impl={impl!r} fuses the pooled descriptor only, not descriptor={descriptor!r}")
        self.reduce: nn.Module | None = nn.Conv2d(channels, 1, 1, **factory) if descriptor == "conv" else None
        in_channels = 2 if descriptor == "pool" else 1
        self.conv = nn.Conv2d(in_channels, 1, kernel_size, padding=kernel_size // 2, bias=not batch_norm, **factory)
        self.bn: nn.Module | None = (
            nn.BatchNorm2d(1, eps=BN_EPS, momentum=BN_MOMENTUM, **factory) if batch_norm else None
        )
        self.init_weights()

    def init_weights(self) -> None:
        """The authors' init: a zero BatchNorm scale, so the map starts at 0.5 everywhere."""
        if isinstance(self.bn, nn.BatchNorm2d):
            nn.init.zeros_(self.bn.weight)
            nn.init.zeros_(self.bn.bias)

    def logits(self, x: Tensor) -> Tensor:
        """The map before the sigmoid, (N, 1, H, W)."""
        descriptor = self.reduce(x) if self.reduce is not None else channel_pool(x)
        out = self.conv(descriptor)
        if self.bn is not None:
            out = self.bn(out)
        return out

    def attention_map(self, x: Tensor) -> Tensor:
        """Ms(F), (N, 1, H, W), in the input's dtype."""
        return torch.sigmoid(self.logits(x)).to(x.dtype)

    def forward(self, x: Tensor) -> Tensor:
        if not torch.jit.is_scripting():
            fused = self._fused(x)
            if fused is not None:
                return fused
        return x * self.attention_map(x)

    def _fused_branches(self) -> tuple[nn.Module | None, nn.Module | None] | None:
        return (None, self) if spatial_fusable(self) else None

    def extra_repr(self) -> str:
        return f"descriptor={self.descriptor}, impl={self.impl}"
