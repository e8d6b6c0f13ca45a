"""The authors' checkpoints (Jongchan/attention-module): a network in their exact key layout,
written as their `train_imagenet.py` writes it, converted, must compute the same outputs."""

import logging
import pickle
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import nn

import cbam
from cbam.cli import main
from cbam.errors import CheckpointError
from cbam.networks.authors import convert_authors_state
from cbam.networks.pretrained import convert_file, load_pretrained
from cbam.networks.weights import shown_names
from cbam.networks.zoo.resnet import ResNet


def randomize_(network: nn.Module) -> nn.Module:
    """Random but tame weights: every BatchNorm statistic and attention weight away from its init value."""
    with torch.no_grad():
        for module in network.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.weight.uniform_(0.5, 1.5)
                module.bias.normal_(0, 0.2)
                module.running_mean.normal_(0, 0.2)
                module.running_var.uniform_(0.5, 2.0)
            elif isinstance(module, nn.Linear):
                module.weight.normal_(0, 0.1)
                module.bias.normal_(0, 0.1)
            elif isinstance(module, nn.Conv2d) and module.bias is not None:
                module.bias.normal_(0, 0.1)
    return network


class ChannelGate(nn.Module):  # their names: mlp = Flatten, Linear, ReLU, Linear
    def __init__(self, c):
        super().__init__()
        self.mlp = nn.Sequential(nn.Flatten(), nn.Linear(c, c // 16), nn.ReLU(), nn.Linear(c // 16, c))

    def forward(self, x):
        att = self.mlp(F.adaptive_avg_pool2d(x, 1)) + self.mlp(F.adaptive_max_pool2d(x, 1))
        return x * torch.sigmoid(att)[:, :, None, None]


class BasicConv(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(2, 1, 7, padding=3, bias=False)
        self.bn = nn.BatchNorm2d(1, eps=1e-5, momentum=0.01)


class SpatialGate(nn.Module):  # their descriptor: channel max first, then mean
    def __init__(self):
        super().__init__()
        self.spatial = BasicConv()

    def forward(self, x):
        d = torch.cat([x.amax(1, keepdim=True), x.mean(1, keepdim=True)], 1)
        return x * torch.sigmoid(self.spatial.bn(self.spatial.conv(d)))


class TheirCBAM(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.ChannelGate = ChannelGate(c)
        self.SpatialGate = SpatialGate()

    def forward(self, x):
        return self.SpatialGate(self.ChannelGate(x))


class TheirBasicBlock(nn.Module):
    def __init__(self, cin, c, stride, downsample):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, c, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c)
        self.conv2 = nn.Conv2d(c, c, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c)
        self.downsample = downsample
        self.cbam = TheirCBAM(c)

    def forward(self, x):
        skip = x if self.downsample is None else self.downsample(x)
        out = self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x)))))
        return torch.relu(self.cbam(out) + skip)


class TheirBottleneck(nn.Module):
    def __init__(self, cin, c, stride, downsample):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, c, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c)
        self.conv2 = nn.Conv2d(c, c, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c)
        self.conv3 = nn.Conv2d(c, 4 * c, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(4 * c)
        self.downsample = downsample

    def forward(self, x):
        skip = x if self.downsample is None else self.downsample(x)
        out = torch.relu(self.bn1(self.conv1(x)))
        out = torch.relu(self.bn2(self.conv2(out)))
        return torch.relu(self.bn3(self.conv3(out)) + skip)


class TheirBAM(nn.Module):  # channel_att.gate_c.*, spatial_att.gate_s.*, maps multiplied
    def __init__(self, c):
        super().__init__()
        h = c // 16
        self.channel_att = nn.Module()
        self.channel_att.gate_c = nn.Sequential()
        for name, layer in [("flatten", nn.Flatten()), ("gate_c_fc_0", nn.Linear(c, h)),
                            ("gate_c_bn_1", nn.BatchNorm1d(h)), ("gate_c_relu_1", nn.ReLU()),
                            ("gate_c_fc_final", nn.Linear(h, c))]:  # fmt: skip
            self.channel_att.gate_c.add_module(name, layer)
        self.spatial_att = nn.Module()
        self.spatial_att.gate_s = nn.Sequential()
        self.spatial_att.gate_s.add_module("gate_s_conv_reduce0", nn.Conv2d(c, h, 1))
        self.spatial_att.gate_s.add_module("gate_s_bn_reduce0", nn.BatchNorm2d(h))
        self.spatial_att.gate_s.add_module("gate_s_relu_reduce0", nn.ReLU())
        for i in range(2):
            self.spatial_att.gate_s.add_module(f"gate_s_conv_di_{i}", nn.Conv2d(h, h, 3, padding=4, dilation=4))
            self.spatial_att.gate_s.add_module(f"gate_s_bn_di_{i}", nn.BatchNorm2d(h))
            self.spatial_att.gate_s.add_module(f"gate_s_relu_di_{i}", nn.ReLU())
        self.spatial_att.gate_s.add_module("gate_s_conv_final", nn.Conv2d(h, 1, 1))

    def forward(self, x):
        mc = self.channel_att.gate_c(F.avg_pool2d(x, x.shape[2], stride=x.shape[2]))[:, :, None, None]
        ms = self.spatial_att.gate_s(x)
        return x * (1 + torch.sigmoid(mc * ms))


class TheirResNet(nn.Module):
    def __init__(self, block, layers, attention, num_classes=1000):
        super().__init__()
        expansion = 4 if block is TheirBottleneck else 1
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        cin = 64
        for i, (n, c) in enumerate(zip(layers, (64, 128, 256, 512), strict=True)):
            blocks = []
            for j in range(n):
                stride = 2 if i > 0 and j == 0 else 1
                down = None
                if j == 0 and (stride != 1 or cin != c * expansion):
                    down = nn.Sequential(
                        nn.Conv2d(cin, c * expansion, 1, stride, bias=False), nn.BatchNorm2d(c * expansion)
                    )
                blocks.append(block(cin, c, stride, down))
                cin = c * expansion
            setattr(self, f"layer{i + 1}", nn.Sequential(*blocks))
            if attention == "bam" and i < 3:
                setattr(self, f"bam{i + 1}", TheirBAM(cin))
        self.fc = nn.Linear(cin, num_classes)
        self.attention = attention

    def forward(self, x):
        x = self.maxpool(torch.relu(self.bn1(self.conv1(x))))
        for i in range(1, 5):
            x = getattr(self, f"layer{i}")(x)
            if self.attention == "bam" and i < 4:
                x = getattr(self, f"bam{i}")(x)
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))


