"""cbam.attach on the networks people have: torchvision's and timm's, keeping their weights."""

import logging

import pytest
import timm
import torch
import torchvision
from torch import nn

import cbam
from cbam.errors import OptionError
from cbam.networks.attach import AttentionAfter, AttentionRecorder, attach, attention_modules, detach, known_targets

tv = torchvision.models
SIZE = (3, 64, 64)
# network, expected insertions (one per residual block or per convolution stage)
NETWORKS = {
    "resnet18": (lambda: tv.resnet18(), 8),
    "resnext50_32x4d": (lambda: tv.resnext50_32x4d(), 16),
    "wide_resnet50_2": (lambda: tv.wide_resnet50_2(), 16),
    "mobilenet_v2": (lambda: tv.mobilenet_v2(), 17),
    "mobilenet_v3_small": (lambda: tv.mobilenet_v3_small(), 11),
    "regnet_y_400mf": (lambda: tv.regnet_y_400mf(), 16),
    "efficientnet_b0": (lambda: tv.efficientnet_b0(), 16),
    "convnext_tiny": (lambda: tv.convnext_tiny(), 18),
    "vgg11": (lambda: tv.vgg11(), 5),
    "densenet121": (lambda: tv.densenet121(), 4),
    "timm_resnet26d": (lambda: timm.create_model("resnet26d"), 8),
    "timm_efficientnet_b0": (lambda: timm.create_model("efficientnet_b0"), 16),
    "timm_mobilenetv3": (lambda: timm.create_model("mobilenetv3_small_100"), 11),
}


def attention_params(model):
    return sum(p.numel() for m in model.modules() if isinstance(m, AttentionAfter) for p in m.parameters())


@pytest.mark.parametrize("name", sorted(NETWORKS))
def test_attach_keeps_every_weight_and_adds_only_the_attention(name):
    build, expected = NETWORKS[name]
    model = build().eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    params_before = sum(p.numel() for p in model.parameters())
    attach(model, "cbam", input_size=SIZE, verbose=False)
    report = model.cbam_report
    assert len(report.insertions) == expected
    added = sum(p.numel() for p in model.parameters()) - params_before
    assert (
        added
        == report.added_params
        == sum(p.numel() for _, m in attention_modules_of(model) for p in m.attention.parameters())
    )
    assert report.added_gflops > 0
    after = model.state_dict()
    for key, value in before.items():
        moved = next(k for k in after if k.replace(".module.", ".") == key)  # the wrapped layer lives at .module
        assert torch.equal(after[moved], value), key


def attention_modules_of(model):
    return [(n, m) for n, m in model.named_modules() if isinstance(m, AttentionAfter)]


NEWER = ("eca", "ese", "ge", "gc", "coord", "simam", "triplet")  # the modules CBAM is compared with (issue 24)
# Coordinate Attention sits after the depthwise convolution of each inverted residual that expands (Hou et al.)
COORD_INSERTIONS = {"mobilenet_v2": 16, "mobilenet_v3_small": 10, "efficientnet_b0": 15, "timm_efficientnet_b0": 15,
                    "timm_mobilenetv3": 10}  # fmt: skip
# Global Context goes in a ResNet's stages c3-c5 only (GCNet)
GC_INSERTIONS = {"resnet18": 6, "resnext50_32x4d": 13, "wide_resnet50_2": 13, "timm_resnet26d": 6}


@pytest.mark.parametrize("name", sorted(NETWORKS))
def test_every_newer_attention_attaches_to_every_family(name):
    """Each module of issue 24, attached and detached in turn: one per block, its own parameters the only ones
    added (none for GE-theta-minus and SimAM), and a forward pass that gives finite logits."""
    build, expected = NETWORKS[name]
    model = build().eval()
    plain = sum(p.numel() for p in model.parameters())
    x = torch.randn(1, *SIZE)
    for attention in NEWER:
        attach(model, attention, input_size=SIZE, verbose=False)
        inserted = [m.attention for _, m in attention_modules_of(model)]
        special = {"coord": COORD_INSERTIONS, "gc": GC_INSERTIONS}.get(attention, {})
        assert len(inserted) == special.get(name, expected), attention
        assert all(isinstance(m, cbam.layers.ATTENTION_LAYERS[attention]) for m in inserted), attention
        added = sum(p.numel() for m in inserted for p in m.parameters())
        assert sum(p.numel() for p in model.parameters()) - plain == model.cbam_report.added_params == added
        assert (added == 0) == (attention in ("ge", "simam")), attention
        with torch.no_grad():
            assert torch.isfinite(model(x)).all(), attention
        detach(model)


