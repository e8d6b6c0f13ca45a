"""The classifier each network declares, replaced for every family the README lists (built on the meta device,
so full-size networks cost nothing)."""

import pytest
import torch
import torchvision
from torch import nn

import cbam
from cbam.errors import ConfigError
from cbam.networks.classifier import TORCHVISION_CLASSIFIERS, classes_in_state, classifier_name, replace_classifier

# the README's families: torchvision's (one network each) and timm's ResNet and EfficientNet/MobileNetV3
TORCHVISION = {
    "resnet18": "fc",
    "resnext50_32x4d": "fc",
    "wide_resnet50_2": "fc",
    "mobilenet_v2": "classifier.1",
    "mobilenet_v3_small": "classifier.3",
    "regnet_y_400mf": "fc",
    "efficientnet_b0": "classifier.1",
    "efficientnet_v2_s": "classifier.1",
    "convnext_tiny": "classifier.2",
    "vgg11": "classifier.6",
    "densenet121": "classifier",
}
OTHER_TORCHVISION = {  # the rest of the declared table
    "alexnet": "classifier.6",
    "googlenet": "fc",
    "inception_v3": "fc",
    "mnasnet0_5": "classifier.1",
    "maxvit_t": "classifier.5",
    "shufflenet_v2_x0_5": "fc",
    "swin_t": "head",
    "vit_b_16": "heads.head",
}
TIMM = {"resnet18": "fc", "efficientnet_b0": "classifier", "mobilenetv3_small_100": "classifier"}


def torchvision_network(name: str) -> nn.Module:
    """`name` on the meta device, or on the CPU for RegNet, whose init reads a tensor's value."""
    with torch.device("cpu" if name.startswith("regnet") else "meta"):
        return torchvision.models.get_model(name)


def assert_replaced(model: nn.Module, expected: str) -> None:
    assert classifier_name(model) == expected
    old = model.get_submodule(expected)
    replace_classifier(model, 7)
    new = model.get_submodule(expected)
    assert new is not old and (new.in_features, new.out_features) == (old.in_features, 7)
    model.eval()
    with torch.no_grad():
        assert model(torch.zeros(1, 3, 224, 224, device=new.weight.device)).shape == (1, 7)
    assert replace_classifier(model, 7).get_submodule(expected) is new  # the same count keeps it


@pytest.mark.parametrize(("name", "expected"), {**TORCHVISION, **OTHER_TORCHVISION}.items())
def test_a_torchvision_family_declares_its_classifier(name, expected):
    assert_replaced(torchvision_network(name), expected)


@pytest.mark.parametrize(("name", "expected"), TIMM.items())
def test_a_timm_family_declares_its_classifier(name, expected):
    timm = pytest.importorskip("timm")
    with torch.device("meta"):
        assert_replaced(timm.create_model(name, pretrained=False), expected)


@pytest.mark.parametrize("arch", ["resnet18_cbam", "mobilenet_v1_se", "resnext50_32x4d"])
def test_the_zoo_declares_its_classifier(arch):
    with torch.device("meta"):
        assert_replaced(cbam.create_model(arch), "fc")


def test_every_torchvision_declaration_is_checked():
    families = {type(torchvision_network(name)).__name__ for name in [*TORCHVISION, *OTHER_TORCHVISION]}
    assert families == set(TORCHVISION_CLASSIFIERS)


def test_a_network_that_declares_no_classifier_is_refused():
    with pytest.raises(ConfigError, match="Sequential declares no classifier that cbam can resize"):
        classifier_name(nn.Sequential(nn.Linear(2, 2)))
    with torch.device("meta"):
        squeezenet = torchvision.models.squeezenet1_0()
    with pytest.raises(ConfigError, match="SqueezeNet declares no classifier"):
        replace_classifier(squeezenet, 3)


def test_classes_are_read_off_the_declared_classifier():
    model = torchvision.models.mobilenet_v2(num_classes=5)
    assert classes_in_state(model, model.state_dict()) == 5
    assert classes_in_state(model, {"fc.weight": torch.zeros(9, 3)}) is None
