"""Registry-driven: every registered network builds at full size, runs, trains and scripts."""

import pytest
import torch
from torch import nn

import cbam
from cbam.errors import ConfigError
from cbam.layers.global_context import GlobalContext
from cbam.networks.zoo.resnet import BasicBlock, Bottleneck

BASE_MODELS = cbam.list_models(include_shortcuts=False)
# Every base network with the paper's attentions at full size; the newer attentions' shortcuts are the same
# builders with another spec, checked below without building each at full size again.
PAPER_ATTENTIONS = ("se", "cbam", "bam")
ALL_MODELS = [*BASE_MODELS, *(f"{base}_{a}" for base in BASE_MODELS for a in PAPER_ATTENTIONS)]
NEWER_SHORTCUTS = [n for n in cbam.list_models() if n not in ALL_MODELS]


@pytest.mark.parametrize("name", ALL_MODELS)
def test_every_model_builds_at_full_size_runs_and_backpropagates(name):
    model = cbam.create_model(name, num_classes=10).train()
    x = torch.randn(2, 3, 64, 64)
    out = model(x)
    assert out.shape == (2, 10)
    out.logsumexp(1).sum().backward()
    assert all(p.grad is not None for p in model.parameters())


@pytest.mark.parametrize("name", BASE_MODELS)
def test_small_image_stem_keeps_resolution_for_cifar_sizes(name):
    model = cbam.create_model(name, attention="cbam", num_classes=100, stem="cifar").eval()
    features = model.forward_features(torch.randn(1, 3, 32, 32))
    assert features.shape[-2:] == (4, 4) if name.startswith(("resnet", "resnext", "wide")) else (2, 2)
    assert model.conv1.stride == (1, 1) if hasattr(model, "conv1") else model.features[0].conv.stride == (1, 1)


@pytest.mark.parametrize("name", ["resnet18_cbam", "resnet50_bam", "mobilenet_v1_cbam", "resnext50_32x4d_se"])
def test_torchscript_matches_eager(name):
    model = cbam.create_model(name).eval()
    x = torch.randn(1, 3, 64, 64)
    torch.testing.assert_close(torch.jit.script(model)(x), model(x))


def count(model, cls):
    return sum(isinstance(m, cls) for m in model.modules())


@pytest.mark.parametrize(
    ("name", "blocks"),
    [
        ("resnet18", 8),
        ("resnet34", 16),
        ("resnet50", 16),
        ("resnet101", 33),
        ("resnet152", 50),
        ("resnext50_32x4d", 16),
    ],
)
def test_block_attention_sits_in_every_residual_block(name, blocks):
    model = cbam.create_model(name, attention="cbam")
    assert count(model, cbam.CBAM) == blocks
    for m in model.modules():
        if isinstance(m, (BasicBlock, Bottleneck)):
            assert isinstance(m.attention, cbam.CBAM)
            last_bn = m.bn3 if isinstance(m, Bottleneck) else m.bn2
            assert m.attention.channel.mlp[0].in_features == last_bn.num_features


def test_bam_sits_after_layer1_to_layer3_only():
    model = cbam.create_model("resnet50", attention="bam")
    assert count(model, cbam.BAM) == 3
    assert [m.channel_mlp[0].in_features for m in model.stage_attention] == [256, 512, 1024]
    assert all(isinstance(m.attention, nn.Identity) for m in model.modules() if isinstance(m, Bottleneck))


def test_mobilenet_attention_follows_every_convolution():
    assert count(cbam.create_model("mobilenet_v1", attention="cbam"), cbam.CBAM) == 27
    assert count(cbam.create_model("mobilenet_v1", attention="se"), cbam.SqueezeExcite) == 27
    bam = cbam.create_model("mobilenet_v1", attention="bam")
    assert [m.channel_mlp[0].in_features for m in bam.modules() if isinstance(m, cbam.BAM)] == [128, 256, 512]


