"""The authors' checkpoints (Jongchan/attention-module): a network in their exact key layout,
written as their `train_imagenet.py` writes it, converted, must compute the same outputs."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import cbam
from cbam.cli import main
from cbam.convert import convert_authors_state, convert_file, load_pretrained, shown_names
from cbam.engine.checkpoint import CheckpointError


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
    assert type(ours) is cbam.models.ResNet
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


def test_torchvision_weights_load_into_the_zoo_and_the_rest_is_reported(tmp_path, capsys):
    import torchvision

    reference = torchvision.models.resnet18(num_classes=10)
    torch.save(reference.state_dict(), tmp_path / "resnet18.pth")
    model = load_pretrained(tmp_path / "resnet18.pth", "resnet18", attention="cbam")
    report = model.cbam_load_report
    assert report.unexpected == () and report.mismatched == ()
    assert report.missing and all(".attention." in k for k in report.missing)  # only the new CBAM weights
    assert torch.equal(model.layer3[1].conv2.weight, reference.layer3[1].conv2.weight)
    assert "missing: layer1.0.attention" in capsys.readouterr().out


def test_bad_files_are_refused_plainly(tmp_path):
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="cannot be read"):
        load_pretrained(tmp_path / "junk.pth")
    torch.save({"conv1.weight": torch.zeros(1)}, tmp_path / "plain.pth")
    with pytest.raises(CheckpointError, match="say which network it is with arch="):
        load_pretrained(tmp_path / "plain.pth")
    with pytest.raises(CheckpointError, match="not a checkpoint of the authors' code"):
        convert_file(tmp_path / "plain.pth", tmp_path / "out.safetensors")


def test_shown_names_lists_the_first_and_counts_the_rest() -> None:
    assert shown_names(["a", "b"]) == "a, b"
    assert shown_names([f"k{i}" for i in range(10)], limit=3) == "k0, k1, k2, ... (10 in all)"
