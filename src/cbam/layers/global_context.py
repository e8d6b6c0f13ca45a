"""Global Context (Cao et al., GCNet, ICCVW 2019): attention-pooled context, a bottleneck transform with
LayerNorm, fused into every position."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from cbam.errors import ConfigError
from cbam.layers.maps import check_feature_map

FUSIONS: tuple[str, ...] = ("add", "scale")


class GlobalContext(nn.Module):
    """out = F + T(c) (`fusion="add"`, the paper's) or F * sigmoid(T(c)) (`"scale"`, timm's default), where
    c = sum_j softmax(W_k F)_j F_j pools the map with one learned attention over its positions and
    T = conv1x1 -> LayerNorm -> ReLU -> conv1x1 is a C -> C/r -> C bottleneck (eq. 3-4). The last convolution
    starts at zero, as the authors initialise it, so the block starts as the identity under `add`.

    In a ResNet it goes in the blocks of stages c3-c5 only (`resnet_stages`), as GCNet's ImageNet and COCO networks
    place it; `attention_stages` chooses others.
    """

    resnet_stages = (2, 3, 4)

    def __init__(
        self,
        channels: int,
        reduction: float = 16,
        fusion: str = "add",
        hidden_channels: int | None = None,
        layer_norm_eps: float = 1e-5,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        if fusion not in FUSIONS:
            raise ConfigError(f"Global Context's fusion is one of {', '.join(FUSIONS)}, got {fusion!r}")
        if reduction <= 0:
            raise ConfigError(f"reduction must be positive, got {reduction}")
        factory = {"device": device, "dtype": dtype}
        hidden = hidden_channels if hidden_channels is not None else max(1, int(channels / reduction))
        self.fusion = fusion
        self.key = nn.Conv2d(channels, 1, 1, **factory)
        self.transform = nn.Sequential(
            nn.Conv2d(channels, hidden, 1, **factory),
            nn.LayerNorm([hidden, 1, 1], eps=layer_norm_eps, **factory),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, channels, 1, **factory),
        )
        nn.init.kaiming_normal_(self.key.weight, mode="fan_in", nonlinearity="relu")
        nn.init.zeros_(self.key.bias)
        if fusion == "add":
            nn.init.zeros_(self.transform[-1].weight)
            nn.init.zeros_(self.transform[-1].bias)

    def context(self, x: Tensor) -> Tensor:
        """The attention-pooled context c, (N, C, 1, 1)."""
        n, c = x.shape[:2]
        weights = self.key(x).view(n, 1, -1).softmax(dim=-1)  # (N, 1, HW)
        return torch.bmm(x.reshape(n, c, -1), weights.transpose(1, 2)).view(n, c, 1, 1)

    def forward(self, x: Tensor) -> Tensor:
        if not torch.jit.is_scripting():
            check_feature_map(x, "Global Context")
        transformed = self.transform(self.context(x))
        return x + transformed if self.fusion == "add" else x * torch.sigmoid(transformed)

    def extra_repr(self) -> str:
        return f"fusion={self.fusion}"
