"""Each layer against a direct re-statement of the paper's equations, with the layer's own weights."""

import pytest
import torch
import torch.nn.functional as F

import cbam
from cbam.layers.channel import hidden_width
from tests.conftest import randomize_


def mlp_ref(v, layer):
    """W1 ReLU(W0 v + b0) + b1 on (N, C) descriptors."""
    w0, b0 = layer.mlp[0].weight, layer.mlp[0].bias
    w1, b1 = layer.mlp[2].weight, layer.mlp[2].bias
    return torch.relu(v @ w0.T + b0) @ w1.T + b1


def channel_ref(x, layer, pools):
    """Eq. (2): Mc = sigmoid(sum over pools of MLP(pool(F))), broadcast over H, W."""
    descriptors = {
        "avg": x.mean((2, 3)),
        "max": x.amax((2, 3)),
        "lp": x.pow(2).sum((2, 3)).sqrt(),
        "lse": x.exp().sum((2, 3)).log(),
    }
    logits = sum(mlp_ref(descriptors[p], layer) for p in pools)
    return torch.sigmoid(logits)[:, :, None, None]


def bn_eval_ref(z, bn):
    return (z - bn.running_mean.view(1, -1, 1, 1)) / torch.sqrt(
        bn.running_var.view(1, -1, 1, 1) + bn.eps
    ) * bn.weight.view(1, -1, 1, 1) + bn.bias.view(1, -1, 1, 1)


