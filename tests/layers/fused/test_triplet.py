"""Triplet Attention's fused passes (`cbam.layers.fused.triplet`, with `plane_conv`) compute what the eager layer
and autograd compute, within the eager layer's own rounding (`tests.layers.rounding`), and keep less for backward."""

from __future__ import annotations

import copy

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from cbam.layers import fused
from cbam.layers.triplet import TripletAttention
from cbam.networks.counting import saved_activation_ratio
from tests.layers.fused.test_gate import CPU_KERNELS, as_layout, check_every_arch
from tests.layers.rounding import outcomes, rounding_bound
from tests.layers.test_equations import randomize_

# a square map, maps far wider and far taller than deep (each branch's plane then turns one way or the other),
# a 1 x 1 map and one channel
SHAPES = [(2, 16, 9, 11), (2, 4, 3, 40), (2, 40, 33, 3), (3, 5, 1, 1), (2, 1, 6, 7)]


def compare(x: torch.Tensor, train: bool, no_spatial: bool = False) -> None:
    """A training (or eval) step of Triplet Attention through the C loops against the eager layer: output, every
    gradient and the BatchNorm buffers, within the eager layer's rounding, on every CPU target."""
    eager = randomize_(TripletAttention(x.shape[1], no_spatial=no_spatial, impl="eager")).to(x.dtype).train(train)
    layer = fused.set_attention_impl(copy.deepcopy(eager), "compiled")
    assert layer._backend(x) == "cpu"
    upstream = torch.randn(x.shape)
    out, expected = copy.deepcopy(layer)(x), copy.deepcopy(eager)(x)
    assert out.stride() == expected.stride() and out.dtype == x.dtype, "the output keeps the input's layout"
    check_every_arch(rounding_bound(eager, [x], upstream), layer, [x], upstream, what=f"Triplet {tuple(x.shape)}")


@CPU_KERNELS
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("train", [True, False])
def test_triplet_through_the_loops_matches_eager_in_float32(shape: tuple[int, ...], train: bool) -> None:
    compare(torch.randn(shape), train)


@CPU_KERNELS
@pytest.mark.parametrize("layout", ["channels_last", "strided"])
def test_triplet_through_the_loops_matches_eager_in_every_layout_and_without_its_spatial_branch(layout: str) -> None:
    compare(as_layout(torch.randn(2, 12, 7, 9), layout), train=True)
    compare(as_layout(torch.randn(2, 12, 7, 9), layout), train=True, no_spatial=True)


@CPU_KERNELS
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_triplet_through_the_loops_matches_eager_in_half_precision(dtype: torch.dtype) -> None:
    compare(torch.randn(2, 16, 8, 8, dtype=dtype), train=True)


@CPU_KERNELS
def test_flop_counter_counts_what_it_counts_for_the_eager_layer_forward_and_backward() -> None:
    x = torch.randn(2, 16, 12, 10, requires_grad=True)
    counts = []
    for impl in ("eager", "compiled"):
        with FlopCounterMode(display=False) as counter:
            TripletAttention(16, impl=impl)(x).sum().backward()
        counts.append(counter.get_total_flops())
    assert counts[0] == counts[1] > 0


@CPU_KERNELS
def test_torch_compile_traces_triplet_with_the_op_in_one_graph() -> None:
    layer = randomize_(TripletAttention(8, impl="compiled"))
    eager = fused.set_attention_impl(copy.deepcopy(layer), "eager")
    x, upstream = torch.randn(2, 8, 6, 9), torch.randn(2, 8, 6, 9)

    def compiled(module: TripletAttention, x: torch.Tensor) -> torch.Tensor:
        return torch.compile(module, fullgraph=True, backend="aot_eager")(x)

    actual = outcomes(layer, [x], upstream, step=compiled)
    rounding_bound(eager, [x], upstream).check(actual, "torch.compile around Triplet's ops")


@CPU_KERNELS
def test_auto_runs_the_loops_on_large_cpu_maps_and_pytorch_on_small_ones() -> None:
    layer = TripletAttention(64)
    assert layer._backend(torch.randn(1, 64, 4, 4)) == "", "a map below AUTO_MIN_ELEMENTS runs eagerly"
    assert layer._backend(torch.randn(2, 64, 32, 32)) == "cpu"
    assert fused.set_attention_impl(layer, "eager")._backend(torch.randn(2, 64, 32, 32)) == ""
    assert "impl=eager" in repr(layer)


@CPU_KERNELS
@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
def test_tied_maxima_share_their_gradient_as_torch_amax_does(layout: str) -> None:
    """A map of few distinct values (a ReLU's zeros, a quantised input) ties in every pool."""
    compare(as_layout(torch.randint(0, 3, (2, 6, 5, 7)).float(), layout), train=True)


@CPU_KERNELS
@pytest.mark.parametrize("requires_grad", [False, True])
@pytest.mark.parametrize("layout", ["nchw", "channels_last", "strided"])
def test_custom_op_registrations_pass_opcheck(requires_grad: bool, layout: str) -> None:
    x = as_layout(torch.randn(2, 6, 5, 7), layout).requires_grad_(requires_grad)
    torch.library.opcheck(torch.ops.cbam.triplet_pool.default, (x, "cpu"))
    gates = [torch.rand(shape, requires_grad=requires_grad) for shape in ((2, 6, 7), (2, 6, 5), (2, 5, 7))]
    torch.library.opcheck(torch.ops.cbam.triplet_apply.default, (x, *gates, "cpu"))
    torch.library.opcheck(torch.ops.cbam.triplet_apply.default, (x, *gates[:2], None, "cpu"))


@CPU_KERNELS
@pytest.mark.parametrize("size", [16, 56])
def test_fused_triplet_keeps_one_map_fewer_than_eager_for_backward(size: int) -> None:
    """Both keep x and the small pooled planes and gates; eager also keeps a full map of the summed gates."""
    x = torch.randn(2, 64, size, size).contiguous(memory_format=torch.channels_last)
    fused_ratio = saved_activation_ratio(TripletAttention(64, impl="compiled"), x)
    assert fused_ratio == saved_activation_ratio(TripletAttention(64, impl="eager"), x) - 1.0
    assert fused_ratio < 1.0 + 16 / size, "beyond x, planes of a side of the map each"
