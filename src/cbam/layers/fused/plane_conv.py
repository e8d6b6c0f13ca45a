"""The k x k 'same' convolution of a two-channel pooled plane to one channel, as one op with its backward.

CBAM's spatial gate and each of Triplet Attention's three branches convolve a (N, 2, A, B) pooled plane to one
channel. A general convolution spends most of a small network's step on these (its backward above all); the C
loops (`cpu_kernels.conv_same`) take a fraction of it where a plane's last side is long enough to vectorise, so a
plane whose rows are shorter than its columns goes through them turned (conv(s^T, w^T) = conv(s, w)^T for an
odd square kernel with same padding). Kernel sets without the loops run PyTorch's convolution.
`torch.ops.cbam.plane_conv` is registered with its backward, fake and FLOP formula, so autograd, `torch.compile`
and `FlopCounterMode` see one node that counts what the eager convolution counts.
"""

from __future__ import annotations

import math
from types import ModuleType

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.flop_counter import register_flop_formula

from cbam.layers.fused.backends import kernels


def has_loops(k: ModuleType | None) -> bool:
    """Whether the kernel set `k` convolves planes in loops of its own (else PyTorch's convolution runs)."""
    return hasattr(k, "conv_same")


def _turned(s: Tensor) -> bool:
    """Whether the loops see s better transposed: its rows (the vectorised side) are shorter than its columns."""
    return s.shape[-1] < s.shape[-2]


def conv_same(k: ModuleType | None, s: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    """conv2d(s, weight, bias, padding=k // 2) in float32, (N, 1, A, B) from (N, C_in, A, B)."""
    if not has_loops(k):
        b = bias.float() if bias is not None else None
        return F.conv2d(s.float(), weight.float(), b, padding=weight.shape[-1] // 2)
    if _turned(s):
        return k.conv_same(s.transpose(2, 3), weight.transpose(2, 3), bias).transpose(2, 3)
    return k.conv_same(s, weight, bias)


def conv_same_backward(
    k: ModuleType | None, s: Tensor, weight: Tensor, dz: Tensor, with_bias: bool
) -> tuple[Tensor, Tensor, Tensor | None]:
    """The float32 gradients of `conv_same` with respect to s, the weight and (`with_bias`) the bias."""
    if not has_loops(k):
        pad = weight.shape[-1] // 2
        return torch.ops.aten.convolution_backward(
            dz.float(), s.float(), weight.float(), [1] if with_bias else None, [1, 1], [pad, pad], [1, 1], False,
            [0, 0], 1, [True, True, with_bias],
        )  # fmt: skip
    if _turned(s):
        ds, dw, db = k.conv_same_backward(s.transpose(2, 3), weight.transpose(2, 3), dz.transpose(2, 3))
        ds, dw = ds.transpose(2, 3), dw.transpose(2, 3)
    else:
        ds, dw, db = k.conv_same_backward(s, weight, dz)
    return ds, dw, db if with_bias else None


def _plane_conv(s: Tensor, weight: Tensor, backend: str) -> Tensor:
    return conv_same(kernels(backend), s, weight, None).to(s.dtype).contiguous()


def _plane_conv_backward(grad: Tensor, s: Tensor, weight: Tensor, backend: str) -> list[Tensor]:
    ds, dw, _ = conv_same_backward(kernels(backend), s, weight, grad, with_bias=False)
    return [ds.to(s.dtype).contiguous(), dw.to(weight.dtype).contiguous()]


plane_conv = torch.library.custom_op(
    "cbam::plane_conv", _plane_conv, mutates_args=(), schema="(Tensor s, Tensor weight, str backend) -> Tensor"
)
plane_conv_backward = torch.library.custom_op(
    "cbam::plane_conv_backward",
    _plane_conv_backward,
    mutates_args=(),
    schema="(Tensor grad, Tensor s, Tensor weight, str backend) -> Tensor[]",
)


@plane_conv.register_fake
def _(s: Tensor, weight: Tensor, backend: str) -> Tensor:
    return s.new_empty((s.shape[0], 1, *s.shape[2:]))


@plane_conv_backward.register_fake
def _(grad: Tensor, s: Tensor, weight: Tensor, backend: str) -> list[Tensor]:
    return [torch.empty_like(s, memory_format=torch.contiguous_format), torch.empty_like(weight)]


def _setup_context(ctx, inputs: tuple, output: Tensor) -> None:
    s, weight, ctx.backend = inputs
    ctx.save_for_backward(s, weight)


def _backward(ctx, grad: Tensor) -> tuple[Tensor, Tensor, None]:
    s, weight = ctx.saved_tensors
    ds, dw = torch.ops.cbam.plane_conv_backward(grad, s, weight, ctx.backend)
    return ds, dw, None


plane_conv.register_autograd(_backward, setup_context=_setup_context)


def forward_flops(s_shape: torch.Size, weight_shape: torch.Size) -> int:
    """2 per multiply-accumulate, as FlopCounterMode counts the eager convolution: k x k x C_in per output."""
    n, _, a, b = s_shape
    return 2 * n * a * b * math.prod(weight_shape)


@register_flop_formula(torch.ops.cbam.plane_conv)
def _conv_flops(s_shape: torch.Size, weight_shape: torch.Size, *args: object, **kwargs: object) -> int:
    return forward_flops(s_shape, weight_shape)


@register_flop_formula(torch.ops.cbam.plane_conv_backward)
def _conv_backward_flops(grad: object, s_shape: torch.Size, weight_shape: torch.Size, *args, **kwargs) -> int:
    """One convolution for the plane's gradient and one for the weight's, each the forward's cost."""
    return 2 * forward_flops(s_shape, weight_shape)
