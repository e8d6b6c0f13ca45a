"""The six memory-bound passes of a fused attention gate, written in plain PyTorch.

A gate multiplies the map x (N, C, P = H*W) by a channel weight mc (N, C) and a spatial weight
ms (N, P): out = x * mc * ms. Every other step of CBAM or SE works on (N, C) or (N, 2, P)
tensors and is cheap; these functions are the only ones that touch the full map. They define
the semantics the C and Triton kernels (`cpu_kernels.py`, `triton_kernels.py`) must match, and
inductor compiles them as they are for CUDA (`inductor_kernels.py`).

Conventions shared by every implementation:
- x and g are (N, C, P) views of (N, C, H, W) maps, NCHW or channels_last, any float dtype;
- small results are float32; full-size results have x's dtype and memory layout;
- arithmetic is float32; a max pool's index is the *first* maximum along the pooled axis
  (int64), and its gradient goes to that element alone, as `torch.max(dim)` does;
- an argument given as None is a branch that is absent (no channel gate, no spatial gate).

SimAM (`cbam.layers.simam`) has four passes of its own at the end, two forward and two backward, under the same
conventions: statistics per channel, then the weighting.
"""

from __future__ import annotations

import torch
from torch import Tensor


def channel_stats(x: Tensor, with_index: bool = True) -> tuple[Tensor, Tensor, Tensor]:
    """Mean and max over P per (n, c), and the first index of the max: three (N, C) tensors.

    `with_index=False` lets an implementation skip the index (the forward never needs it).
    """
    xf = x.float()
    mx, idx = xf.max(dim=2)
    return xf.mean(dim=2), mx, idx


def spatial_stats(x: Tensor, mc: Tensor | None, with_index: bool = True) -> tuple[Tensor, Tensor, Tensor]:
    """Mean and max over C of y = x * mc per (n, p), and the first channel of the max: (N, P) each."""
    y = _scaled(x, mc)
    mx, idx = y.max(dim=1)
    return y.mean(dim=1), mx, idx


def spatial_grad(x: Tensor, g: Tensor, mc: Tensor | None) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """`spatial_stats` recomputed, plus dms = sum over C of g * x * mc, the gradient of ms: (N, P)."""
    y = _scaled(x, mc)
    mx, idx = y.max(dim=1)
    return y.mean(dim=1), mx, idx, (g.float() * y).sum(dim=1)


def gate_apply(
    x: Tensor,
    mc: Tensor | None,
    ms: Tensor | None,
    shortcut: Tensor | None = None,
    relu: bool = False,
    out: Tensor | None = None,
) -> Tensor:
    """out = x * mc * ms (+ shortcut) (then ReLU), in x's dtype and memory layout.

    Into `out` where one is given (x itself may be: each element is read before it is written).
    """
    result = _scaled(x, mc)
    if ms is not None:
        result = result * ms.unsqueeze(1)
    if shortcut is not None:
        result = result + shortcut.float()
    if relu:
        result = torch.relu(result)
    return out.copy_(result) if out is not None else result.to(x.dtype)


def channel_grad(
    x: Tensor,
    g: Tensor,
    ms: Tensor | None,
    dmean: Tensor | None,
    dmax: Tensor | None,
    sidx: Tensor | None,
) -> Tensor:
    """dmc = sum over P of dy * x, the gradient of mc: (N, C).

    dy, the gradient of y = x * mc, is g * ms plus what flows back through the spatial
    descriptors: dmean / C to every channel and dmax to channel sidx alone.
    """
    return (_grad_of_scaled(g, ms, dmean, dmax, sidx) * x.float()).sum(dim=2)