def spatial_ref(x, layer):
    """Eq. (3): Ms = sigmoid(BN(f_kxk([AvgPool_c(F); MaxPool_c(F)]))), or a 1x1 conv descriptor."""
    if layer.reduce is not None:
        d = F.conv2d(x, layer.reduce.weight, layer.reduce.bias)
    else:
        d = torch.cat([x.mean(1, keepdim=True), x.amax(1, keepdim=True)], 1)
    k = layer.conv.kernel_size[0]
    z = F.conv2d(d, layer.conv.weight, layer.conv.bias, padding=k // 2)
    if layer.bn is not None:
        z = bn_eval_ref(z, layer.bn)
    return torch.sigmoid(z)


@pytest.mark.parametrize("pools", [("avg",), ("max",), ("avg", "max"), ("avg", "max", "lp", "lse")])
def test_channel_attention_equals_eq2(pools):
    layer = randomize_(cbam.ChannelAttention(32, reduction=4, pool_types=pools)).double().eval()
    x = torch.randn(3, 32, 5, 6, dtype=torch.float64)
    torch.testing.assert_close(layer.attention_map(x), channel_ref(x, layer, pools))
    torch.testing.assert_close(layer(x), channel_ref(x, layer, pools) * x)


@pytest.mark.parametrize(
    ("descriptor", "kernel_size", "batch_norm"),
    [("pool", 7, True), ("pool", 3, False), ("conv", 7, True), ("conv", 3, True)],
)
def test_spatial_attention_equals_eq3(descriptor, kernel_size, batch_norm):
    layer = cbam.SpatialAttention(16, kernel_size=kernel_size, descriptor=descriptor, batch_norm=batch_norm)
    layer = randomize_(layer).double().eval()
    x = torch.randn(2, 16, 9, 11, dtype=torch.float64)
    torch.testing.assert_close(layer.attention_map(x), spatial_ref(x, layer))
    torch.testing.assert_close(layer(x), spatial_ref(x, layer) * x)


def test_cbam_sequential_equals_eq1():
    layer = randomize_(cbam.CBAM(32, reduction=8)).double().eval()
    x = torch.randn(2, 32, 7, 5, dtype=torch.float64)
    f1 = channel_ref(x, layer.channel, ("avg", "max")) * x
    f2 = spatial_ref(f1, layer.spatial) * f1
    torch.testing.assert_close(layer(x), f2)


def test_cbam_spatial_first_applies_spatial_then_channel():
    layer = randomize_(cbam.CBAM(32, reduction=8, arrangement="spatial-channel")).double().eval()
    x = torch.randn(2, 32, 7, 5, dtype=torch.float64)
    f1 = spatial_ref(x, layer.spatial) * x
    f2 = channel_ref(f1, layer.channel, ("avg", "max")) * f1
    torch.testing.assert_close(layer(x), f2)


def test_cbam_parallel_adds_raw_maps_before_one_sigmoid():
    layer = randomize_(cbam.CBAM(32, reduction=8, arrangement="parallel")).double().eval()
    x = torch.randn(2, 32, 7, 5, dtype=torch.float64)
    mc = torch.logit(channel_ref(x, layer.channel, ("avg", "max")))
    ms = torch.logit(spatial_ref(x, layer.spatial))
    torch.testing.assert_close(layer(x), torch.sigmoid(mc + ms) * x)


def test_cbam_with_one_branch_equals_that_branch():
    x = torch.randn(2, 16, 6, 6)
    only_channel = randomize_(cbam.CBAM(16, spatial=False)).eval()
    ref = cbam.ChannelAttention(16).eval()
    ref.load_state_dict({k.removeprefix("channel."): v for k, v in only_channel.state_dict().items()})
    torch.testing.assert_close(only_channel(x), ref(x))
    only_spatial = randomize_(cbam.CBAM(16, channel=False, arrangement="parallel")).eval()
    ref_s = cbam.SpatialAttention(16).eval()
    ref_s.load_state_dict({k.removeprefix("spatial."): v for k, v in only_spatial.state_dict().items()})
    torch.testing.assert_close(only_spatial(x), ref_s(x))


def test_squeeze_excite_is_channel_attention_with_avg_only():
    se = randomize_(cbam.SqueezeExcite(64)).eval()
    channel = cbam.ChannelAttention(64, pool_types="avg").eval()
    channel.load_state_dict(se.state_dict())
    x = torch.randn(2, 64, 4, 4)
    torch.testing.assert_close(se(x), channel(x))
    torch.testing.assert_close(se(x), x * torch.sigmoid(mlp_ref(x.mean((2, 3)), se))[:, :, None, None])


def bam_ref(x, layer):
    """Park et al.: F * (1 + sigmoid(Mc + Ms)), both branches with BatchNorm in eval mode."""
    h = layer.channel_mlp
    v = x.mean((2, 3)) @ h[0].weight.T + h[0].bias
    v = (v - h[1].running_mean) / torch.sqrt(h[1].running_var + h[1].eps) * h[1].weight + h[1].bias
    mc = (torch.relu(v) @ h[3].weight.T + h[3].bias)[:, :, None, None]
    s = x
    convs = list(layer.spatial_convs)
    for conv, bn in zip(convs[0:-1:3], convs[1::3], strict=True):
        s = torch.relu(
            bn_eval_ref(F.conv2d(s, conv.weight, conv.bias, padding=conv.padding, dilation=conv.dilation), bn)
        )
    ms = F.conv2d(s, convs[-1].weight, convs[-1].bias)
    return mc, ms


@pytest.mark.parametrize("combine", ["sum", "product"])
def test_bam_equals_its_formula(combine):
    layer = randomize_(cbam.BAM(64, combine=combine)).double().eval()
    x = torch.randn(2, 64, 12, 10, dtype=torch.float64)
    mc, ms = bam_ref(x, layer)
    raw = mc + ms if combine == "sum" else mc * ms
    torch.testing.assert_close(layer(x), x * (1 + torch.sigmoid(raw)))
    assert [m.dilation for m in layer.spatial_convs if isinstance(m, torch.nn.Conv2d)] == [
        (1, 1),
        (4, 4),
        (4, 4),
        (1, 1),
    ]


@pytest.mark.parametrize(
    ("channels", "reduction", "hidden"),
    [(256, 16, 16), (22, 16, 1), (44, 16, 3), (716, 16, 45), (8, 16, 1), (1, 16, 1)],
)
def test_hidden_width_rounds_to_nearest_and_is_at_least_one(channels, reduction, hidden):
    assert hidden_width(channels, reduction) == hidden
    assert cbam.ChannelAttention(channels, reduction).mlp[0].out_features == hidden


def test_channel_mlp_has_biases_as_the_paper_counts():
    # ResNet50's first block: C = 256, r = 16 -> 2 * 256 * 16 weights + 16 + 256 biases
    assert sum(p.numel() for p in cbam.ChannelAttention(256).parameters()) == 2 * 256 * 16 + 16 + 256
    # 7x7 conv over 2 descriptors without bias, BatchNorm scale and shift
    assert sum(p.numel() for p in cbam.SpatialAttention(256).parameters()) == 2 * 49 + 2


def test_spatial_attention_starts_at_one_half_like_the_authors_init():
    layer = cbam.SpatialAttention(8).eval()
    x = torch.randn(2, 8, 5, 5)
    torch.testing.assert_close(layer.attention_map(x), torch.full((2, 1, 5, 5), 0.5))
