import functools

import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

import cbam
from cbam.layers.create import ATTENTION_LAYERS
from cbam.layers.fused import cpu_kernels, set_attention_impl
from cbam.networks.complexity import find_paper_rows, measure_arch
from cbam.networks.counting import count_macs, count_parameters, measure

CPU_KERNELS = pytest.mark.skipif(not cpu_kernels.available(), reason="no C compiler for the fused CPU kernels")


def test_macs_of_convolutions_and_linear_layers_equal_the_textbook_formula():
    net = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1, bias=False),  # 8 x 3 x 3 x 3 x 32 x 32
        nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1, groups=8),  # depthwise: 8 x 3 x 3 x 32 x 32
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 5),  # 8 x 5
    )
    assert count_macs(net, (3, 32, 32)) == 8 * 27 * 1024 + 8 * 9 * 1024 + 40
    assert count_parameters(net) == 8 * 27 + 8 * 9 + 8 + 40 + 5


def test_attention_macs_are_its_mlp_and_spatial_conv():
    # CBAM on a 64 x 10 x 10 map: shared MLP on 2 descriptors (2 x 2 x 64 x 4) + 7x7 conv on 2 maps over 100 pixels
    layer = cbam.CBAM(64)
    assert count_macs(layer, (64, 10, 10)) == 2 * 2 * 64 * 4 + 98 * 100
    assert count_macs(cbam.SqueezeExcite(64), (64, 10, 10)) == 2 * 64 * 4


def test_measure_keeps_the_training_mode_and_counts_on_meta():
    model = cbam.create_model("resnet18").train()
    result = measure(model, (3, 64, 64))
    assert model.training
    assert result == measure_arch("resnet18", input_size=(3, 64, 64))
    assert result.params == 11_689_512


def test_paper_convention_only_changes_flops_of_bottleneck_networks():
    torchvision_layout = measure_arch("resnet50")
    caffe_layout = measure_arch("resnet50", stride_in_1x1=True)
    assert torchvision_layout.params == caffe_layout.params
    assert round(torchvision_layout.gflops, 3) == 4.089 and round(caffe_layout.gflops, 3) == 3.858
    assert measure_arch("resnet18") == measure_arch("resnet18", stride_in_1x1=True)


def test_find_paper_rows_respects_builder_defaults():
    assert [r.description for r in find_paper_rows("wide_resnet18", "cbam", {})] == ["WideResNet18 (widen=2.0) + CBAM"]
    found = find_paper_rows("mobilenet_v1", "se", {"width_mult": 0.7})
    assert [r.description for r in found] == ["MobileNet alpha=0.7 + SE"]
    assert find_paper_rows("resnet152", "cbam", {}) == []


def test_count_macs_on_a_real_input_matches_meta():
    model = cbam.create_model("mobilenet_v1", attention="cbam", width_mult=0.25, num_classes=10)
    assert (
        count_macs(model, (3, 64, 64))
        == measure_arch("mobilenet_v1", "cbam", input_size=(3, 64, 64), width_mult=0.25, num_classes=10).macs
    )
    assert next(model.parameters()).device == torch.device("cpu")


def flops_by_op(model: nn.Module, x: torch.Tensor, train: bool) -> dict[str, int]:
    """FlopCounterMode's FLOPs (2 per multiply-accumulate) by operator: a forward without grad, or with `train` a
    forward and backward."""
    with FlopCounterMode(display=False) as counter:
        if train:
            model(x.requires_grad_()).square().sum().backward()
        else:
            with torch.no_grad():
                model(x)
    return {str(op): flops for op, flops in counter.get_flop_counts().get("Global", {}).items()}


FUSABLE_LAYERS = {
    "cbam": lambda: cbam.CBAM(32),
    "cbam-max-only-k3-no-bn": lambda: cbam.CBAM(32, pool_types="max", kernel_size=3, spatial_batch_norm=False),
    "se": lambda: cbam.SqueezeExcite(32),
    "channel": lambda: cbam.ChannelAttention(32, pool_types="avg"),
    "spatial": lambda: cbam.SpatialAttention(32),
    **{name: functools.partial(ATTENTION_LAYERS[name], 32) for name in ("eca", "ceca", "ese", "ge")},
}


@CPU_KERNELS
@pytest.mark.parametrize("name", sorted(FUSABLE_LAYERS))
@pytest.mark.parametrize("train", [False, True])
def test_the_fused_gate_counts_the_flops_of_the_eager_layer(name: str, train: bool) -> None:
    """The fused op hides the MLP and the k x k convolution from FlopCounterMode but for its own formulas, which
    count what the eager layer's matrix products and convolution count, forward and backward."""
    layer = FUSABLE_LAYERS[name]().train(train)
    x = torch.randn(2, 32, 9, 11)
    eager = flops_by_op(set_attention_impl(layer, "eager"), x.clone(), train)
    fused = flops_by_op(set_attention_impl(layer, "compiled"), x.clone(), train)
    assert sum(fused.values()) == sum(eager.values())
    assert (sum(eager.values()) > 0) == (name != "ge"), "GE-theta-minus has no weights: nothing to count either way"
    assert "cbam.attention_gate" in fused and ("cbam.attention_gate_backward" in fused) == train


