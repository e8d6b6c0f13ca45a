"""SimAM through fused passes: one read of the map for its statistics, one for the weighting.

Eager SimAM (`cbam.layers.simam`) runs eight ops over the full map, and autograd keeps four maps of its size for
backward. The fused op reads x once per pass (`primitives.simam_stats`, then `simam_apply`) and saves x and two
numbers per channel; its backward is two more passes (`simam_grad_stats`, then `simam_input_grad`: the gradient is
written out in `primitives`). `torch.ops.cbam.simam` and its backward are registered custom ops, so `torch.compile`
and `opcheck` see one node each. They count no FLOPs, as FlopCounterMode counts none for eager SimAM's
element-wise ops.
"""

from __future__ import annotations

import torch
from torch import Tensor

from cbam.layers.fused.backends import kernels
from cbam.layers.maps import dense_layout


def simam_forward(x: Tensor, e_lambda: float, backend: str) -> tuple[Tensor, Tensor, Tensor]:
    """(out, mean, inv): SimAM's output in x's dtype and layout, and its per-channel statistics, (N, C) float32."""
    k, x3 = kernels(backend), dense_layout(x).flatten(2)
    mean, inv = k.simam_stats(x3, e_lambda)
    return _own(k.simam_apply(x3, mean, inv).view(x.shape)), mean, inv


def simam_backward(grad: Tensor, x: Tensor, mean: Tensor, inv: Tensor, backend: str) -> Tensor:
    """The gradient of x, from that of the output and the forward's statistics."""
    k, x3, g3 = kernels(backend), dense_layout(x).flatten(2), grad.flatten(2)
    a, b = k.simam_grad_stats(x3, g3, mean, inv)
    return _own(k.simam_input_grad(x3, g3, mean, inv, a, b).view(x.shape))


def _own(t: Tensor) -> Tensor:
    """t as a tensor of its own, not a view: what a custom op must return, and what callers may change in place."""
    return t.detach() if t._base is not None else t


simam_op = torch.library.custom_op(
    "cbam::simam",
    simam_forward,
    mutates_args=(),
    schema="(Tensor x, float e_lambda, str backend) -> (Tensor, Tensor, Tensor)",
)
simam_backward_op = torch.library.custom_op(
    "cbam::simam_backward",
    simam_backward,
    mutates_args=(),
    schema="(Tensor grad, Tensor x, Tensor mean, Tensor inv, str backend) -> Tensor",
)


@simam_op.register_fake
def _(x: Tensor, e_lambda: float, backend: str) -> tuple[Tensor, Tensor, Tensor]:
    stats = x.new_empty(x.shape[:2], dtype=torch.float32)
    return torch.empty_like(dense_layout(x)), stats, stats.clone()


@simam_backward_op.register_fake
def _(grad: Tensor, x: Tensor, mean: Tensor, inv: Tensor, backend: str) -> Tensor:
    return torch.empty_like(dense_layout(x), dtype=grad.dtype)


def _setup_context(ctx, inputs: tuple, output: tuple[Tensor, Tensor, Tensor]) -> None:
    x, _, ctx.backend = inputs
    ctx.save_for_backward(x, output[1], output[2])
    ctx.mark_non_differentiable(output[1], output[2])


def _backward(ctx, grad_out: Tensor | None, _grad_mean: Tensor, _grad_inv: Tensor) -> tuple[Tensor | None, None, None]:
    if grad_out is None:
        return None, None, None
    x, mean, inv = ctx.saved_tensors
    return torch.ops.cbam.simam_backward(grad_out, x, mean, inv, ctx.backend), None, None


simam_op.register_autograd(_backward, setup_context=_setup_context)
