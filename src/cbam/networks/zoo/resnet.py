"""ResNet, Wide ResNet and ResNeXt with attention on every residual branch (paper Fig. 3).

Blocks, then the network, then the registered builders. Attention comes in as a spec
(`cbam.layers.create`); block attention (CBAM, SE) sits on the residual branch's output
before the skip addition, or, at the site `"conv"` (SimAM's), right after the branch's conv2,
before bn2; stage attention (BAM) after layer1, layer2 and layer3. Names follow torchvision's
ResNet, so its state dicts load where the shapes agree.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

import torch
from torch import Tensor, nn

from cbam.errors import ConfigError
from cbam.layers.create import (
    RESNET_STAGES,
    AttentionFactory,
    AttentionSpec,
    attention_placement,
    block_site,
    create_attention_factory,
    resnet_stages,
    site_in,
)
from cbam.layers.fused import residual_tail
from cbam.networks.registry import register_model
from cbam.networks.zoo.common import attention_or_identity, check_stem, initialize_weights

STAGE_WIDTHS: tuple[int, int, int, int] = (64, 128, 256, 512)


def conv3x3(in_channels: int, out_channels: int, stride: int = 1, groups: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, groups=groups, bias=False)


def conv1x1(in_channels: int, out_channels: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False)


def _add_relu(out: Tensor, identity: Tensor) -> Tensor:
    """relu(out + identity); without autograd the add is in place, as torchvision's blocks do (no new map)."""
    if torch.is_grad_enabled():  # an attention layer may have saved its output for backward
        return torch.relu_(out + identity)
    return torch.relu_(out.add_(identity))


RESIDUAL_SITES: tuple[str, ...] = ("output", "conv")
"""The sites (`cbam.layers.create.SITES`) a residual block has."""


