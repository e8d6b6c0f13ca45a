"""SimAM's fused op (`cbam.layers.fused.simam`) computes what the eager layer and autograd compute, on every kernel
set, within the eager layer's own rounding (`tests.layers.rounding`), and keeps less for backward."""

from __future__ import annotations

import copy

import pytest
import torch

from cbam.layers import fused
from cbam.layers.fused import simam as fused_simam
from cbam.layers.simam import SimAM
from cbam.networks.counting import saved_activation_ratio
from tests.layers.fused.test_gate import CPU_KERNELS, as_layout, check_every_arch
from tests.layers.rounding import outcomes, rounding_bound

# odd sizes over several vectors, a 1 x 1 map (every weight sigmoid(1/2)), P = 2 (n = P - 1 = 1), C = 1, and a map
# whose channels-last rows split into blocks
SHAPES = [(3, 24, 9, 11), (2, 5, 1, 1), (2, 3, 1, 2), (1, 1, 6, 6), (2, 300, 7, 5)]


def compare(x: torch.Tensor, impl: str = "compiled", e_lambda: float = 1e-4) -> None:
    """SimAM with `impl` against eager SimAM in x's dtype: output and input gradient, on every CPU target."""
    eager = SimAM(x.shape[1], e_lambda=e_lambda, impl="eager")
    layer = fused.set_attention_impl(copy.deepcopy(eager), impl)
    upstream = torch.randn(x.shape)
    out, expected = layer(x), eager(x)
    assert out.stride() == expected.stride() and out.dtype == x.dtype, "the output keeps the input's layout"
    check_every_arch(rounding_bound(eager, [x], upstream), layer, [x], upstream, what=f"SimAM {tuple(x.shape)}")


@CPU_KERNELS
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("layout", ["nchw", "channels_last", "strided"])
def test_compiled_matches_eager_in_float32(shape: tuple[int, ...], layout: str) -> None:
    compare(as_layout(torch.randn(shape), layout))


@CPU_KERNELS
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
def test_compiled_matches_eager_in_half_precision(dtype: torch.dtype, layout: str) -> None:
    compare(as_layout(torch.randn(2, 32, 8, 8, dtype=dtype), layout))


@CPU_KERNELS
def test_a_large_lambda_a_far_mean_and_saturated_weights_match_eager() -> None:
    """lambda = 0.5 (the energy's floor matters); a mean far from zero (the squared deviations must be taken about
    it, not from a sum of squares); a channel with one outlier, whose weight saturates at 1."""
    compare(torch.randn(2, 8, 6, 7), e_lambda=0.5)
    compare(torch.randn(2, 8, 6, 7) * 0.01 + 100.0)
    x = torch.randn(2, 8, 6, 7) * 1e-3
    x[:, 2, 3, 3] = 50.0
    compare(x)


@pytest.mark.parametrize("backend", ["reference", "inductor"])
def test_plain_pytorch_and_inductor_kernels_match_eager(backend: str) -> None:
    """The op on `primitives.py` (the fallback without a C compiler) and compiled by inductor (CUDA's
    impl="compiled"), here on the CPU."""
    x, upstream = torch.randn(2, 6, 5, 7), torch.randn(2, 6, 5, 7)

    def op_only(layer: SimAM, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.cbam.simam(x, layer.e_lambda, backend)[0]

    actual = outcomes(SimAM(6), [x], upstream, step=op_only)
    rounding_bound(SimAM(6, impl="eager"), [x], upstream).check(actual, f"SimAM on the {backend} kernels")


@CPU_KERNELS
@pytest.mark.parametrize("requires_grad", [False, True])
@pytest.mark.parametrize("layout", ["nchw", "channels_last", "strided"])
def test_custom_op_registration_passes_opcheck(requires_grad: bool, layout: str) -> None:
    x = as_layout(torch.randn(2, 8, 5, 6), layout).requires_grad_(requires_grad)
    torch.library.opcheck(torch.ops.cbam.simam.default, (x, 1e-4, "cpu"))


@CPU_KERNELS
def test_fused_simam_saves_its_input_and_two_numbers_per_channel() -> None:
    x = torch.randn(2, 64, 16, 16).contiguous(memory_format=torch.channels_last)
    assert saved_activation_ratio(SimAM(64, impl="compiled"), x) == 1.0 + 2 / (16 * 16)
    assert saved_activation_ratio(SimAM(64, impl="eager"), x) >= 3.0, "what eager autograd keeps"


@CPU_KERNELS
def test_torch_compile_traces_the_fused_op_in_one_graph() -> None:
    eager, layer = SimAM(16, impl="eager"), SimAM(16, impl="compiled")
    compiled = torch.compile(layer, fullgraph=True, backend="aot_eager")
    x, upstream = torch.randn(2, 16, 8, 8), torch.randn(2, 16, 8, 8)
    actual = outcomes(layer, [x], upstream, step=lambda _, x: compiled(x))
    rounding_bound(eager, [x], upstream).check(actual, "torch.compile around SimAM's op")


@CPU_KERNELS
def test_auto_fuses_large_cpu_maps_and_leaves_small_ones_eager(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []
    original = fused_simam.simam_forward
    monkeypatch.setattr("cbam.layers.simam.simam_forward", lambda *a: calls.append(a[2]) or original(*a))
    layer = SimAM(64)
    with torch.no_grad():
        layer(torch.randn(1, 64, 4, 4))
        assert calls == [], "a map below AUTO_MIN_ELEMENTS runs eagerly"
        layer(torch.randn(2, 64, 32, 32))
    assert calls == ["cpu"]
    assert "impl=auto" in repr(layer)


def test_output_can_be_modified_in_place() -> None:
    """The op's output is a tensor of its own (not a view of a pass's work), so a block may add to it in place."""
    x = torch.randn(2, 4, 5, 5, requires_grad=True)
    out = SimAM(4, impl="compiled")(x)
    assert out._base is None
    out.add_(1.0).sum().backward()
    assert x.grad is not None