class Zero(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()

    def forward(self, x):
        return torch.zeros_like(x)


@pytest.mark.parametrize("name", ["resnet18", "resnet50"])
def test_attention_acts_on_the_residual_branch_before_the_skip_addition(name):
    """With an attention that zeroes its input, each block outputs relu(skip) (paper Fig. 3)."""
    model = cbam.create_model(name, attention=Zero).eval()
    block = model.layer2[0]
    x = torch.randn(1, block.conv1.in_channels, 16, 16)
    torch.testing.assert_close(block(x), torch.relu(block.downsample(x)))
    block = model.layer2[1]
    x = torch.randn(1, block.conv1.in_channels, 8, 8)
    torch.testing.assert_close(block(x), torch.relu(x))


def test_stride_in_1x1_moves_the_stride_and_keeps_every_parameter():
    default = cbam.create_model("resnet50")
    caffe = cbam.create_model("resnet50", stride_in_1x1=True)
    assert default.layer2[0].conv1.stride == (1, 1) and default.layer2[0].conv2.stride == (2, 2)
    assert caffe.layer2[0].conv1.stride == (2, 2) and caffe.layer2[0].conv2.stride == (1, 1)
    assert {k: v.shape for k, v in default.state_dict().items()} == {k: v.shape for k, v in caffe.state_dict().items()}
    x = torch.randn(1, 3, 64, 64)
    assert caffe.eval()(x).shape == default.eval()(x).shape


def test_wide_resnet18_widens_stages_but_not_the_stem():
    model = cbam.create_model("wide_resnet18", widen_factor=1.5)
    assert model.conv1.out_channels == 64
    assert [model.layer1[0].conv1.out_channels, model.layer4[0].conv1.out_channels] == [96, 768]


def test_resnext_uses_32_groups_of_width_4():
    conv = cbam.create_model("resnext101_32x4d").layer1[0].conv2
    assert (conv.groups, conv.out_channels) == (32, 128)


def test_init_follows_the_authors_code():
    model = cbam.create_model("resnet50", attention="cbam")
    conv = model.layer3[2].conv2
    fan_out = conv.out_channels * conv.kernel_size[0] * conv.kernel_size[1]
    assert abs(conv.weight.std().item() - (2 / fan_out) ** 0.5) < 0.1 * (2 / fan_out) ** 0.5
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            expected = 0.0 if m.num_features == 1 else 1.0  # the spatial gate's BatchNorm scale starts at 0
            assert torch.all(m.weight == expected) and torch.all(m.bias == 0)
        if isinstance(m, nn.Linear):
            assert torch.all(m.bias == 0)


def test_models_build_on_the_meta_device_without_memory():
    with torch.device("meta"):
        model = cbam.create_model("resnext101_32x4d_cbam")
    assert all(p.is_meta for p in model.parameters())


def test_unknown_model_lists_close_matches():
    with pytest.raises(ValueError, match=r"unknown model 'resnet5'; did you mean resnet50.*Valid models: mobilenet_v1"):
        cbam.create_model("resnet5")


def test_shortcut_names_fix_their_attention():
    assert count(cbam.create_model("resnet18_cbam"), cbam.CBAM) == 8
    assert count(cbam.create_model("resnet18_cbam", attention="cbam"), cbam.CBAM) == 8
    with pytest.raises(ValueError, match=r"fixes attention='cbam'.*'resnet18'"):
        cbam.create_model("resnet18_cbam", attention="se")


@pytest.mark.parametrize(("stages", "with_attention"), [((2, 3, 4), [False] + [True] * 3), (4, [False] * 3 + [True])])
def test_attention_stages_place_block_attention_in_the_named_stages_only(stages, with_attention):
    """GCNet puts its block in c3-c5 (stages 2-4); one stage may be given as an int, as `--model-arg` parses it."""
    with torch.device("meta"):
        model = cbam.create_model("resnet50", attention="gc", attention_stages=stages)
    layers = (model.layer1, model.layer2, model.layer3, model.layer4)
    assert [all(isinstance(b.attention, GlobalContext) for b in layer) for layer in layers] == with_attention
    assert [all(isinstance(b.attention, nn.Identity) for b in layer) for layer in layers] == [
        not w for w in with_attention
    ]


def test_global_context_goes_in_stages_c3_to_c5_by_default_as_gcnet_places_it():
    with torch.device("meta"):
        model = cbam.create_model("resnet50_gc")
        every = cbam.create_model("resnet50", attention="gc", attention_stages=(1, 2, 3, 4))
        cbam_net = cbam.create_model("resnet50_cbam")
    assert [isinstance(layer[0].attention, GlobalContext) for layer in stages(model)] == [False, True, True, True]
    assert all(isinstance(layer[0].attention, GlobalContext) for layer in stages(every))
    assert all(isinstance(layer[0].attention, cbam.CBAM) for layer in stages(cbam_net))


def stages(model: nn.Module) -> tuple[nn.Module, ...]:
    return model.layer1, model.layer2, model.layer3, model.layer4


def test_unknown_builder_option_names_the_model():
    with pytest.raises(TypeError, match=r"resnet18: .*unexpected keyword argument 'widen'"):
        cbam.create_model("resnet18", widen=2)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"num_classes": 0}, "num_classes"), ({"stem": "tiny"}, "stem"), ({"attention_stages": (0, 5)}, "stages 1 to 4")],
)
def test_bad_options_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        cbam.create_model("resnet18", **kwargs)


