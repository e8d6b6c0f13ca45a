"""Each attention module CBAM is compared with, against its reference with the same weights copied in: timm's
module where timm has one that computes the paper's function, else the authors' formulas written out here as
small modules. Outputs, the input's gradient, every parameter's gradient and every buffer must be as close to
the reference's float64 run as the reference's own float32 run is (`tests.layers.rounding`)."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from cbam.errors import ConfigError
from cbam.layers import (
    CoordinateAttention,
    EffectiveSqueezeExcite,
    EfficientChannelAttention,
    GatherExcite,
    GlobalContext,
    SimAM,
    TripletAttention,
)
from cbam.layers.eca import adaptive_kernel_size
from tests.conftest import randomize_
from tests.layers.rounding import outcomes, rounding_bound

timm_layers = pytest.importorskip("timm.layers")
timm_coord = pytest.importorskip("timm.layers.coord_attn")


def copy_weights(ours: nn.Module, reference: nn.Module, names: dict[str, str]) -> None:
    """Each of our parameters and buffers (`ours name -> reference name`) set to the reference's, reshaped."""
    theirs = reference.state_dict()
    state = ours.state_dict()
    assert set(names) == set(state), f"unmapped: {set(state) ^ set(names)}"
    ours.load_state_dict({k: theirs[v].reshape(state[k].shape) for k, v in names.items()})


def assert_matches(ours: nn.Module, reference: nn.Module, names: dict[str, str], x: torch.Tensor) -> None:
    """Ours and the reference, one forward and backward in float32: ours within the reference's own rounding."""
    torch.manual_seed(1)
    upstream = torch.randn_like(copy.deepcopy(reference)(x))  # a copy: its BatchNorm statistics stay
    bound = rounding_bound(reference, [x], upstream)
    mine = outcomes(ours, [x], upstream)
    renamed = {}
    for key, value in mine.items():
        for prefix in ("gradient of ", "buffer "):
            if key.startswith(prefix) and key.removeprefix(prefix) in names:
                key = prefix + names[key.removeprefix(prefix)]
        renamed[key] = value.reshape(bound.exact[key].shape) if value is not None and key in bound.exact else value
    bound.check(renamed, type(ours).__name__)


def identity_names(module: nn.Module) -> dict[str, str]:
    return {k: k for k in module.state_dict()}


# ---------------------------------------------------------------------------------------------
# The authors' formulas, for the modules whose reference is the authors' own code