NETWORKS = [
    ("mobilenet_v1", {"attention": "cbam", "width_mult": 0.7}),
    ("resnet50", {"attention": "cbam"}),
    ("resnet50", {"attention": "se"}),
]
NEWER_GATES = [("resnet18", {"attention": name}) for name in ("eca", "ese", "ge")]  # the other fusable gates


@CPU_KERNELS
@pytest.mark.parametrize(
    ("arch", "options"),
    NETWORKS + NEWER_GATES,
    ids=["mobilenet_v1_0.7_cbam", "resnet50_cbam", "resnet50_se", "resnet18_eca", "resnet18_ese", "resnet18_ge"],
)
def test_networks_count_the_same_flops_with_the_fused_gate(arch: str, options: dict) -> None:
    """`count_macs` on a small input, where `compiled` (which fuses every map) stands in for what `auto` fuses at
    224 px; the layer test above covers the backward."""
    model = cbam.create_model(arch, num_classes=10, **options).eval()
    x = torch.zeros(1, 3, 32, 32)
    fused = flops_by_op(set_attention_impl(model, "compiled"), x, train=False)
    assert "cbam.attention_gate" in fused
    assert sum(fused.values()) == sum(flops_by_op(set_attention_impl(model, "eager"), x, train=False).values())


@CPU_KERNELS
@pytest.mark.slow
@pytest.mark.parametrize(
    ("arch", "options", "gmacs"),
    [*((*net, g) for net, g in zip(NETWORKS, (0.2892, 4.0956, 4.0917), strict=True)), ("resnext101_32x4d", {}, 7.9812)],
)
def test_count_macs_at_224_is_the_same_with_auto_as_eager(arch: str, options: dict, gmacs: float) -> None:
    """Full size on the CPU, where `auto` fuses the large maps (not SE's in float32 inference, which run eagerly
    below a 1M-element residual tail): the counts are the eager layers' to the MAC."""
    model = cbam.create_model(arch, **{"attention": "cbam", **options}).eval()
    x = torch.zeros(1, 3, 224, 224)
    auto = flops_by_op(set_attention_impl(model, "auto"), x, train=False)
    assert sum(auto.values()) == sum(flops_by_op(set_attention_impl(model, "eager"), x, train=False).values())
    assert ("cbam.attention_gate" in auto) == (options.get("attention", "cbam") == "cbam")
    assert round(count_macs(set_attention_impl(model, "auto")) / 1e9, 4) == gmacs


@pytest.mark.parametrize(
    ("arch", "attention", "printed", "added"),
    [
        ("resnet18", "triplet", 11.69, 8 * 3 * (2 * 49 + 2)),  # Misra et al., Table 1: 11.69M
        ("resnet50", "triplet", 25.56, 16 * 3 * (2 * 49 + 2)),  # Misra et al., Table 1: 25.56M
        ("resnet50", "simam", 25.56, 0),  # Yang et al.: SimAM adds no parameter
        ("resnet50", "ge", 25.56, 0),  # GE-theta-minus is parameter-free (Hu et al., 2018)
        ("resnet50", "eca", 25.56, 3 * 5 + 4 * 5 + 6 * 5 + 3 * 7),  # ECA-Net: k = 5, 5, 5, 7 by stage
    ],
)
def test_attention_parameters_on_resnets_equal_the_authors_printed_figures(arch, attention, printed, added):
    with torch.device("meta"):
        plain = count_parameters(cbam.create_model(arch))
        total = count_parameters(cbam.create_model(arch, attention=attention))
    assert total - plain == added
    assert round(total / 1e6, 2) == printed


def test_eca_nets_printed_resnet50_row_is_its_units_and_a_kernel_of_5_everywhere() -> None:
    """ECA-Net (Table 2, abstract): ResNet-50 24.37M parameters and 3.86 GFLOPs, the ECA modules 80 parameters.
    Its M is 2^20 parameters, its GFLOPs the multiply-adds of the stride-in-1x1 layout (the CBAM paper's convention,
    `cbam.paper`), and 80 is 16 blocks with k = 5; the adaptive rule on each block's width gives 86 (k = 7 in the
    last stage), which `test_attention_parameters_...` checks."""
    with torch.device("meta"):
        plain = cbam.create_model("resnet50", stride_in_1x1=True)
        five = cbam.create_model("resnet50", attention={"name": "eca", "kernel_size": 5})
    assert round(count_parameters(plain) / 2**20, 2) == 24.37
    assert round(count_macs(plain) / 1e9, 2) == 3.86
    assert count_parameters(five) - count_parameters(plain) == 80


