"""Every attention layer: any batch and H x W, dtypes, memory formats, gradients, scripting, compile."""

import copy
import functools

import pytest
import torch

import cbam
from tests.conftest import randomize_
from tests.layers.rounding import outcomes, rounding_bound

LAYERS = {
    "channel": functools.partial(cbam.ChannelAttention, pool_types="avg+max+lp+lse"),
    "spatial": cbam.SpatialAttention,
    "spatial-conv": functools.partial(cbam.SpatialAttention, descriptor="conv", kernel_size=3),
    "cbam": cbam.CBAM,
    "cbam-spatial-first": functools.partial(cbam.CBAM, arrangement="spatial-channel"),
    "cbam-parallel": functools.partial(cbam.CBAM, arrangement="parallel"),
    "se": cbam.SqueezeExcite,
    "bam": cbam.BAM,
    "eca": cbam.layers.EfficientChannelAttention,
    "ceca": functools.partial(cbam.layers.EfficientChannelAttention, circular=True),
    "ese": cbam.layers.EffectiveSqueezeExcite,
    "ge": cbam.layers.GatherExcite,
    "ge-theta": functools.partial(cbam.layers.GatherExcite, extent=4, parametric=True),
    "gc": functools.partial(cbam.layers.GlobalContext, fusion="scale"),
    "coord": cbam.layers.CoordinateAttention,
    "simam": cbam.layers.SimAM,
    "triplet": cbam.layers.TripletAttention,
}
SHAPES = [(1, 1, 1), (1, 7, 7), (3, 1, 9), (2, 5, 8), (4, 14, 14)]


@pytest.fixture(params=sorted(LAYERS))
def make_layer(request):
    return LAYERS[request.param]


@pytest.mark.parametrize(("n", "h", "w"), SHAPES)
def test_output_shape_equals_input_shape(make_layer, n, h, w):
    layer = randomize_(make_layer(32)).eval()
    x = torch.randn(n, 32, h, w)
    assert layer(x).shape == x.shape


def test_train_mode_works_for_batches_of_two_at_1x1(make_layer):
    layer = make_layer(16).train()
    assert layer(torch.randn(2, 16, 1, 1)).shape == (2, 16, 1, 1)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_keeps_dtype_and_stays_close_to_fp32(make_layer, dtype):
    layer = randomize_(make_layer(32)).eval()
    x = torch.randn(2, 32, 6, 5)
    ref = layer(x)
    out = layer.to(dtype)(x.to(dtype))
    assert out.dtype == dtype
    torch.testing.assert_close(out.float(), ref, atol=0.05, rtol=0.05)


def test_channels_last_is_preserved_and_equal(make_layer):
    layer = randomize_(make_layer(32)).eval()
    x = torch.randn(2, 32, 6, 9)
    out = layer(x.to(memory_format=torch.channels_last))
    assert out.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(out, layer(x))


def test_gradients_reach_every_parameter_and_the_input(make_layer):
    """Every parameter is in the graph: autograd gives it a gradient (a detach or a no-grad region would leave
    None). Its value may be exactly zero for some weights, with every unit of a small ReLU layer off or for a bias
    just before a BatchNorm in training (which normalises it away), so only the input's is required to be nonzero:
    x * gate has a nonzero gradient whatever the weights."""
    layer = randomize_(make_layer(32)).train()
    x = torch.randn(2, 32, 6, 6, requires_grad=True)
    layer(x).square().sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert [name for name, p in layer.named_parameters() if p.grad is None] == []


def test_autocast_bf16_on_cpu(make_layer):
    layer = randomize_(make_layer(32)).eval()
    x = torch.randn(2, 32, 6, 6)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = layer(x)
    torch.testing.assert_close(out.float(), layer(x), atol=0.1, rtol=0.05)


def test_torchscript_matches_eager(make_layer):
    layer = randomize_(make_layer(32)).eval()
    scripted = torch.jit.script(layer)
    x = torch.randn(2, 32, 5, 7)
    torch.testing.assert_close(scripted(x), layer(x))


def test_torch_compile_traces_without_graph_breaks(make_layer):
    torch._dynamo.reset()
    layer = randomize_(make_layer(32)).eval()
    compiled = torch.compile(layer, fullgraph=True, backend="eager")  # fullgraph: a graph break raises
    x = torch.randn(2, 32, 5, 7)
    torch.testing.assert_close(compiled(x), layer(x))


def test_cbam_compiles_with_inductor_forward_and_backward():
    """Inductor's kernels (built for this CPU) against the eager layer, within the eager layer's own rounding."""
    torch._dynamo.reset()
    layer = randomize_(cbam.CBAM(32)).train()
    before = copy.deepcopy(layer)
    compiled = torch.compile(layer, fullgraph=True)
    x, upstream = torch.randn(2, 32, 8, 8), torch.randn(2, 32, 8, 8)
    actual = outcomes(layer, [x], upstream, step=lambda _, x: compiled(x))
    rounding_bound(before, [x], upstream).check(actual, "inductor")
