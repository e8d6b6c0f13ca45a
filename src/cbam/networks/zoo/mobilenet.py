"""MobileNet v1 (Howard et al.) with attention after every convolution (paper Table 5).

Block attention (SE, CBAM) follows every conv + BN + ReLU, the stem, each depthwise and each
pointwise included: 27 modules, the placement that reproduces all six Table 5 rows. Stage
attention (BAM) goes before each downsampling block after the first, at the 56, 28 and 14 px
stage ends, as in the ResNets.
"""

from __future__ import annotations

from typing import ClassVar

from torch import Tensor, nn

from cbam.errors import ConfigError
from cbam.layers.create import (
    AttentionFactory,
    AttentionSpec,
    attention_placement,
    block_site,
    create_attention_factory,
)
from cbam.networks.registry import register_model
from cbam.networks.zoo.common import attention_or_identity, check_stem, initialize_weights

STEM_WIDTH = 32
# (output channels, stride) of the 13 depthwise-separable blocks
BLOCKS: tuple[tuple[int, int], ...] = (
    (64, 1),
    (128, 2),
    (128, 1),
    (256, 2),
    (256, 1),
    (512, 2),
    (512, 1),
    (512, 1),
    (512, 1),
    (512, 1),
    (512, 1),
    (1024, 2),
    (1024, 1),
)


class ConvBNReLU(nn.Module):
    """Convolution, BatchNorm, ReLU, then the attention on the result."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int = 1,
        groups: int = 1,
        attention: AttentionFactory | None = None,
    ) -> None:
        super().__init__()
        padding = kernel_size // 2
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding, groups=groups, bias=False)
        self.bn = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.attention = attention_or_identity(attention, out_channels)

    def forward(self, x: Tensor) -> Tensor:
        return self.attention(self.relu(self.bn(self.conv(x))))


class DepthwiseSeparable(nn.Sequential):
    """A 3x3 depthwise ConvBNReLU then a 1x1 pointwise ConvBNReLU."""

    def __init__(
        self, in_channels: int, out_channels: int, stride: int, attention: AttentionFactory | None = None
    ) -> None:
        super().__init__(
            ConvBNReLU(in_channels, in_channels, 3, stride, groups=in_channels, attention=attention),
            ConvBNReLU(in_channels, out_channels, 1, attention=attention),
        )


class MobileNetV1(nn.Module):
    """MobileNet v1; `width_mult` (alpha) scales every width, rounded down (0.7 in Table 5)."""

    classifier_name: ClassVar[str] = "fc"  # the layer a new task replaces (cbam.networks.classifier)

    def __init__(
        self,
        *,
        attention: AttentionSpec = "none",
        num_classes: int = 1000,
        width_mult: float = 1.0,
        stem: str = "imagenet",
        in_channels: int = 3,
    ) -> None:
        super().__init__()
        check_stem(stem)
        if width_mult <= 0:
            raise ConfigError(f"width_mult must be positive, got {width_mult}")
        block_site(attention, ("output",), "MobileNetV1")  # attention follows every convolution: no other site
        factory = create_attention_factory(attention)
        placement = attention_placement(factory) if factory is not None else "block"
        block_attention = factory if placement == "block" else None

        channels = int(STEM_WIDTH * width_mult)
        layers: list[nn.Module] = [
            ConvBNReLU(in_channels, channels, 3, 2 if stem == "imagenet" else 1, attention=block_attention)
        ]
        downsamples_seen = 0
        for out_channels, stride in BLOCKS:
            if stride == 2:
                if downsamples_seen > 0 and placement == "stage" and factory is not None:
                    layers.append(factory(channels))
                downsamples_seen += 1
            out_channels = int(out_channels * width_mult)
            layers.append(DepthwiseSeparable(channels, out_channels, stride, block_attention))
            channels = out_channels
        self.features = nn.Sequential(*layers)
        self.num_features = channels
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(channels, num_classes)
        initialize_weights(self)

    def forward_features(self, x: Tensor) -> Tensor:
        return self.features(x)

    def forward_head(self, x: Tensor) -> Tensor:
        return self.fc(self.avgpool(x).flatten(1))

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))


@register_model
def mobilenet_v1(*, width_mult: float = 1.0, **kwargs) -> MobileNetV1:
    """MobileNet v1; Table 5: 4.23M / 0.569 GFLOPs plain, 5.07M / 0.576 with CBAM (alpha 1.0)."""
    return MobileNetV1(width_mult=width_mult, **kwargs)
