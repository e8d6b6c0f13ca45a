"""The pooled-plane convolution op (`cbam.layers.fused.plane_conv`) computes what PyTorch's convolution computes,
within its own rounding (`tests.layers.rounding`), on planes wider than tall and taller than wide (the op turns
those)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from tests.layers.fused.test_gate import CPU_KERNELS, check_every_arch
from tests.layers.rounding import outcomes, rounding_bound


class PlaneConv(nn.Module):
    """PyTorch's 2 -> 1 'same' convolution, the reference of the op."""

    def __init__(self, kernel_size: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 1, kernel_size, padding=kernel_size // 2, bias=False)

    def forward(self, s: torch.Tensor) -> torch.Tensor:
        return self.conv(s)


@CPU_KERNELS
@pytest.mark.parametrize("kernel_size", [7, 3])
@pytest.mark.parametrize("plane", [(3, 2, 12, 30), (3, 2, 30, 12), (2, 2, 1, 1), (2, 2, 5, 2)])
def test_the_op_equals_pytorch_s_convolution_within_its_rounding(kernel_size: int, plane: tuple[int, ...]) -> None:
    reference = PlaneConv(kernel_size)
    s, upstream = torch.randn(plane), torch.randn(plane[0], 1, *plane[2:])

    def op(layer: PlaneConv, s: torch.Tensor) -> torch.Tensor:
        return torch.ops.cbam.plane_conv(s, layer.conv.weight, "cpu")

    check_every_arch(rounding_bound(reference, [s], upstream), reference, [s], upstream, step=op, what=f"{plane}")


@pytest.mark.parametrize("plane", [(3, 2, 12, 30), (3, 2, 30, 12)])
def test_without_loops_the_op_runs_pytorch_s_convolution(plane: tuple[int, ...]) -> None:
    """The `reference` kernel set (no C compiler) has no loops: the op is PyTorch's convolution, bit for bit."""
    reference = PlaneConv(7)
    s, upstream = torch.randn(plane), torch.randn(plane[0], 1, *plane[2:])

    def op(layer: PlaneConv, s: torch.Tensor) -> torch.Tensor:
        return torch.ops.cbam.plane_conv(s, layer.conv.weight, "reference")

    actual = outcomes(reference, [s], upstream, step=op)
    expected = outcomes(reference, [s], upstream)
    for key, value in expected.items():
        torch.testing.assert_close(actual[key], value, rtol=0, atol=0, msg=key)


@CPU_KERNELS
@pytest.mark.parametrize("requires_grad", [False, True])
@pytest.mark.parametrize("plane", [(2, 2, 6, 9), (2, 2, 9, 6)])
def test_custom_op_registration_passes_opcheck(requires_grad: bool, plane: tuple[int, ...]) -> None:
    s = torch.randn(plane, requires_grad=requires_grad)
    w = torch.randn(1, 2, 3, 3, requires_grad=requires_grad)
    torch.library.opcheck(torch.ops.cbam.plane_conv.default, (s, w, "cpu"))
