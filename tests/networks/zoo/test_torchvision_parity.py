"""Our plain networks are torchvision's: same state-dict layout, same outputs with the same weights."""

import functools

import pytest
import torch
import torchvision
from torchvision.models.resnet import Bottleneck, ResNet

import cbam

PAIRS = [
    ("resnet18", torchvision.models.resnet18, {}),
    ("resnet34", torchvision.models.resnet34, {}),
    ("resnet50", torchvision.models.resnet50, {}),
    ("resnet101", torchvision.models.resnet101, {}),
    ("resnet152", torchvision.models.resnet152, {}),
    ("resnext50_32x4d", torchvision.models.resnext50_32x4d, {}),
    ("resnext101_32x4d", functools.partial(ResNet, Bottleneck, [3, 4, 23, 3], groups=32, width_per_group=4), {}),
]


@pytest.mark.parametrize(("name", "reference", "kwargs"), PAIRS)
def test_plain_network_loads_torchvision_weights_and_computes_the_same(name, reference, kwargs):
    theirs = reference(**kwargs).eval()
    ours = cbam.create_model(name).eval()
    ours.load_state_dict(theirs.state_dict(), strict=True)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), theirs(x))
