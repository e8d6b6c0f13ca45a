"""Coordinate Attention (Hou et al., CVPR 2021): channel attention factorised into one map along the height
and one along the width, so each keeps the position along the other axis."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from cbam.errors import ConfigError
from cbam.layers.maps import check_feature_map, divisible

VARIANTS: tuple[str, ...] = ("authors", "timm")


def coord_hidden_width(channels: int, reduction: float, variant: str) -> int:
    """The shared transform's width: the authors' max(8, C // r) with r = 32, or timm's `CoordAttn`
    make_divisible(C / r x 2/3, 8) with r = 16 (sized to SE's parameters)."""
    if variant == "authors":
        return max(8, int(channels // reduction))
    return divisible(channels / reduction * 2 / 3, 8)


class CoordinateAttention(nn.Module):
    """z^h = mean over the width and z^w = mean over the height (eq. 4-5), f = h_swish(BN(conv1x1([z^h; z^w])))
    (eq. 6), g^h = sigmoid(conv1x1_h(f^h)), g^w = sigmoid(conv1x1_w(f^w)) (eq. 7-8), out = F * g^h * g^w (eq. 9).

    `variant="authors"` is the authors' code (biased convolutions, width max(8, C // 32)); `"timm"` is timm's
    `CoordAttn` (unbiased, make_divisible(C / 16 x 2/3, 8)). `reduction` defaults to the variant's own.
    In an inverted residual it goes after the depthwise convolution, where its paper puts it in MobileNetV2.
    """

    preferred_site = "depthwise"

    def __init__(
        self,
        channels: int,
        reduction: float | None = None,
        variant: str = "authors",
        hidden_channels: int | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        if variant not in VARIANTS:
            raise ConfigError(f"Coordinate Attention's variant is one of {', '.join(VARIANTS)}, got {variant!r}")
        reduction = reduction if reduction is not None else (32 if variant == "authors" else 16)
        if reduction <= 0:
            raise ConfigError(f"reduction must be positive, got {reduction}")
        hidden = hidden_channels if hidden_channels is not None else coord_hidden_width(channels, reduction, variant)
        factory, bias = {"device": device, "dtype": dtype}, variant == "authors"
        self.variant = variant
        self.conv = nn.Conv2d(channels, hidden, 1, bias=bias, **factory)
        self.bn = nn.BatchNorm2d(hidden, **factory)
        self.act = nn.Hardswish()
        self.conv_h = nn.Conv2d(hidden, channels, 1, bias=bias, **factory)
        self.conv_w = nn.Conv2d(hidden, channels, 1, bias=bias, **factory)

    def attention_maps(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(g^h, g^w): (N, C, H, 1) and (N, C, 1, W)."""
        h, w = x.shape[2], x.shape[3]
        pooled = torch.cat([x.mean(dim=3, keepdim=True), x.mean(dim=2, keepdim=True).transpose(2, 3)], dim=2)
        f = self.act(self.bn(self.conv(pooled)))  # (N, hidden, H + W, 1)
        f_h, f_w = torch.split(f, [h, w], dim=2)
        return torch.sigmoid(self.conv_h(f_h)), torch.sigmoid(self.conv_w(f_w.transpose(2, 3)))

    def forward(self, x: Tensor) -> Tensor:
        if not torch.jit.is_scripting():
            check_feature_map(x, "Coordinate Attention")
        g_h, g_w = self.attention_maps(x)
        return x * g_w * g_h

    def extra_repr(self) -> str:
        return f"variant={self.variant}"
