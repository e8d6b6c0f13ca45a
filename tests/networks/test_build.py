"""`build_network`: one request for each kind of source (the zoo, torchvision, timm, the authors' file, a detection
backbone) through the one entry point, each computing what its source computes."""

import pytest
import torch
import torchvision

import cbam
from cbam.errors import CheckpointError
from cbam.networks import NetworkRequest, build_network
from cbam.networks.attach import attention_modules
from cbam.networks.counting import count_parameters
from tests.detection.test_rcnn import assert_backbone_equal, small_detector
from tests.networks.test_libraries import saved_weights, timm_resnet18
from tests.networks.test_pretrained import TheirBasicBlock, TheirResNet, authors_checkpoint, randomize_

X = torch.randn(2, 3, 64, 64)


def outputs(model: torch.nn.Module) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(X)


def test_a_zoo_request_builds_its_options_and_attention():
    model = build_network(NetworkRequest("resnet18", "cbam", {"stem": "cifar", "width_mult": 0.25}), 10)
    assert count_parameters(model) == count_parameters(cbam.create_model("resnet18_cbam", num_classes=10,
                                                                         stem="cifar", width_mult=0.25))  # fmt: skip
    assert model.conv1.kernel_size == (3, 3) and model.conv1.out_channels == 16 and model.fc.out_features == 10
    assert sum(isinstance(m, cbam.CBAM) for m in model.modules()) == 8


@pytest.mark.parametrize("source", ["torchvision", "timm"])
def test_a_library_request_with_a_file_computes_what_the_library_network_does(tmp_path, source):
    network = torchvision.models.resnet18() if source == "torchvision" else timm_resnet18()
    path, theirs = saved_weights(tmp_path, network, f"{source}.pth")
    ours = build_network(NetworkRequest(f"{source}:resnet18", "cbam", weights=str(path)), 1000)
    assert sum(isinstance(m, cbam.ChannelAttention) for _, m in attention_modules(ours)) == 8  # one per block
    torch.testing.assert_close(outputs(ours), outputs(theirs), rtol=0, atol=0)
    resized = build_network(NetworkRequest(f"{source}:resnet18", weights=str(path)), 7)
    assert resized.fc.out_features == 7 and outputs(resized).shape == (2, 7)


def test_an_authors_file_builds_the_zoo_network_computing_what_theirs_did(tmp_path):
    theirs = randomize_(TheirResNet(TheirBasicBlock, (2, 2, 2, 2), "cbam", num_classes=10)).eval()
    path = authors_checkpoint(theirs, tmp_path / "model_best.pth.tar")
    ours = build_network(NetworkRequest("resnet18", "cbam", weights=str(path)), 10)
    torch.testing.assert_close(outputs(ours), outputs(theirs), rtol=1e-4, atol=1e-5)
    with pytest.raises(CheckpointError, match="holds weights of a resnet18, not of the resnet34 asked for"):
        build_network(NetworkRequest("resnet34", "cbam", weights=str(path)), 10)


def test_a_backbone_request_neither_loads_nor_needs_a_classifier(tmp_path):
    trained = cbam.create_model("resnet18", num_classes=5)
    state = {k: v for k, v in trained.state_dict().items() if not k.startswith("fc.")}
    torch.save(state, tmp_path / "trunk.pth")
    backbone = build_network(NetworkRequest("resnet18", weights=str(tmp_path / "trunk.pth")), None, role="backbone ")
    for key, value in state.items():
        torch.testing.assert_close(backbone.state_dict()[key], value, rtol=0, atol=0)
    with pytest.raises(CheckpointError, match=r"trunk\.pth does not fit resnet18: 2 missing: fc.weight, fc.bias"):
        build_network(NetworkRequest("resnet18", weights=str(tmp_path / "trunk.pth")), 5)


def test_a_detector_backbone_is_the_network_its_request_builds(tmp_path):
    options = {"stem": "cifar", "width_mult": 0.25}
    trained = randomize_(cbam.create_model("resnet18", attention="cbam", num_classes=3, **options))
    torch.save(trained.state_dict(), tmp_path / "backbone.pth")
    detector = small_detector("c4", "cbam", backbone_weights=tmp_path / "backbone.pth", backbone_kwargs=options)
    assert_backbone_equal(detector, trained.state_dict())  # every weight but the classifier, attention included


def test_attention_that_contradicts_the_name_is_refused():
    with pytest.raises(ValueError, match="'resnet18_se' fixes attention='se'; got attention='cbam'"):
        build_network(NetworkRequest("resnet18_se", "cbam"))


def test_without_weights_keeps_how_attention_started():
    request = NetworkRequest("resnet18", "cbam", weights="trained.pt")
    assert request.start == "identity"
    assert request.without_weights() == NetworkRequest("resnet18", "cbam", attach_init="identity")
    assert NetworkRequest("resnet18", "cbam").start == "paper"
    with pytest.raises(ValueError, match="attach_init must be one of auto, identity, paper"):
        _ = NetworkRequest("resnet18", attach_init="zero").start