def input_grad(
    g: Tensor,
    mc: Tensor | None,
    ms: Tensor | None,
    dmean: Tensor | None,
    dmax: Tensor | None,
    sidx: Tensor | None,
    davg: Tensor | None,
    dcmax: Tensor | None,
    cidx: Tensor | None,
) -> Tensor:
    """dx = dy * mc plus the channel descriptors' share: davg / P everywhere, dcmax at cidx.

    It reads g but not x: every term that depends on x was reduced by the earlier passes.
    """
    dx = _grad_of_scaled(g, ms, dmean, dmax, sidx)
    if mc is not None:
        dx = dx * mc.unsqueeze(2)
    if davg is not None:
        dx = dx + davg.unsqueeze(2) / g.shape[2]
    if dcmax is not None:
        positions = torch.arange(g.shape[2], device=g.device)
        dx = dx + torch.where(positions == cidx.unsqueeze(2), dcmax.unsqueeze(2), 0.0)
    return dx.to(g.dtype)


def _scaled(x: Tensor, mc: Tensor | None) -> Tensor:
    xf = x.float()
    return xf if mc is None else xf * mc.unsqueeze(2)


def _grad_of_scaled(
    g: Tensor, ms: Tensor | None, dmean: Tensor | None, dmax: Tensor | None, sidx: Tensor | None
) -> Tensor:
    dy = g.float()
    if ms is not None:
        dy = dy * ms.unsqueeze(1)
    if dmean is not None:
        dy = dy + dmean.unsqueeze(1) / g.shape[1]
    if dmax is not None:
        channels = torch.arange(g.shape[1], device=g.device)
        dy = dy + torch.where(channels.unsqueeze(1) == sidx.unsqueeze(1), dmax.unsqueeze(1), 0.0)
    return dy


def simam_stats(x: Tensor, e_lambda: float) -> tuple[Tensor, Tensor]:
    """Per channel, the mean mu and inv = 1 / (4 (v + lambda)), v the squared deviations summed over max(P - 1, 1)."""
    xf = x.float()
    mean = xf.mean(dim=2)
    variance = (xf - mean.unsqueeze(2)).pow(2).sum(dim=2) / max(x.shape[2] - 1, 1)
    return mean, 1 / (4 * (variance + e_lambda))


def simam_apply(x: Tensor, mean: Tensor, inv: Tensor) -> Tensor:
    """out = x * sigmoid(inv (x - mu)^2 + 1/2), SimAM's eq. 5."""
    xf = x.float()
    return (xf * _simam_weight(xf, mean, inv)).to(x.dtype)


def simam_grad_stats(x: Tensor, g: Tensor, mean: Tensor, inv: Tensor) -> tuple[Tensor, Tensor]:
    """Per channel, A = sum h d and B = sum h d^2 with d = x - mu and h = g x s (1 - s), s the weight."""
    xf = x.float()
    d = xf - mean.unsqueeze(2)
    s = _simam_weight(xf, mean, inv)
    h = g.float() * xf * s * (1 - s)
    return (h * d).sum(dim=2), (h * d * d).sum(dim=2)


def simam_input_grad(x: Tensor, g: Tensor, mean: Tensor, inv: Tensor, a: Tensor, b: Tensor) -> Tensor:
    """dx = g s + 2 inv (h d - A / P) - 8 inv^2 d B / max(P - 1, 1): the weight's own term, then the mean's and the
    variance's, which reach every element of the channel through A and B."""
    xf = x.float()
    d = xf - mean.unsqueeze(2)
    s = _simam_weight(xf, mean, inv)
    gf = g.float()
    h = gf * xf * s * (1 - s)
    inv_, p = inv.unsqueeze(2), x.shape[2]
    dx = gf * s + 2 * inv_ * (h * d - a.unsqueeze(2) / p) - 8 * inv_ * inv_ * d * b.unsqueeze(2) / max(p - 1, 1)
    return dx.to(g.dtype)


def _simam_weight(xf: Tensor, mean: Tensor, inv: Tensor) -> Tensor:
    return torch.sigmoid(inv.unsqueeze(2) * (xf - mean.unsqueeze(2)).pow(2) + 0.5)