@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v2", "vgg11", "timm_efficientnet_b0"])
def test_the_paper_init_changes_the_output_of_a_network(name):
    build, _ = NETWORKS[name]
    model = build().eval()
    x = torch.randn(2, *SIZE)
    with torch.no_grad():
        reference = model(x)
        attach(model, "cbam", init="paper", input_size=SIZE, verbose=False)
        assert not torch.allclose(model(x), reference, rtol=0.05, atol=0)  # the paper init halves activations


def test_identity_init_trains_the_gates():
    model = attach(tv.resnet18(num_classes=4).train(), "se", init="identity", input_size=SIZE, verbose=False)
    loss = nn.functional.cross_entropy(model(torch.randn(4, *SIZE)), torch.tensor([0, 1, 2, 3]))
    loss.backward()
    gates = [m.gate for _, m in attention_modules_of(model)]
    assert all(g.grad is not None and g.grad.abs().item() > 0 for g in gates)


class Zero(nn.Module):
    def __init__(self, channels):
        super().__init__()

    def forward(self, x):
        return torch.zeros_like(x)


def test_attention_lands_on_the_residual_branch_before_the_skip_addition():
    model = attach(tv.resnet50().eval(), Zero, input_size=SIZE, verbose=False)
    block = model.layer2[1]
    x = torch.randn(1, 512, 8, 8)
    torch.testing.assert_close(block(x), torch.relu(x))  # the branch is zeroed; only the skip remains


def test_detach_restores_the_original_structure_and_weights():
    model = tv.mobilenet_v2().eval()
    original = {k: v.clone() for k, v in model.state_dict().items()}
    text = str(model)
    detach(attach(model, "cbam", input_size=SIZE, verbose=False))
    assert str(model) == text and not hasattr(model, "cbam_report")
    assert all(torch.equal(model.state_dict()[k], v) for k, v in original.items())
    with pytest.raises(ValueError, match=r"no attention from cbam\.attach"):
        detach(model)


def test_attaching_twice_or_to_an_unknown_network_says_what_to_do():
    model = attach(tv.resnet18(), "cbam", input_size=SIZE, verbose=False)
    with pytest.raises(ValueError, match=r"already has 8 attention modules.*cbam\.detach"):
        attach(model, "se", input_size=SIZE, verbose=False)
    unknown = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 8, 3), nn.BatchNorm2d(8))
    with pytest.raises(ValueError, match="cbam does not know Sequential; pass targets="):
        attach(unknown, input_size=SIZE, verbose=False)
    with pytest.raises(ValueError, match="no module matched"):
        attach(unknown, targets=["layer9.*"], input_size=SIZE, verbose=False)
    with pytest.raises(OptionError, match=r"attach needs an nn\.Module, got dict"):
        attach({"conv": None}, input_size=SIZE, verbose=False)
    with pytest.raises(ValueError, match="unknown init"):
        attach(unknown, targets=[nn.BatchNorm2d], init="zeros", input_size=SIZE, verbose=False)


def test_targets_by_name_pattern_or_type_for_any_network():
    net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 16, 3), nn.BatchNorm2d(16))
    attach(net, "cbam", targets=[nn.BatchNorm2d], input_size=SIZE, verbose=False)
    assert [m.attention.channel.mlp[0].in_features for _, m in attention_modules_of(net)] == [8, 16]
    other = tv.resnet18()
    attach(other, "se", targets=["layer4.*.conv2"], input_size=SIZE, verbose=False)
    assert [n for n, _ in attention_modules_of(other)] == ["layer4.0.conv2", "layer4.1.conv2"]


def test_attach_works_in_training_mode_and_on_the_meta_device():
    model = attach(tv.resnet18().train(), "cbam", input_size=SIZE, verbose=False)
    assert model.training and all(m.training for m in model.modules())
    with torch.device("meta"):
        big = tv.resnet152()
    attach(big, "cbam", verbose=False)
    assert len(big.cbam_report.insertions) == 50 and all(p.is_meta for p in big.parameters())