class BasicBlock(nn.Module):
    """Two 3x3 convs; attention on their output (or after conv2, before bn2, at `site="conv"`), then the skip
    addition (ResNet18/34)."""

    expansion = 1

    def __init__(
        self,
        in_channels: int,
        planes: int,
        stride: int = 1,
        downsample: nn.Module | None = None,
        groups: int = 1,
        width_per_group: int = 64,
        attention: AttentionFactory | None = None,
        stride_in_1x1: bool = False,
        site: str = "output",
    ) -> None:
        super().__init__()
        if groups != 1 or width_per_group != 64:
            raise ConfigError("BasicBlock supports only groups=1 and width_per_group=64 (use a bottleneck network)")
        self.conv1 = conv3x3(in_channels, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.attention = attention_or_identity(attention, planes)
        self.site = site_in(site, RESIDUAL_SITES, "a ResNet")
        self.downsample = downsample

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        if self.site == "conv":
            return _add_relu(self.bn2(self.attention(self.conv2(out))), identity)
        out = self.bn2(self.conv2(out))
        if not torch.jit.is_scripting():
            fused = residual_tail(self.attention, out, identity, overwrite_input=True)
            if fused is not None:
                return fused
        return _add_relu(self.attention(out), identity)


class Bottleneck(nn.Module):
    """1x1 -> 3x3 (grouped for ResNeXt) -> 1x1; attention on the output (or after the 3x3, before bn2, at
    `site="conv"`), then the skip.

    `stride_in_1x1` moves the stride from the 3x3 (torchvision and the authors' code) to the
    first 1x1 (the original Caffe ResNet, the layout the paper's GFLOPs were counted with).
    """

    expansion = 4

    def __init__(
        self,
        in_channels: int,
        planes: int,
        stride: int = 1,
        downsample: nn.Module | None = None,
        groups: int = 1,
        width_per_group: int = 64,
        attention: AttentionFactory | None = None,
        stride_in_1x1: bool = False,
        site: str = "output",
    ) -> None:
        super().__init__()
        width = int(planes * width_per_group / 64) * groups
        out_channels = planes * self.expansion
        self.conv1 = conv1x1(in_channels, width, stride if stride_in_1x1 else 1)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = conv3x3(width, width, 1 if stride_in_1x1 else stride, groups)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = conv1x1(width, out_channels)
        self.bn3 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.site = site_in(site, RESIDUAL_SITES, "a ResNet")
        self.attention = attention_or_identity(attention, width if self.site == "conv" else out_channels)
        self.downsample = downsample

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        if self.site == "conv":
            out = self.relu(self.bn2(self.attention(self.conv2(out))))
            return _add_relu(self.bn3(self.conv3(out)), identity)
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        if not torch.jit.is_scripting():
            fused = residual_tail(self.attention, out, identity, overwrite_input=True)
            if fused is not None:
                return fused
        return _add_relu(self.attention(out), identity)


Block = type[BasicBlock] | type[Bottleneck]


class ResNet(nn.Module):
    """A residual network whose blocks take their attention as an argument.

    `widths` are the four stages' base widths (Wide ResNet multiplies them), `width_mult` scales
    them and the stem's, rounded down (a narrow network for small data), `groups` and
    `width_per_group` make ResNeXt, `stem="cifar"` swaps the 7x7/2 conv and max-pool for a
    3x3/1 conv for 32-64 px images. `attention_stages` names the stages (1 to 4) whose blocks get block
    attention; by default the attention's own (`cbam.layers.create.resnet_stages`): every one, as CBAM and SE
    place it, and c3-c5 (2, 3, 4) for GCNet's Global Context.
    """

    classifier_name: ClassVar[str] = "fc"  # the layer a new task replaces (cbam.networks.classifier)

    def __init__(
        self,
        block: Block,
        layers: Sequence[int],
        *,
        attention: AttentionSpec = "none",
        num_classes: int = 1000,
        widths: Sequence[int] = STAGE_WIDTHS,
        stem_width: int = 64,
        width_mult: float = 1.0,
        groups: int = 1,
        width_per_group: int = 64,
        stride_in_1x1: bool = False,
        stem: str = "imagenet",
        in_channels: int = 3,
        attention_stages: int | Sequence[int] | None = None,
    ) -> None:
        super().__init__()
        check_stem(stem)
        factory = create_attention_factory(attention)
        if attention_stages is None:
            attention_stages = resnet_stages(factory) if factory is not None else RESNET_STAGES
        if isinstance(attention_stages, int):  # one stage, as `--model-arg attention_stages=4` gives it
            attention_stages = (attention_stages,)
        if not set(attention_stages) <= {1, 2, 3, 4}:
            raise ConfigError(f"attention_stages are ResNet's stages 1 to 4, got {list(attention_stages)}")
        if len(layers) != 4 or len(widths) != 4:
            raise ConfigError(f"ResNet takes four stages; got layers={list(layers)}, widths={list(widths)}")
        if not width_mult > 0 or min(int(w * width_mult) for w in (*widths, stem_width)) < 1:
            raise ConfigError(f"width_mult must leave every width at least 1 channel, got {width_mult}")
        widths = [int(w * width_mult) for w in widths]
        stem_width = int(stem_width * width_mult)
        placement = attention_placement(factory) if factory is not None else "block"
        block_attention = factory if placement == "block" else None
        stage_attention = factory if placement == "stage" else None
        site = block_site(attention, RESIDUAL_SITES, "a ResNet") if block_attention is not None else "output"

        if stem == "imagenet":
            self.conv1 = nn.Conv2d(in_channels, stem_width, 7, stride=2, padding=3, bias=False)
            self.maxpool: nn.Module = nn.MaxPool2d(3, stride=2, padding=1)
        else:
            self.conv1 = nn.Conv2d(in_channels, stem_width, 3, stride=1, padding=1, bias=False)
            self.maxpool = nn.Identity()
        self.bn1 = nn.BatchNorm2d(stem_width)
        self.relu = nn.ReLU(inplace=True)

        channels = stem_width
        stages: list[nn.Sequential] = []
        for index, (depth, planes) in enumerate(zip(layers, widths, strict=True)):
            stride = 1 if index == 0 else 2
            blocks = []
            for i in range(depth):
                downsample = None
                if i == 0 and (stride != 1 or channels != planes * block.expansion):
                    downsample = nn.Sequential(
                        conv1x1(channels, planes * block.expansion, stride),
                        nn.BatchNorm2d(planes * block.expansion),
                    )
                blocks.append(
                    block(
                        channels,
                        planes,
                        stride if i == 0 else 1,
                        downsample,
                        groups,
                        width_per_group,
                        block_attention if index + 1 in attention_stages else None,
                        stride_in_1x1,
                        site,
                    )
                )
                channels = planes * block.expansion
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        stage_channels = [w * block.expansion for w in widths[:3]]
        self.stage_attention = nn.ModuleList(attention_or_identity(stage_attention, c) for c in stage_channels)
        self.num_features = channels
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(channels, num_classes)
        initialize_weights(self)

    def forward_features(self, x: Tensor) -> Tensor:
        """The last stage's feature map, (N, num_features, H/32, W/32) with the ImageNet stem."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.stage_attention[0](self.layer1(x))
        x = self.stage_attention[1](self.layer2(x))
        x = self.stage_attention[2](self.layer3(x))
        return self.layer4(x)

    def forward_head(self, x: Tensor) -> Tensor:
        return self.fc(self.avgpool(x).flatten(1))

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))


@register_model
def resnet18(**kwargs) -> ResNet:
    """ResNet-18 (He et al.); Table 4: 11.69M plain, 11.78M with SE or CBAM."""
    return ResNet(BasicBlock, (2, 2, 2, 2), **kwargs)


@register_model
def resnet34(**kwargs) -> ResNet:
    """ResNet-34; Table 4: 21.80M plain, 21.96M with SE or CBAM."""
    return ResNet(BasicBlock, (3, 4, 6, 3), **kwargs)


@register_model
def resnet50(**kwargs) -> ResNet:
    """ResNet-50; Table 4: 25.56M / 3.858 GFLOPs plain, 28.09M / 3.864 with CBAM."""
    return ResNet(Bottleneck, (3, 4, 6, 3), **kwargs)


@register_model
def resnet101(**kwargs) -> ResNet:
    """ResNet-101; Table 4: 44.55M / 7.570 GFLOPs plain, 49.33M / 7.581 with CBAM."""
    return ResNet(Bottleneck, (3, 4, 23, 3), **kwargs)


@register_model
def resnet152(**kwargs) -> ResNet:
    """ResNet-152 (not in the paper's tables; here for completeness)."""
    return ResNet(Bottleneck, (3, 8, 36, 3), **kwargs)


@register_model
def wide_resnet18(*, widen_factor: float = 2.0, **kwargs) -> ResNet:
    """Wide ResNet-18: stage widths times `widen_factor` (1.5 or 2.0 in Table 4), stem kept at 64."""
    if widen_factor <= 0:
        raise ConfigError(f"widen_factor must be positive, got {widen_factor}")
    widths = tuple(int(w * widen_factor) for w in STAGE_WIDTHS)
    return ResNet(BasicBlock, (2, 2, 2, 2), widths=widths, **kwargs)


@register_model
def resnext50_32x4d(**kwargs) -> ResNet:
    """ResNeXt-50 (32x4d); Table 4: 25.03M / 3.768 GFLOPs plain."""
    return ResNet(Bottleneck, (3, 4, 6, 3), groups=32, width_per_group=4, **kwargs)


@register_model
def resnext101_32x4d(**kwargs) -> ResNet:
    """ResNeXt-101 (32x4d); Table 4: 44.18M / 7.508 GFLOPs plain."""
    return ResNet(Bottleneck, (3, 4, 23, 3), groups=32, width_per_group=4, **kwargs)
