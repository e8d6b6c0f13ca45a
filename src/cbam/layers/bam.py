"""BAM, the bottleneck attention module (Park et al., BMVC 2018), the paper's concurrent work."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from cbam.errors import ConfigError
from cbam.layers.channel import hidden_width

BAM_COMBINES: tuple[str, ...] = ("sum", "product")


def _conv_bn_relu(
    in_channels: int, out_channels: int, kernel_size: int, dilation: int = 1, **factory: Any
) -> list[nn.Module]:
    padding = dilation * (kernel_size // 2)
    return [
        nn.Conv2d(in_channels, out_channels, kernel_size, padding=padding, dilation=dilation, **factory),
        nn.BatchNorm2d(out_channels, **factory),
        nn.ReLU(inplace=True),
    ]


class BAM(nn.Module):
    """Bottleneck attention: F' = F + F * sigmoid(Mc(F) + Ms(F)) = F * (1 + M(F)).

    Mc is an average-pooled MLP (C -> C/r -> C, BatchNorm and ReLU on the hidden layer); Ms
    reduces to C/r channels with a 1x1 conv, applies `num_dilated` 3x3 convs with dilation
    `dilation`, and projects to one channel. BAM goes at the ends of network stages, not in
    every block (`placement = "stage"`). `combine="product"` multiplies the two maps instead
    of adding them, as the authors' released code does (their paper adds them).
    """

    placement: str = "stage"

    def __init__(
        self,
        channels: int,
        reduction: float = 16,
        dilation: int = 4,
        num_dilated: int = 2,
        combine: str = "sum",
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        factory = {"device": device, "dtype": dtype}
        if combine not in BAM_COMBINES:
            raise ConfigError(f"unknown combine {combine!r}; choose from {', '.join(BAM_COMBINES)}")
        hidden = hidden_width(channels, reduction)
        self.combine = combine
        self.channel_mlp = nn.Sequential(
            nn.Linear(channels, hidden, **factory),
            nn.BatchNorm1d(hidden, **factory),
            nn.ReLU(inplace=True),
            nn.Linear(hidden, channels, **factory),
        )
        spatial: list[nn.Module] = _conv_bn_relu(channels, hidden, 1, **factory)
        for _ in range(num_dilated):
            spatial += _conv_bn_relu(hidden, hidden, 3, dilation, **factory)
        spatial.append(nn.Conv2d(hidden, 1, 1, **factory))
        self.spatial_convs = nn.Sequential(*spatial)

    def logits(self, x: Tensor) -> Tensor:
        """Mc(F) + Ms(F) (or their product) before the sigmoid, broadcast to (N, C, H, W)."""
        n, c = x.shape[0], x.shape[1]
        mc = self.channel_mlp(x.mean(dim=(2, 3))).view(n, c, 1, 1)
        ms = self.spatial_convs(x)  # (N, 1, H, W)
        if self.combine == "product":
            return mc * ms
        return mc + ms

    def attention_map(self, x: Tensor) -> Tensor:
        """M(F) = sigmoid(Mc(F) + Ms(F)), (N, C, H, W), in the input's dtype."""
        return torch.sigmoid(self.logits(x)).to(x.dtype)

    def forward(self, x: Tensor) -> Tensor:
        return x * (1 + self.attention_map(x))

    def extra_repr(self) -> str:
        return f"combine={self.combine}"