def test_the_report_is_logged_never_printed(capsys, cbam_log):
    attach(tv.resnet18(), "se", input_size=SIZE)
    [record] = cbam_log.records
    assert (record.name, record.levelno) == ("cbam.networks.attach", logging.INFO)
    assert record.getMessage().startswith("attached 8 attention modules: +") and "layer4.1.bn2" in record.getMessage()
    attach(tv.resnet18(), "se", input_size=SIZE, verbose=False)
    assert cbam_log.records[-1].levelno == logging.DEBUG
    assert capsys.readouterr() == ("", "")


def test_recorder_reads_the_latest_maps_without_moving_batchnorm_statistics():
    model = attach(tv.resnet18().train(), "cbam", input_size=SIZE, verbose=False)
    names = [n for n, _ in attention_modules(model)]
    assert len(names) == 16  # a channel and a spatial map in each of 8 blocks
    spatial_bn = model.layer4[1].bn2.attention.spatial.bn
    with AttentionRecorder(model) as recorder:
        model(torch.randn(2, *SIZE))
        stats = spatial_bn.running_mean.clone(), spatial_bn.num_batches_tracked.clone()
    model(torch.randn(2, *SIZE))  # recording is over: no hooks left
    assert recorder.maps["layer4.1.bn2.attention.spatial"].shape == (2, 1, 2, 2)
    assert recorder.maps["layer1.0.bn2.attention.channel"].shape == (2, 64, 1, 1)
    assert torch.equal(stats[1], torch.tensor(1))  # counted once, for the real forward pass only
    assert (
        (recorder.maps["layer1.0.bn2.attention.spatial"] >= 0) & (recorder.maps["layer1.0.bn2.attention.spatial"] <= 1)
    ).all()


def test_attached_torchvision_network_scripts():
    model = attach(tv.resnet18().eval(), "cbam", input_size=SIZE, verbose=False)
    x = torch.randn(1, *SIZE)
    torch.testing.assert_close(torch.jit.script(model)(x), model(x))


def test_timm_resnet_weights_load_into_the_zoo(tmp_path):
    from cbam.networks.pretrained import load_pretrained

    torch.save(timm.create_model("resnet50", num_classes=10).state_dict(), tmp_path / "timm_r50.pth")
    model = load_pretrained(tmp_path / "timm_r50.pth", "resnet50", attention="se", verbose=False)
    report = model.cbam_load_report
    assert report.missing == report.unexpected == report.mismatched == ()
    assert report.new_attention and all(".attention." in k for k in report.new_attention)


def test_layers_serve_as_timm_attn_layer():
    model = timm.create_model("resnet18", block_args={"attn_layer": cbam.CBAM}, num_classes=5).eval()
    assert sum(isinstance(m, cbam.CBAM) for m in model.modules()) == 8
    assert model(torch.randn(1, *SIZE)).shape == (1, 5)
    assert known_targets(tv.resnet18())[:2] == ["layer1.0.bn2", "layer1.1.bn2"]


def test_coordinate_attention_goes_after_the_depthwise_convolution_of_each_expanding_block():
    """Hou et al.'s placement in MobileNetV2, its layer's default; a spec's site overrides it for any attention."""
    coord = attach(tv.mobilenet_v2(), "coord", input_size=SIZE, verbose=False)
    names = [i.name for i in coord.cbam_report.insertions]
    assert len(names) == 16 and names[0] == "features.2.conv.1"  # features.1 does not expand: left bare
    assert [i.channels for i in coord.cbam_report.insertions][:3] == [96, 144, 144]  # the expanded widths
    se = attach(tv.mobilenet_v2(), {"name": "se", "site": "depthwise"}, input_size=SIZE, verbose=False)
    assert [i.name for i in se.cbam_report.insertions] == names
    output = attach(tv.mobilenet_v2(), {"name": "coord", "site": "output"}, input_size=SIZE, verbose=False)
    assert output.cbam_report.insertions[0].name == "features.1.conv.2"
    # the other inverted residuals: every block that expands, on its expanded width
    v3 = attach(tv.mobilenet_v3_small(), "coord", input_size=SIZE, verbose=False).cbam_report.insertions
    assert (len(v3), v3[0].name, v3[0].channels) == (10, "features.2.block.1", 72)  # 11 blocks, the first bare
    b0 = attach(tv.efficientnet_b0(), "coord", input_size=SIZE, verbose=False).cbam_report.insertions
    assert (len(b0), b0[0].name, b0[0].channels) == (15, "features.2.0.block.1", 96)  # 16 blocks, the first bare
    timm_v2 = attach(timm.create_model("mobilenetv2_100"), "coord", input_size=SIZE, verbose=False)
    assert len(timm_v2.cbam_report.insertions) == 16
    assert timm_v2.cbam_report.insertions[0].name == "blocks.1.0.bn2"
    # a network without inverted residuals: Coordinate Attention's own preference falls back to each block's output
    resnet = attach(tv.resnet18(), "coord", input_size=SIZE, verbose=False)
    assert resnet.cbam_report.insertions[0].name == "layer1.0.bn2"