def authors_checkpoint(network: nn.Module, path):
    """Saved the way their train_imagenet.py saves: DataParallel keys, epoch, arch, best_prec1, optimizer."""
    state = {f"module.{k}": v for k, v in network.state_dict().items()}
    optimizer = torch.optim.SGD(network.parameters(), lr=0.1, momentum=0.9).state_dict()
    torch.save({"epoch": 90, "arch": "resnet", "state_dict": state, "best_prec1": torch.tensor(77.3),
                "optimizer": optimizer}, path)  # fmt: skip
    return path


@pytest.mark.parametrize(
    ("block", "layers", "attention", "arch"),
    [(TheirBasicBlock, (2, 2, 2, 2), "cbam", "resnet18"), (TheirBottleneck, (3, 4, 6, 3), "bam", "resnet50")],
)
def test_authors_checkpoint_converts_to_a_zoo_network_with_equal_outputs(tmp_path, block, layers, attention, arch):
    theirs = randomize_(TheirResNet(block, layers, attention, num_classes=10)).eval()
    path = authors_checkpoint(theirs, tmp_path / "model_best.pth.tar")
    ours = load_pretrained(path).eval()
    assert type(ours) is ResNet
    assert sum(isinstance(m, cbam.CBAM) for m in ours.modules()) == (8 if attention == "cbam" else 0)
    assert sum(isinstance(m, cbam.BAM) for m in ours.modules()) == (3 if attention == "bam" else 0)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), theirs(x), rtol=1e-4, atol=1e-5)
    network = convert_authors_state(torch.load(path, weights_only=True))
    assert (network.arch, network.num_classes) == (arch, 10)


def test_convert_writes_safetensors_that_load_and_evaluate_the_same(tmp_path, capsys):
    theirs = randomize_(TheirResNet(TheirBasicBlock, (2, 2, 2, 2), "cbam", num_classes=7)).eval()
    source = authors_checkpoint(theirs, tmp_path / "checkpoint.pth.tar")
    assert main(["convert", str(source), str(tmp_path / "r18.safetensors")]) == 0
    assert "resnet18" in capsys.readouterr().out
    ours = load_pretrained(tmp_path / "r18.safetensors").eval()
    x = torch.randn(1, 3, 48, 48)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), theirs(x), rtol=1e-4, atol=1e-5)


def test_torchvision_weights_load_into_a_zoo_network_with_new_attention(tmp_path, cbam_log, capsys):
    import torchvision

    reference = torchvision.models.resnet18(num_classes=10)
    torch.save(reference.state_dict(), tmp_path / "resnet18.pth")
    model = load_pretrained(tmp_path / "resnet18.pth", "resnet18", attention="cbam")
    report = model.cbam_load_report
    assert report.missing == report.unexpected == report.mismatched == ()
    assert report.new_attention and all(".attention." in k for k in report.new_attention)  # the CBAM weights
    assert model.fc.out_features == 10
    assert torch.equal(model.layer3[1].conv2.weight, reference.layer3[1].conv2.weight)
    infos = [r.getMessage() for r in cbam_log.records if r.levelno == logging.INFO]
    assert any("72 new attention weights of resnet18 (attention=cbam)" in m for m in infos)
    assert not [r for r in cbam_log.records if r.levelno >= logging.WARNING]
    assert capsys.readouterr() == ("", "")  # logged, never printed


