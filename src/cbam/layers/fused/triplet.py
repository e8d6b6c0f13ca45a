"""Triplet Attention through fused passes: one read of the map for all three Z-pools, one for the weighting.

Eager Triplet Attention (`cbam.layers.triplet`) reduces the map six times (a max and a mean along each axis)
and broadcasts three gates into it op by op, and autograd keeps two maps of its size; at ResNet-50's stage
shapes that is 130 to 240 passes over the map for a forward and backward (benchmarks/RESULTS.md). Here
`triplet_pool` returns the three [max; mean] planes (and each max's tie count, so its gradient splits among ties
as `torch.amax`'s does) in one pass, the small graphs (convolution, BatchNorm, sigmoid) run as modules on those
planes, and `triplet_apply` writes out = x (a + b + s) / k in one more; their backwards are one pass each (and
autograd adds their two gradients of x). Only the CPU kernels have these loops (`has_loops`); elsewhere the
eager layer runs. They count no FLOPs, as FlopCounterMode counts none for the eager pools and products.
"""

from __future__ import annotations

from types import ModuleType

import torch
from torch import Tensor

from cbam.layers.fused.backends import kernels
from cbam.layers.maps import dense_layout

Pooled = tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]


def has_loops(k: ModuleType) -> bool:
    """Whether the kernel set `k` has Triplet Attention's passes."""
    return hasattr(k, "triplet_pool")


def _pool(x: Tensor, backend: str) -> Pooled:
    return kernels(backend).triplet_pool(x)


def _pool_backward(
    dpc: Tensor, dph: Tensor, dpw: Tensor, x: Tensor, pc: Tensor, ph: Tensor, pw: Tensor, cc: Tensor, ch: Tensor,
    cw: Tensor, backend: str,
) -> Tensor:  # fmt: skip
    return kernels(backend).triplet_pool_backward((dpc, dph, dpw), x, (pc, ph, pw), (cc, ch, cw))


def _apply(x: Tensor, a: Tensor, b: Tensor, s: Tensor | None, backend: str) -> Tensor:
    return kernels(backend).triplet_apply(x, a, b, s)


def _apply_backward(grad: Tensor, x: Tensor, a: Tensor, b: Tensor, s: Tensor | None, backend: str) -> list[Tensor]:
    dx, da, db, ds = kernels(backend).triplet_apply_backward(grad, x, a, b, s)
    grads = [dx, da.to(a.dtype), db.to(b.dtype)]
    return grads if s is None else [*grads, ds.to(s.dtype)]


pool_op = torch.library.custom_op(
    "cbam::triplet_pool",
    _pool,
    mutates_args=(),
    schema="(Tensor x, str backend) -> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)",
)
pool_backward_op = torch.library.custom_op(
    "cbam::triplet_pool_backward",
    _pool_backward,
    mutates_args=(),
    schema="(Tensor dpc, Tensor dph, Tensor dpw, Tensor x, Tensor pc, Tensor ph, Tensor pw, Tensor cc, "
    "Tensor ch, Tensor cw, str backend) -> Tensor",
)
apply_op = torch.library.custom_op(
    "cbam::triplet_apply",
    _apply,
    mutates_args=(),
    schema="(Tensor x, Tensor a, Tensor b, Tensor? s, str backend) -> Tensor",
)
apply_backward_op = torch.library.custom_op(
    "cbam::triplet_apply_backward",
    _apply_backward,
    mutates_args=(),
    schema="(Tensor grad, Tensor x, Tensor a, Tensor b, Tensor? s, str backend) -> Tensor[]",
)


@pool_op.register_fake
def _(x: Tensor, backend: str) -> Pooled:
    n, c, h, w = x.shape
    planes = [x.new_empty((n, 2, h, w)), x.new_empty((n, 2, c, w)), x.new_empty((n, 2, c, h))]
    counts = [x.new_empty(shape, dtype=torch.float32) for shape in ((n, h, w), (n, c, w), (n, c, h))]
    return (*planes, *counts)


@pool_backward_op.register_fake
def _(dpc, dph, dpw, x: Tensor, *args: object) -> Tensor:
    return torch.empty_like(dense_layout(x))


@apply_op.register_fake
def _(x: Tensor, a: Tensor, b: Tensor, s: Tensor | None, backend: str) -> Tensor:
    return torch.empty_like(dense_layout(x))


@apply_backward_op.register_fake
def _(grad: Tensor, x: Tensor, a: Tensor, b: Tensor, s: Tensor | None, backend: str) -> list[Tensor]:
    grads = [torch.empty_like(dense_layout(x)), torch.empty_like(a), torch.empty_like(b)]
    return grads if s is None else [*grads, torch.empty_like(s)]


def _pool_setup_context(ctx, inputs: tuple, output: Pooled) -> None:
    x, ctx.backend = inputs
    ctx.save_for_backward(x, *output)
    ctx.mark_non_differentiable(*output[3:])


def _pool_backward_formula(ctx, dpc: Tensor, dph: Tensor, dpw: Tensor, *_counts: Tensor) -> tuple[Tensor, None]:
    """The planes' gradients always arrive: autograd passes zeros for an unused one (pc without the spatial branch)."""
    return torch.ops.cbam.triplet_pool_backward(dpc, dph, dpw, *ctx.saved_tensors, ctx.backend), None


def _apply_setup_context(ctx, inputs: tuple, output: Tensor) -> None:
    x, a, b, s, ctx.backend = inputs
    ctx.has_s = s is not None
    ctx.save_for_backward(x, a, b, s)


def _apply_backward_formula(ctx, grad: Tensor) -> tuple[Tensor | None, ...]:
    x, a, b, s = ctx.saved_tensors
    grads = torch.ops.cbam.triplet_apply_backward(grad, x, a, b, s, ctx.backend)
    return grads[0], grads[1], grads[2], grads[3] if ctx.has_s else None, None


pool_op.register_autograd(_pool_backward_formula, setup_context=_pool_setup_context)
apply_op.register_autograd(_apply_backward_formula, setup_context=_apply_setup_context)