def test_gcnets_printed_resnet50_row_is_gc_in_stages_2_to_4() -> None:
    """GCNet (Cao et al., ImageNet table): ResNet-50 25.56M, + GC (r = 16) 28.08M: GC in every block of c3-c5, not
    c2, which is GC's default placement in a ResNet (every stage gives 28.11M). Its GFLOPs (4.12, 4.13) count
    BatchNorm, ReLU and pooling too (mmcv's counter); multiply-adds alone are 4.089 and 4.098 (docs/reproduction.md)."""
    with torch.device("meta"):
        gc_c3_c5 = cbam.create_model("resnet50_gc")
        plain = count_parameters(cbam.create_model("resnet50"))
        c3_c5 = count_parameters(gc_c3_c5)
        every = count_parameters(cbam.create_model("resnet50", attention="gc", attention_stages=(1, 2, 3, 4)))
    assert (round(plain / 1e6, 2), round(c3_c5 / 1e6, 2), round(every / 1e6, 2)) == (25.56, 28.08, 28.11)
    assert round(count_macs(gc_c3_c5) / 1e9, 3) == 4.098
    # c2's three C = 256 blocks: the 1 x 1 mask (with bias), conv 256 -> 16, LayerNorm, conv 16 -> 256, all with biases
    per_block = (256 + 1) + (256 * 16 + 16) + 2 * 16 + (16 * 256 + 256)
    assert every - c3_c5 == 3 * per_block


@pytest.mark.parametrize(("arch", "printed"), [("resnet18", 1.825), ("resnet50", 4.169)])
def test_triplet_attentions_printed_gflops_are_ours_plus_its_z_pools(arch: str, printed: float) -> None:
    """Misra et al. (Table 1): ResNet-18 + Triplet 1.825 GFLOPs, ResNet-50 + Triplet 4.169. Ours count the 7 x 7
    convolutions' multiply-adds (1.8205, 4.1355); the printed figures add one operation per element for each of
    the Z-pool's max and mean in each of the three branches: 6 C H W per block."""
    with torch.device("meta"):
        model = cbam.create_model(arch, attention="triplet")
    macs = count_macs(model)
    shapes: list[torch.Size] = []
    hooks = [b.register_forward_hook(lambda m, i, o: shapes.append(o.shape)) for b in iter_blocks(model)]
    with torch.device("meta"):
        model(torch.empty(1, 3, 224, 224))
    for hook in hooks:
        hook.remove()
    z_pools = sum(6 * shape[1:].numel() for shape in shapes)
    assert round(macs / 1e9, 4) == {"resnet18": 1.8205, "resnet50": 4.1355}[arch]
    assert round((macs + z_pools) / 1e9, 3) == printed


def iter_blocks(model: nn.Module) -> list[nn.Module]:
    """A torchvision-layout ResNet's residual blocks, stage by stage."""
    return [block for stage in (model.layer1, model.layer2, model.layer3, model.layer4) for block in stage]


@pytest.mark.parametrize(
    ("attention", "params", "mmacs", "printed"),
    [
        ("none", 3_504_872, 300.8, ("3.5", "300")),
        ("coord", 3_950_648, 306.7, ("3.95", "310")),  # its own site: after the depthwise convolution
        ({"name": "se", "reduction": 24, "site": "depthwise"}, 3_888_208, 301.2, ("3.89", "300")),
        ({"name": "cbam", "reduction": 24, "site": "depthwise"}, 3_889_808, 302.5, ("3.89", "300")),
    ],
)
def test_mobilenet_v2_rows_of_coordinate_attention_equal_its_printed_figures(attention, params, mmacs, printed):
    """Hou et al. (Table 1, MobileNetV2-1.0): 3.5M / 300M mult-adds plain, + SE 3.89M / 300M, + CBAM 3.89M / 300M,
    + Coordinate Attention 3.95M / 310M, each after the depthwise convolution of the 16 blocks that expand (the
    authors' mbv2_ca leaves the first bare). SE's and CBAM's 3.89M need reduction 24 (16 gives 4.08M, 32 3.79M);
    each printed figure is ours to the digits it prints (the mult-adds to two significant figures)."""
    model = cbam.create_model("torchvision:mobilenet_v2", attention=attention)
    macs = count_macs(model)
    assert count_parameters(model) == params
    assert round(macs / 1e6, 1) == mmacs
    printed_params, printed_macs = printed
    decimals = len(printed_params.partition(".")[2])
    assert f"{params / 1e6:.{decimals}f}" == printed_params
    assert float(f"{macs / 1e6:.2g}") == float(printed_macs)
    if attention != "none":
        assert len(model.cbam_report.insertions) == 16