def test_weights_of_another_network_are_refused_unless_strict_is_false(tmp_path, cbam_log):
    import torchvision

    state = torchvision.models.resnet50().state_dict()
    torch.save(state, tmp_path / "torchvision_resnet50.pth")
    with pytest.raises(CheckpointError) as err:
        load_pretrained(tmp_path / "torchvision_resnet50.pth", "resnet18", attention="cbam")
    message = str(err.value)
    assert "torchvision_resnet50.pth does not fit resnet18 (attention=cbam)" in message
    assert "165 unexpected: layer1.0.conv3.weight, layer1.0.bn3.weight" in message  # BatchNorm counters aside
    assert "24 shape mismatch (file vs network): layer1.0.conv1.weight (64, 64, 1, 1) vs (64, 64, 3, 3)" in message
    assert "missing" not in message  # resnet18's names are all in resnet50; its CBAM weights are new
    assert "strict=False" in message

    model = load_pretrained(tmp_path / "torchvision_resnet50.pth", "resnet18", attention="cbam", strict=False)
    assert torch.equal(model.conv1.weight, state["conv1.weight"])  # the stem fits; the rest keeps its init
    warnings = [r.getMessage() for r in cbam_log.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "165 unexpected" in warnings[0] and "left out" in warnings[0]
    assert len(model.cbam_load_report.unexpected) == 165


def test_a_file_with_some_attention_weights_must_have_all(tmp_path):
    state = cbam.create_model("resnet18", attention="cbam").state_dict()
    partial = {k: v for k, v in state.items() if not k.startswith("layer4.1.attention.")}
    torch.save(partial, tmp_path / "partial.pth")
    with pytest.raises(CheckpointError, match=r"disagree about attention.*missing: layer4\.1\.attention"):
        load_pretrained(tmp_path / "partial.pth", "resnet18", attention="cbam")
    with pytest.raises(CheckpointError, match=r"disagree about attention.*unexpected: layer1\.0\.attention"):
        load_pretrained(tmp_path / "partial.pth", "resnet18")


def test_a_plain_state_dict_takes_the_network_from_the_caller(tmp_path):
    network = randomize_(cbam.create_model("resnet18", attention="se", num_classes=5, stem="cifar")).eval()
    torch.save({f"module.{k}": v for k, v in network.state_dict().items()}, tmp_path / "plain.pth")
    with pytest.raises(CheckpointError, match=r"does not record which network.*arch=.*attention="):
        load_pretrained(tmp_path / "plain.pth")
    model = load_pretrained(tmp_path / "plain.pth", "resnet18_se", stem="cifar").eval()
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model(x), network(x))
    save_file({k: v.contiguous() for k, v in network.state_dict().items()}, str(tmp_path / "bare.safetensors"))
    model = load_pretrained(tmp_path / "bare.safetensors", "resnet18", attention="se", stem="cifar").eval()
    with torch.no_grad():
        torch.testing.assert_close(model(x), network(x))


def test_a_network_asked_for_must_be_the_one_the_file_records(tmp_path):
    theirs = TheirResNet(TheirBasicBlock, (2, 2, 2, 2), "cbam", num_classes=7)
    source = authors_checkpoint(theirs, tmp_path / "checkpoint.pth.tar")
    convert_file(source, tmp_path / "r18.safetensors")
    for path in (source, tmp_path / "r18.safetensors"):
        assert load_pretrained(path, "resnet18", attention={"name": "cbam"}, num_classes=7).fc.out_features == 7
        assert load_pretrained(path, "resnet18_cbam", impl="eager").fc.out_features == 7
        with pytest.raises(
            CheckpointError,
            match=r"holds weights of a resnet18, not of the resnet50 asked for; leave the architecture out",
        ):
            load_pretrained(path, "resnet50")
        with pytest.raises(CheckpointError, match=r"records attention=cbam, not the attention=se asked for"):
            load_pretrained(path, "resnet18_se")
        with pytest.raises(CheckpointError, match=r"records num_classes=7, not the num_classes=10 asked for"):
            load_pretrained(path, num_classes=10)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"not a checkpoint", r"junk\.pth"),
        (pickle.dumps(Path("/etc")), r"junk\.pth"),
        (None, r"junk\.pth holds a list"),
        ({"epoch": 3, "note": "text"}, r"junk\.pth is not a state dict: 'epoch' holds a int"),
    ],
    ids=["random-bytes", "pickled-object", "a-list", "not-tensors"],
)
def test_bad_files_are_refused_plainly(tmp_path, content, message):
    path = tmp_path / "junk.pth"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        torch.save([1, 2] if content is None else content, path)
    with pytest.raises(CheckpointError, match=message) as err:
        load_pretrained(path, "resnet18")
    assert "weights_only" not in str(err.value)  # torch's advice to load unsafely never reaches users


def test_plain_files_convert_only_from_the_authors(tmp_path):
    torch.save({"conv1.weight": torch.zeros(1)}, tmp_path / "plain.pth")
    with pytest.raises(CheckpointError, match="not a checkpoint of the authors' code"):
        convert_file(tmp_path / "plain.pth", tmp_path / "out.safetensors")


def test_shown_names_lists_the_first_and_counts_the_rest() -> None:
    assert shown_names(["a", "b"]) == "a, b"
    assert shown_names([f"k{i}" for i in range(10)], limit=3) == "k0, k1, k2, ... (10 in all)"
