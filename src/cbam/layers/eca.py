"""Efficient Channel Attention (Wang et al., ECA-Net, CVPR 2020): a 1-D convolution across the channels of the
average-pooled vector, no reduction."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from cbam.errors import ConfigError
from cbam.layers.fused import FusableAttention, check_impl
from cbam.layers.maps import check_feature_map


def adaptive_kernel_size(channels: int, gamma: float = 2, beta: float = 1) -> int:
    """ECA-Net's k = psi(C) = |log2(C) / gamma + beta / gamma|_odd (eq. 12), as the authors compute it: the
    integer part, made odd by adding one (C = 64 -> 3, 256 and 512 -> 5, 2048 -> 7)."""
    t = int(abs((math.log2(channels) + beta) / gamma))
    return t if t % 2 else t + 1


class EfficientChannelAttention(FusableAttention, nn.Module):
    """ECA: w = sigmoid(conv1d_k(GAP(F))), out = w * F, the k-tap convolution shared by all channels (eq. 9-11).

    `kernel_size=None` takes the paper's adaptive size from `gamma` and `beta`; `circular=True` pads the channel
    axis circularly instead of with zeros (timm's CECA). The convolution has no bias, as in the paper. `impl`
    picks the implementation (`cbam.layers.fused`: the fused gate pools, convolves and scales in its passes).
    """

    pool_types: tuple[str, ...] = ("avg",)

    def __init__(
        self,
        channels: int,
        kernel_size: int | None = None,
        gamma: float = 2,
        beta: float = 1,
        circular: bool = False,
        impl: str = "auto",
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        if channels < 1:
            raise ConfigError(f"channels must be positive, got {channels}")
        if kernel_size is not None and (gamma, beta) != (2, 1):
            raise ConfigError(f"ECA's gamma and beta set the adaptive kernel size; with kernel_size={kernel_size} "
                              "they do not apply: give one or the other")  # fmt: skip
        size = adaptive_kernel_size(channels, gamma, beta) if kernel_size is None else kernel_size
        if size < 1 or size % 2 == 0:
            raise ConfigError(f"ECA's kernel_size must be odd and positive (a centred window), got {size}")
        self.kernel_size, self.circular, self.impl = size, circular, check_impl(impl)
        self.conv = nn.Conv1d(1, 1, size, padding=0, bias=False, device=device, dtype=dtype)

    def logits(self, x: Tensor) -> Tensor:
        """The map before the sigmoid, (N, C, 1, 1)."""
        pooled = x.mean(dim=(2, 3)).unsqueeze(1)  # (N, 1, C): the channels as a sequence
        pad = (self.kernel_size - 1) // 2
        pooled = F.pad(pooled, (pad, pad), mode="circular" if self.circular else "constant")
        return self.conv(pooled).view(x.shape[0], x.shape[1], 1, 1)

    def attention_map(self, x: Tensor) -> Tensor:
        """The channel weights, (N, C, 1, 1)."""
        return torch.sigmoid(self.logits(x)).to(x.dtype)

    def forward(self, x: Tensor) -> Tensor:
        if not torch.jit.is_scripting():
            check_feature_map(x, "ECA")
            fused = self._fused(x)
            if fused is not None:
                return fused
        return x * self.attention_map(x)

    def _fused_branches(self) -> tuple[nn.Module | None, nn.Module | None]:
        return self, None

    def fused_channel_fields(self) -> dict[str, object]:
        """The fused gate's arguments (`GateArgs` fields) that compute this gate."""
        return {"w1": self.conv.weight, "use_avg": True, "channel_fn": "conv1d", "circular": self.circular}

    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel_size}, circular={self.circular}, impl={self.impl}"
