import torch
from torch import nn

import cbam
from cbam.profile import count_macs, count_parameters, find_paper_rows, measure, measure_arch


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