class AuthorsECA(nn.Module):
    """ECA-Net's `eca_layer`: pool, the channels as a 1-D sequence, conv1d(k, zero padding), sigmoid, scale."""

    def __init__(self, k: int) -> None:
        super().__init__()
        self.conv = nn.Conv1d(1, 1, kernel_size=k, padding=(k - 1) // 2, bias=False)

    def forward(self, x):
        y = F.adaptive_avg_pool2d(x, 1)
        y = self.conv(y.squeeze(-1).transpose(-1, -2)).transpose(-1, -2).unsqueeze(-1)
        return x * torch.sigmoid(y).expand_as(x)


class AuthorsCoordAtt(nn.Module):
    """The authors' `CoordAtt`: pools along W and H, a shared biased 1x1 conv + BN + h_swish, two gates."""

    def __init__(self, c: int, mip: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c, mip, 1)
        self.bn1 = nn.BatchNorm2d(mip)
        self.conv_h = nn.Conv2d(mip, c, 1)
        self.conv_w = nn.Conv2d(mip, c, 1)

    def forward(self, x):
        _, _, h, w = x.shape
        x_h = F.adaptive_avg_pool2d(x, (None, 1))
        x_w = F.adaptive_avg_pool2d(x, (1, None)).permute(0, 1, 3, 2)
        y = self.bn1(self.conv1(torch.cat([x_h, x_w], dim=2)))
        y = y * F.relu6(y + 3) / 6
        x_h, x_w = torch.split(y, [h, w], dim=2)
        return x * torch.sigmoid(self.conv_w(x_w.permute(0, 1, 3, 2))) * torch.sigmoid(self.conv_h(x_h))


def simam_reference(x, e_lambda=1e-4):
    """SimAM's forward as its authors write it."""
    n = x.shape[2] * x.shape[3] - 1
    d = (x - x.mean(dim=[2, 3], keepdim=True)).pow(2)
    y = d / (4 * (d.sum(dim=[2, 3], keepdim=True) / n + e_lambda)) + 0.5
    return x * torch.sigmoid(y)


class AuthorsSimAM(nn.Module):
    def forward(self, x):
        return simam_reference(x)


class AuthorsGate(nn.Module):
    """Triplet Attention's `AttentionGate`: Z-pool (max, mean), conv k x k without bias, BN, sigmoid, scale."""

    def __init__(self, k: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 1, k, padding=(k - 1) // 2, bias=False)
        self.bn = nn.BatchNorm2d(1, eps=1e-5, momentum=0.01)

    def forward(self, x):
        z = torch.cat([torch.max(x, 1)[0].unsqueeze(1), torch.mean(x, 1).unsqueeze(1)], dim=1)
        return x * torch.sigmoid(self.bn(self.conv(z)))


class AuthorsTriplet(nn.Module):
    def __init__(self, k: int) -> None:
        super().__init__()
        self.cw, self.hc, self.hw = AuthorsGate(k), AuthorsGate(k), AuthorsGate(k)

    def forward(self, x):
        x1 = self.cw(x.permute(0, 2, 1, 3).contiguous()).permute(0, 2, 1, 3).contiguous()
        x2 = self.hc(x.permute(0, 3, 2, 1).contiguous()).permute(0, 3, 2, 1).contiguous()
        return 1 / 3 * (self.hw(x) + x1 + x2)


class ReferenceGETheta(nn.Module):
    """GE-theta (Hu et al., Sect. 3): log2(e) stride-2 depthwise 3x3 convs with BN (ReLU between), nearest
    upsampling, sigmoid. (timm 1.0.31's `GatherExcite(extra_params=True)` fails to build, so it is restated.)"""

    def __init__(self, c: int, extent: int) -> None:
        super().__init__()
        steps = int(math.log2(extent))
        self.convs = nn.ParameterList([nn.Parameter(torch.empty(c, 1, 3, 3)) for _ in range(steps)])
        self.bns = nn.ModuleList([nn.BatchNorm2d(c) for _ in range(steps)])

    def forward(self, x):
        y = x
        for i, (w, bn) in enumerate(zip(self.convs, self.bns, strict=True)):
            y = bn(F.conv2d(y, w, stride=2, padding=1, groups=x.shape[1]))
            y = torch.relu(y) if i < len(self.convs) - 1 else y
        return x * torch.sigmoid(F.interpolate(y, size=x.shape[-2:], mode="nearest"))


class AuthorsGC(nn.Module):
    """GCNet's `ContextBlock` with pooling 'att' and fusion 'channel_add' or 'channel_mul'."""

    def __init__(self, c: int, planes: int, fusion: str) -> None:
        super().__init__()
        self.conv_mask = nn.Conv2d(c, 1, 1)
        self.mlp = nn.Sequential(nn.Conv2d(c, planes, 1), nn.LayerNorm([planes, 1, 1]), nn.ReLU(inplace=True),
                                 nn.Conv2d(planes, c, 1))  # fmt: skip
        self.fusion = fusion

    def forward(self, x):
        b, c, h, w = x.shape
        mask = F.softmax(self.conv_mask(x).view(b, 1, h * w), dim=2).unsqueeze(-1)  # (B, 1, HW, 1)
        context = torch.matmul(x.view(b, 1, c, h * w), mask).view(b, c, 1, 1)
        term = self.mlp(context)
        return x + term if self.fusion == "add" else x * torch.sigmoid(term)


# ---------------------------------------------------------------------------------------------
# Parity


@pytest.mark.parametrize(("channels", "size"), [(64, 3), (256, 5), (512, 5), (2048, 7)])
def test_eca_kernel_size_follows_the_paper_s_adaptive_rule(channels, size):
    assert adaptive_kernel_size(channels) == size
    assert EfficientChannelAttention(channels).kernel_size == size


@pytest.mark.parametrize("channels", [64, 256])
def test_eca_equals_the_authors_layer_and_timm_s(channels):
    ours = EfficientChannelAttention(channels)
    x = torch.randn(2, channels, 5, 6)
    authors = randomize_(AuthorsECA(ours.kernel_size))
    copy_weights(ours, authors, {"conv.weight": "conv.weight"})
    assert_matches(ours, authors, {"conv.weight": "conv.weight"}, x)
    timm = randomize_(timm_layers.EcaModule(channels))
    copy_weights(ours, timm, {"conv.weight": "conv.weight"})
    assert_matches(ours, timm, {"conv.weight": "conv.weight"}, x)


def test_circular_eca_equals_timm_s_ceca():
    ours = EfficientChannelAttention(64, circular=True)
    timm = randomize_(timm_layers.CecaModule(64))
    copy_weights(ours, timm, {"conv.weight": "conv.weight"})
    assert_matches(ours, timm, {"conv.weight": "conv.weight"}, torch.randn(2, 64, 4, 5))


def test_effective_se_equals_timm_s():
    names = {"fc.weight": "fc.weight", "fc.bias": "fc.bias"}
    ours = EffectiveSqueezeExcite(32)
    timm = randomize_(timm_layers.EffectiveSEModule(32))
    copy_weights(ours, timm, names)
    assert_matches(ours, timm, names, torch.randn(3, 32, 6, 5))


@pytest.mark.parametrize("extent", [0, 2, 4])
def test_parameter_free_gather_excite_equals_timm_s(extent):
    ours = GatherExcite(16, extent=extent)
    timm = timm_layers.GatherExcite(16, extent=extent, use_mlp=False)
    assert_matches(ours, timm, {}, torch.randn(2, 16, 9, 8))
    assert sum(p.numel() for p in ours.parameters()) == 0


@pytest.mark.parametrize("extent", [2, 8])
def test_parametric_gather_excite_equals_its_formula(extent):
    ours = randomize_(GatherExcite(8, extent=extent, parametric=True))
    reference = ReferenceGETheta(8, extent)
    steps = int(math.log2(extent))
    names = {}
    for i in range(steps):
        names[f"gather.{3 * i}.weight"] = f"convs.{i}"
        for part in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked"):
            names[f"gather.{3 * i + 1}.{part}"] = f"bns.{i}.{part}"
    reference.load_state_dict({names[k]: v for k, v in ours.state_dict().items()})
    assert_matches(ours, reference, names, torch.randn(2, 8, 16, 13))


def test_global_parametric_gather_excite_needs_the_map_size_and_pools_it_to_one_value():
    with pytest.raises(ConfigError, match="needs feat_size"):
        GatherExcite(8, parametric=True)
    layer = randomize_(GatherExcite(8, parametric=True, feat_size=5)).eval()
    x = torch.randn(2, 8, 5, 5, dtype=torch.float64)
    layer = layer.double()
    conv, bn = layer.gather[0], layer.gather[1]
    context = F.batch_norm(F.conv2d(x, conv.weight, groups=8), bn.running_mean, bn.running_var, bn.weight,
                           bn.bias, eps=bn.eps)  # fmt: skip
    assert context.shape[-2:] == (1, 1)
    torch.testing.assert_close(layer(x), x * torch.sigmoid(context))


@pytest.mark.parametrize("fusion", ["add", "scale"])
def test_global_context_equals_the_authors_block(fusion):
    ours = randomize_(GlobalContext(64, fusion=fusion))
    reference = AuthorsGC(64, 4, fusion)
    names = {"key.weight": "conv_mask.weight", "key.bias": "conv_mask.bias",
             **{f"transform.{i}.{p}": f"mlp.{i}.{p}" for i in (0, 1, 3) for p in ("weight", "bias")}}  # fmt: skip
    reference.load_state_dict({names[k]: v for k, v in ours.state_dict().items()})
    assert_matches(ours, reference, names, torch.randn(2, 64, 7, 6))


def test_global_context_equals_timm_s_with_the_same_norm_epsilon():
    ours = randomize_(GlobalContext(64, fusion="scale", reduction=8, layer_norm_eps=1e-6))
    timm = timm_layers.GlobalContext(64)  # fuse_scale, rd_ratio 1/8, LayerNorm2d (eps 1e-6)
    names = {"key.weight": "conv_attn.weight", "key.bias": "conv_attn.bias",
             "transform.0.weight": "mlp_scale.fc1.weight", "transform.0.bias": "mlp_scale.fc1.bias",
             "transform.1.weight": "mlp_scale.norm.weight", "transform.1.bias": "mlp_scale.norm.bias",
             "transform.3.weight": "mlp_scale.fc2.weight", "transform.3.bias": "mlp_scale.fc2.bias"}  # fmt: skip
    timm.load_state_dict({names[k]: v.reshape(timm.state_dict()[names[k]].shape)
                          for k, v in ours.state_dict().items()})  # fmt: skip
    assert_matches(ours, timm, names, torch.randn(2, 64, 5, 5))


def test_global_context_starts_as_the_identity_under_add():
    layer = GlobalContext(32)
    x = torch.randn(2, 32, 4, 4)
    assert torch.equal(layer(x), x)


@pytest.mark.parametrize("train", [True, False])
def test_coordinate_attention_equals_the_authors_module(train):
    ours = randomize_(CoordinateAttention(64)).train(train)
    reference = AuthorsCoordAtt(64, max(8, 64 // 32)).train(train)
    names = {"conv.weight": "conv1.weight", "conv.bias": "conv1.bias", "bn.weight": "bn1.weight",
             "bn.bias": "bn1.bias", "bn.running_mean": "bn1.running_mean", "bn.running_var": "bn1.running_var",
             "bn.num_batches_tracked": "bn1.num_batches_tracked", "conv_h.weight": "conv_h.weight",
             "conv_h.bias": "conv_h.bias", "conv_w.weight": "conv_w.weight", "conv_w.bias": "conv_w.bias"}  # fmt: skip
    reference.load_state_dict({names[k]: v for k, v in ours.state_dict().items()})
    assert_matches(ours, reference, names, torch.randn(3, 64, 7, 5))


def test_coordinate_attention_timm_variant_equals_timm_s_coord_attn():
    ours = randomize_(CoordinateAttention(128, variant="timm"))
    timm = timm_coord.CoordAttn(128)
    names = {"conv.weight": "conv1.weight", "conv_h.weight": "conv_h.weight", "conv_w.weight": "conv_w.weight",
             **{f"bn.{p}": f"bn1.{p}" for p in ("weight", "bias", "running_mean", "running_var",
                                                 "num_batches_tracked")}}  # fmt: skip
    assert timm.conv1.out_channels == ours.conv.out_channels and timm.conv1.bias is None
    timm.load_state_dict({names[k]: v for k, v in ours.state_dict().items()})
    assert_matches(ours, timm, names, torch.randn(2, 128, 6, 6))


def test_coordinate_attention_widths_are_the_authors_and_timm_s():
    assert CoordinateAttention(64).conv.out_channels == 8  # max(8, 64 // 32)
    assert CoordinateAttention(1024).conv.out_channels == 32
    assert CoordinateAttention(1024).conv.bias is not None
    assert CoordinateAttention(1024, variant="timm").conv.out_channels == timm_coord.CoordAttn(1024).conv1.out_channels


def test_simam_equals_the_authors_formula_and_has_no_parameters():
    assert_matches(SimAM(16), AuthorsSimAM(), {}, torch.randn(2, 16, 6, 7))
    assert list(SimAM(16).parameters()) == []


def test_simam_on_a_one_by_one_map_gives_sigmoid_one_half_instead_of_nan():
    x = torch.randn(2, 4, 1, 1)
    assert torch.isnan(simam_reference(x)).all()
    torch.testing.assert_close(SimAM(4)(x), x * torch.sigmoid(torch.tensor(0.5)))


@pytest.mark.parametrize("kernel_size", [7, 3])
def test_triplet_attention_equals_the_authors_module(kernel_size):
    ours = randomize_(TripletAttention(16, kernel_size=kernel_size))
    reference = AuthorsTriplet(kernel_size)
    names = identity_names(ours)
    reference.load_state_dict(ours.state_dict())
    assert_matches(ours, reference, names, torch.randn(2, 16, 9, 11))
    assert sum(p.numel() for p in ours.parameters()) == 3 * (2 * kernel_size**2 + 2)


# ---------------------------------------------------------------------------------------------
# Bad options


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: EfficientChannelAttention(64, kernel_size=4), "must be odd"),
        (lambda: EfficientChannelAttention(64, kernel_size=5, gamma=3), "do not apply"),
        (lambda: EffectiveSqueezeExcite(8, gate="relu"), "gate is one of"),
        (lambda: GatherExcite(8, extent=3), "power of 2"),
        (lambda: GatherExcite(8, feat_size=4), "applies to a global GE-theta only"),
        (lambda: GlobalContext(8, fusion="mul"), "fusion is one of"),
        (lambda: CoordinateAttention(8, variant="paper"), "variant is one of"),
        (lambda: SimAM(8, e_lambda=0), "must be positive"),
        (lambda: TripletAttention(8, kernel_size=6), "must be odd"),
    ],
)
def test_an_option_that_does_not_apply_is_one_line_naming_it(build, message):
    with pytest.raises(ConfigError, match=message):
        build()


@pytest.mark.parametrize(
    "layer",
    [
        EfficientChannelAttention(8),
        EffectiveSqueezeExcite(8),
        GatherExcite(8),
        GlobalContext(8),
        CoordinateAttention(8),
        SimAM(8),
        TripletAttention(8),
    ],
)
def test_an_input_that_is_no_feature_map_is_refused_naming_the_layer(layer):
    with pytest.raises(ConfigError, match=r"takes an \(N, C, H, W\) feature map, got a 3-D input"):
        layer(torch.randn(2, 8, 5))
