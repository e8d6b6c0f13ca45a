"""SimAM's four passes (`primitives.simam_*`): composed with their hand-written gradient they compute what the eager
layer and autograd compute, within the eager layer's own rounding (`tests.layers.rounding`)."""

import pytest
import torch
from torch import Tensor, nn

from cbam.layers.fused import primitives as ref
from cbam.layers.simam import SimAM
from tests.layers.rounding import outcomes, rounding_bound


class _SimamByPasses(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, e_lambda: float) -> Tensor:
        flat = x.flatten(2)
        mean, inv = ref.simam_stats(flat, e_lambda)
        ctx.save_for_backward(x, mean, inv)
        return ref.simam_apply(flat, mean, inv).view_as(x)

    @staticmethod
    def backward(ctx, g: Tensor) -> tuple[Tensor, None]:
        x, mean, inv = ctx.saved_tensors
        flat, g_flat = x.flatten(2), g.flatten(2)
        a, b = ref.simam_grad_stats(flat, g_flat, mean, inv)
        return ref.simam_input_grad(flat, g_flat, mean, inv, a, b).view_as(x), None


class SimamByPasses(nn.Module):
    """The four passes as one layer; only the input and two numbers per channel are saved for backward."""

    def __init__(self, e_lambda: float = 1e-4) -> None:
        super().__init__()
        self.e_lambda = e_lambda

    def forward(self, x: Tensor) -> Tensor:
        return _SimamByPasses.apply(x, self.e_lambda)


# P > 1 with odd sizes, a 1 x 1 map (every weight sigmoid(1/2)), P = 2 (the smallest n = P - 1), C = 1
SHAPES = [(2, 5, 7, 3), (3, 4, 1, 1), (2, 3, 1, 2), (1, 1, 6, 6)]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("e_lambda", [1e-4, 0.5])
def test_passes_equal_eager_simam_and_its_autograd_gradient(shape: tuple[int, ...], e_lambda: float) -> None:
    x, upstream = torch.randn(shape), torch.randn(shape)
    eager = SimAM(shape[1], e_lambda=e_lambda)
    bound = rounding_bound(eager, [x], upstream)
    bound.check(outcomes(SimamByPasses(e_lambda), [x], upstream), f"SimAM passes {shape}")


def test_passes_keep_half_precision_and_channels_last() -> None:
    x = torch.randn(2, 6, 5, 4).to(torch.bfloat16).contiguous(memory_format=torch.channels_last)
    upstream = torch.randn(2, 6, 5, 4)
    bound = rounding_bound(SimAM(6), [x], upstream)
    got = outcomes(SimamByPasses(), [x], upstream)
    bound.check(got, "SimAM passes bf16 channels_last")
    assert got["output"].dtype == torch.bfloat16
    assert got["output"].is_contiguous(memory_format=torch.channels_last)
