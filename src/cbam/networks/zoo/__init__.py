"""The zoo: networks composed from `cbam.layers`; importing this package registers every builder."""

from cbam.networks.zoo.mobilenet import MobileNetV1, mobilenet_v1
from cbam.networks.zoo.resnet import (
    BasicBlock,
    Bottleneck,
    ResNet,
    resnet18,
    resnet34,
    resnet50,
    resnet101,
    resnet152,
    resnext50_32x4d,
    resnext101_32x4d,
    wide_resnet18,
)

__all__ = [
    "BasicBlock",
    "Bottleneck",
    "MobileNetV1",
    "ResNet",
    "mobilenet_v1",
    "resnet18",
    "resnet34",
    "resnet50",
    "resnet101",
    "resnet152",
    "resnext50_32x4d",
    "resnext101_32x4d",
    "wide_resnet18",
]