@pytest.mark.parametrize("name", NEWER_SHORTCUTS)
def test_each_newer_attention_shortcut_builds_its_network_with_that_attention(name):
    base, _, attention = name.rpartition("_")
    with torch.device("meta"):
        shortcut, spelled = cbam.create_model(name), cbam.create_model(base, attention=attention)
    shapes = [(n, p.shape) for n, p in spelled.named_parameters()]
    assert [(n, p.shape) for n, p in shortcut.named_parameters()] == shapes
    assert [type(m) for m in shortcut.modules()] == [type(m) for m in spelled.modules()]


@pytest.mark.parametrize("arch", ["resnet18", "resnet50", "mobilenet_v1"])
@pytest.mark.parametrize("attention", ["eca", "ese", "ge", "gc", "coord", "simam", "triplet"])
def test_every_newer_attention_trains_in_the_zoo_at_full_width(arch, attention):
    model = cbam.create_model(f"{arch}_{attention}", num_classes=10).train()
    out = model(torch.randn(2, 3, 64, 64))
    out.logsumexp(1).sum().backward()
    assert out.shape == (2, 10) and all(p.grad is not None for p in model.parameters())


def authors_simam_block(block: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """A block's forward in the order of SimAM's authors' ResNets: SimAM right after conv2, before bn2."""
    identity = x if block.downsample is None else block.downsample(x)
    out = torch.relu(block.bn1(block.conv1(x)))
    out = block.bn2(block.attention(block.conv2(out)))
    if isinstance(block, Bottleneck):
        out = block.bn3(block.conv3(torch.relu(out)))
    return torch.relu(out + identity)


@pytest.mark.parametrize("arch", ["resnet18", "resnet50"])
def test_simam_sits_after_conv2_before_its_batch_norm_as_its_authors_place_it(arch):
    model = cbam.create_model(f"{arch}_simam", num_classes=10).eval()
    with torch.no_grad():  # BatchNorms that are not near the identity, so before and after bn2 differ
        for bn in (m for m in model.modules() if isinstance(m, nn.BatchNorm2d)):
            bn.weight.uniform_(0.5, 1.5), bn.bias.uniform_(-0.2, 0.2)
            bn.running_mean.uniform_(-0.2, 0.2), bn.running_var.uniform_(0.5, 2.0)
    blocks = [m for m in model.modules() if isinstance(m, (BasicBlock, Bottleneck))]
    assert all(b.site == "conv" and b.attention.channels == b.conv2.out_channels for b in blocks)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        features = model.maxpool(model.relu(model.bn1(model.conv1(x))))
        for block in blocks:
            expected = authors_simam_block(block, features)
            features = block(features)
            assert torch.equal(features, expected)
    spelled = cbam.create_model(arch, attention={"name": "simam", "site": "output"})
    assert all(b.site == "output" for b in spelled.modules() if isinstance(b, (BasicBlock, Bottleneck)))
    cbam_at_conv = cbam.create_model(arch, attention={"name": "cbam", "site": "conv"})
    assert all(b.site == "conv" for b in cbam_at_conv.modules() if isinstance(b, (BasicBlock, Bottleneck)))


def test_a_site_a_zoo_network_lacks_is_one_line_naming_it():
    with pytest.raises(ConfigError, match=r"site 'conv' is inside residual blocks .* MobileNetV1 has none"):
        cbam.create_model("mobilenet_v1", attention={"name": "simam", "site": "conv"})
    with pytest.raises(ConfigError, match=r"site 'depthwise' is inside inverted residuals .* a ResNet has none"):
        cbam.create_model("resnet50", attention={"name": "simam", "site": "depthwise"})
    with pytest.raises(ConfigError, match="attention site must be one of output, depthwise, conv, got 'middle'"):
        BasicBlock(8, 8, site="middle")
    # Coordinate Attention's own site is an inverted residual's: a ResNet puts it on the block's output
    assert all(b.site == "output" for b in cbam.create_model("resnet18_coord").modules() if isinstance(b, BasicBlock))


def test_list_models_filters_by_pattern():
    assert cbam.list_models("resnet50*") == [
        "resnet50", "resnet50_bam", "resnet50_cbam", "resnet50_coord", "resnet50_eca", "resnet50_ese",
        "resnet50_gc", "resnet50_ge", "resnet50_se", "resnet50_simam", "resnet50_triplet",
    ]  # fmt: skip
    assert "resnet50_cbam" not in cbam.list_models(include_shortcuts=False)


def test_attention_spec_mapping_reaches_every_block():
    model = cbam.create_model("resnet18", attention={"name": "cbam", "kernel_size": 3, "arrangement": "parallel"})
    layers = [m for m in model.modules() if isinstance(m, cbam.CBAM)]
    assert len(layers) == 8 and all(
        m.arrangement == "parallel" and m.spatial.conv.kernel_size == (3, 3) for m in layers
    )


@pytest.mark.slow
@pytest.mark.parametrize("name", BASE_MODELS)
@pytest.mark.parametrize("attention", ["none", "se", "cbam", "bam"])
def test_full_size_forward_at_224(name, attention):
    model = cbam.create_model(name, attention=attention).eval()
    with torch.no_grad():
        features = model.forward_features(torch.randn(1, 3, 224, 224))
        logits = model.forward_head(features)
    assert features.shape == (1, model.num_features, 7, 7)
    assert logits.shape == (1, 1000) and torch.isfinite(logits).all()


@pytest.mark.parametrize("name", ["resnet18_cbam", "resnet50_bam", "mobilenet_v1_se"])
def test_whole_networks_trace_without_graph_breaks(name):
    torch._dynamo.reset()
    model = cbam.create_model(name, num_classes=10).eval()
    compiled = torch.compile(model, fullgraph=True, backend="eager")
    x = torch.randn(2, 3, 64, 64)
    torch.testing.assert_close(compiled(x), model(x))


def test_grayscale_input_channels():
    model = cbam.create_model("resnet18_cbam", in_channels=1, num_classes=10).eval()
    assert model.conv1.in_channels == 1
    assert model(torch.randn(2, 1, 32, 32)).shape == (2, 10)
    assert cbam.create_model("mobilenet_v1", in_channels=1).features[0].conv.in_channels == 1


def resnet18_parameters(stem: int, widths: tuple[int, ...], classes: int) -> int:
    """ResNet-18's parameter count, counted by hand from its stem's and four stages' widths."""
    total, channels = 3 * 49 * stem + 2 * stem, stem
    for stage, planes in enumerate(widths):
        total += 9 * channels * planes + 9 * planes * planes + 4 * planes  # first block
        if stage > 0 or channels != planes:
            total += channels * planes + 2 * planes  # its 1x1 downsample
        total += 2 * (9 * planes * planes + 2 * planes)  # second block
        channels = planes
    return total + channels * classes + classes


@pytest.mark.parametrize(
    ("width_mult", "stem", "widths"),
    [(1.0, 64, (64, 128, 256, 512)), (0.25, 16, (16, 32, 64, 128)), (0.3, 19, (19, 38, 76, 153))],
)
def test_width_mult_narrows_every_resnet_width_rounding_down(width_mult, stem, widths):
    assert resnet18_parameters(64, (64, 128, 256, 512), 1000) == 11_689_512  # torchvision's: the count is right
    model = cbam.create_model("resnet18", num_classes=10, width_mult=width_mult)
    assert model.conv1.out_channels == stem and model.num_features == widths[-1]
    assert sum(p.numel() for p in model.parameters()) == resnet18_parameters(stem, widths, 10)


def test_width_mult_that_leaves_no_channel_is_refused():
    with pytest.raises(ConfigError, match="width_mult"):
        cbam.create_model("resnet18", width_mult=0.01)
