"""Grad-CAM through cbam.grad_cam: the package's numbers, the right place, the model untouched."""

from __future__ import annotations

import copy

import pytest
import torch
import torchvision
from pytorch_grad_cam import GradCAM, GradCAMPlusPlus
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from torch import nn

import cbam
from cbam.explain import default_cam_layer, grad_cam
from tests.conftest import randomize_
from tests.layers.rounding import FACTOR, SAMPLES, jitter


def small_cbam_net() -> nn.Module:
    return randomize_(cbam.create_model("resnet18_cbam", num_classes=4)).eval()


@pytest.mark.parametrize(("method", "reference"), [("gradcam", GradCAM), ("gradcam++", GradCAMPlusPlus)])
def test_equals_pytorch_grad_cam_on_the_same_model_layer_and_class(method: str, reference: type) -> None:
    model = small_cbam_net()
    images = torch.randn(3, 3, 64, 64)
    classes = [2, 0, 3]
    cams, _ = grad_cam(model, images, targets=classes, layer="layer3", method=method)
    with reference(model=model, target_layers=[model.layer3]) as cam:
        expected = cam(input_tensor=images, targets=[ClassifierOutputTarget(c) for c in classes])
    torch.testing.assert_close(cams, torch.from_numpy(expected))
    assert cams.shape == (3, 64, 64) and cams.min() >= 0 and cams.max() <= 1


def test_the_map_peaks_where_the_evidence_is() -> None:
    """One feature channel that sees brightness; class 1 is 'bright': the CAM must peak on the bright quadrant."""
    model = nn.Sequential(nn.Conv2d(1, 1, 1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(1, 2))
    with torch.no_grad():
        model[0].weight.fill_(1.0)
        model[0].bias.zero_()
        model[4].weight.copy_(torch.tensor([[-1.0], [1.0]]))
        model[4].bias.zero_()
    image = torch.zeros(1, 1, 32, 32)
    image[:, :, 20:28, 4:12] = 1.0  # lower-left quadrant
    cams, probs = grad_cam(model, image, targets=[1], layer=model[1])
    row, col = divmod(int(cams[0].argmax()), 32)
    assert 20 <= row < 28 and 4 <= col < 12
    assert probs[0] == pytest.approx(torch.softmax(model(image), 1)[0, 1].item())


def test_default_class_is_the_prediction_and_probs_are_its_softmax() -> None:
    model = small_cbam_net()
    images = torch.randn(2, 3, 64, 64)
    logits = model(images)
    cams, probs = grad_cam(model, images)
    explicit, _ = grad_cam(model, images, targets=logits.argmax(1))
    torch.testing.assert_close(cams, explicit)
    torch.testing.assert_close(probs, logits.softmax(1).max(1).values.detach())


def test_the_model_is_left_exactly_as_it_was() -> None:
    model = small_cbam_net().train()
    before = copy.deepcopy(model.state_dict())
    grad_cam(model, torch.randn(2, 3, 64, 64), targets=[0, 1])
    assert model.training and all(m.training for m in model.modules())
    for name, value in model.state_dict().items():
        assert torch.equal(value, before[name]), f"{name} changed"
    assert all(p.grad is None for p in model.parameters())


def test_default_layer_is_the_last_block_after_its_attention() -> None:
    ours = cbam.create_model("resnet50_cbam", num_classes=3)
    assert default_cam_layer(ours) is ours.layer4[-1]
    theirs = cbam.attach(torchvision.models.resnet18(num_classes=3), "cbam")
    assert default_cam_layer(theirs) is theirs.layer4[-1]
    mobile = torchvision.models.mobilenet_v2(num_classes=3)
    assert default_cam_layer(mobile) is mobile.features[-1]


def test_fused_and_eager_attention_give_the_same_map() -> None:
    """Within what rounding alone moves eager's own maps: pytorch-grad-cam computes in float32 (so there is no
    float64 reference), and the bound is FACTOR times the largest change of eager's maps when each input element
    moves by up to one unit in the last place."""
    model = small_cbam_net()
    eager = cbam.layers.fused.set_attention_impl(copy.deepcopy(model), "eager")
    images = torch.randn(2, 3, 64, 64)
    fused_cams, fused_probs = grad_cam(cbam.layers.fused.set_attention_impl(model, "compiled"), images, [1, 2])
    eager_cams, eager_probs = grad_cam(eager, images, [1, 2])
    generator = torch.Generator().manual_seed(0)
    moved = [grad_cam(eager, jitter(images, generator), [1, 2]) for _ in range(SAMPLES)]
    eps = torch.finfo(torch.float32).eps
    for fused, ours, name in ((fused_cams, eager_cams, 0), (fused_probs, eager_probs, 1)):
        spread = max((m[name] - ours).abs().max().item() for m in moved)
        allowed = FACTOR * spread + eps * ours.abs().max().item()
        assert (fused - ours).abs().max().item() <= allowed, ("cams", "probs")[name]


def test_bad_arguments_get_one_clear_message() -> None:
    model = small_cbam_net()
    images = torch.randn(1, 3, 64, 64)
    with pytest.raises(ValueError, match=r"unknown CAM method 'gradcam\+\+\+'"):
        grad_cam(model, images, method="gradcam+++")
    with pytest.raises(ValueError, match="unknown layer 'layer5'"):
        grad_cam(model, images, layer="layer5")
    with pytest.raises(ValueError, match="class indices"):
        grad_cam(model, images, targets=[9])
    with pytest.raises(ValueError, match="1 images"):
        grad_cam(model, images, targets=[0, 1])