def test_simam_goes_right_after_the_last_spatial_convolution_before_its_norm():
    """SimAM's authors' placement, its layer's default: a ResNet block's conv2, every inverted residual's depthwise
    convolution (the first block's too); a block without that site (RegNet here) takes it on its output."""
    resnet = attach(tv.resnet50(), "simam", input_size=SIZE, verbose=False).cbam_report.insertions
    assert (len(resnet), resnet[0].name, resnet[0].channels) == (16, "layer1.0.conv2", 64)  # the bottleneck's width
    v2 = attach(tv.mobilenet_v2(), "simam", input_size=SIZE, verbose=False)
    names = [i.name for i in v2.cbam_report.insertions]
    assert (len(names), names[0], names[1]) == (17, "features.1.conv.0.0", "features.2.conv.1.0")
    assert isinstance(v2.features[2].conv[1][0].module, nn.Conv2d) and v2.features[2].conv[1][0].module.groups == 96
    timm_v2 = attach(timm.create_model("mobilenetv2_100"), "simam", input_size=SIZE, verbose=False)
    assert [i.name for i in timm_v2.cbam_report.insertions][:2] == ["blocks.0.0.conv_dw", "blocks.1.0.conv_dw"]
    regnet = attach(tv.regnet_y_400mf(), "simam", input_size=SIZE, verbose=False).cbam_report.insertions
    assert regnet[0].name == "trunk_output.block1.block1-0.f.c"
    output = attach(tv.resnet18(), {"name": "simam", "site": "output"}, input_size=SIZE, verbose=False)
    assert output.cbam_report.insertions[0].name == "layer1.0.bn2"
    cbam_conv = attach(tv.resnet18(), "cbam", site="conv", input_size=SIZE, verbose=False)
    assert cbam_conv.cbam_report.insertions[0].name == "layer1.0.conv2"


def test_global_context_goes_in_a_resnets_stages_c3_to_c5():
    gc = attach(tv.resnet50(), "gc", input_size=SIZE, verbose=False).cbam_report.insertions
    assert (len(gc), gc[0].name) == (13, "layer2.0.bn3")
    every = attach(tv.resnet50(), "gc", targets=["layer*.*.bn3"], input_size=SIZE, verbose=False)
    assert len(every.cbam_report.insertions) == 16


def test_a_depthwise_site_where_there_is_none_or_an_unknown_site_is_one_clear_error():
    with pytest.raises(cbam.errors.ConfigError, match="site 'depthwise' is inside inverted residuals"):
        attach(tv.resnet18(), {"name": "se", "site": "depthwise"}, input_size=SIZE, verbose=False)
    with pytest.raises(cbam.errors.ConfigError, match="site 'depthwise' is inside inverted residuals"):
        cbam.create_model("resnet18", attention={"name": "cbam", "site": "depthwise"})
    with pytest.raises(cbam.errors.ConfigError, match="one of output, depthwise, conv"):
        attach(tv.mobilenet_v2(), "cbam", site="middle", input_size=SIZE, verbose=False)
    with pytest.raises(cbam.errors.ConfigError, match="one of output, depthwise, conv"):
        attach(tv.mobilenet_v2(), {"name": "se", "site": "middle"}, input_size=SIZE, verbose=False)
