"""One fused attention gate: out = x * Mc * Ms with a backward that recomputes instead of saving.

The gate covers CBAM in the paper's configuration (channel then spatial), its channel-only and
spatial-only ablations, and squeeze-and-excitation. Work on the full map goes through one of
the kernel sets (`primitives`, `cpu_kernels`, `triton_kernels`); the small graphs (the shared
MLP on (N, C), the k x k convolution and BatchNorm on (N, 2, H, W)) are written here with their
gradients. The forward saves only x (and after a fused ReLU its output, as nn.ReLU keeps it):
the backward recomputes the pooled descriptors, the maps and the max indices in the passes it
needs anyway.

`torch.ops.cbam.attention_gate` and its backward are registered custom ops, so `torch.compile`
treats the gate as one opaque node and still differentiates through it. Each has a FLOP formula
for `torch.utils.flop_counter`, so `FlopCounterMode` counts the MLP's matrix products and the
k x k convolution inside the op exactly as it counts them in the eager layers.
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Sequence
from dataclasses import dataclass
from types import ModuleType

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.flop_counter import register_flop_formula

BACKENDS: tuple[str, ...] = ("reference", "cpu", "triton", "inductor")


def kernels(backend: str) -> ModuleType:
    """The kernel module for a backend name; triton and inductor are imported on first use."""
    if backend == "reference":
        return importlib.import_module("cbam.layers.fused.primitives")
    if backend == "cpu":
        return importlib.import_module("cbam.layers.fused.cpu_kernels")
    if backend == "triton":
        return importlib.import_module("cbam.layers.fused.triton_kernels")
    if backend == "inductor":
        return importlib.import_module("cbam.layers.fused.inductor_kernels")
    raise ValueError(f"unknown fused backend {backend!r}; choose from {', '.join(BACKENDS)}")


def _forward_stats(k: ModuleType, fn: str, *args: Tensor | None) -> tuple[Tensor, Tensor]:
    """Mean and max of a pooling pass; the forward never needs the index, so skip it where possible."""
    mean, mx, _ = getattr(k, fn)(*args, with_index=False)
    return mean, mx


@dataclass(frozen=True)
class ChannelGraph:
    """The channel gate's small graph: Mc = sigmoid(sum over pools of MLP(pool)), in float32.

    `pooled` stacks the descriptors: (pools, N, C), so each layer of the MLP is one call.
    """

    w1: Tensor
    b1: Tensor
    w2: Tensor
    b2: Tensor

    def forward(self, pooled: Tensor) -> tuple[Tensor, Tensor]:
        """Mc (N, C) and the hidden activations (pools, N, C/r), kept for the backward."""
        hidden = F.relu(F.linear(pooled, self.w1.float(), self.b1.float()))
        return torch.sigmoid(F.linear(hidden, self.w2.float(), self.b2.float()).sum(0)), hidden

    def backward(self, pooled: Tensor, hidden: Tensor, mc: Tensor, dmc: Tensor) -> tuple[Tensor, list[Tensor]]:
        """Gradients of the stacked descriptors and of (w1, b1, w2, b2)."""
        dz = dmc * mc * (1 - mc)
        dhidden = (dz @ self.w2.float()) * (hidden > 0)
        dw1 = torch.einsum("pnh,pnc->hc", dhidden, pooled)
        dw2 = dz.t() @ hidden.sum(0)
        return dhidden @ self.w1.float(), [dw1, dhidden.sum((0, 1)), dw2, dz.sum(0) * pooled.shape[0]]


@dataclass(frozen=True)
class SpatialGraph:
    """The spatial gate's small graph: Ms = sigmoid(BN(conv_kxk([mean; max]))), in float32.

    The convolution runs in the kernel set's own `conv_same` where it has one (the CPU kernels:
    direct loops beat a general convolution on one 7 x 7 output channel), else in PyTorch.
    """

    conv_w: Tensor
    conv_b: Tensor | None
    bn_w: Tensor | None
    bn_b: Tensor | None
    bn_mean: Tensor | None
    bn_var: Tensor | None
    bn_training: bool
    bn_eps: float
    kernels: ModuleType | None = None

    def _conv(self, s: Tensor) -> Tensor:
        if hasattr(self.kernels, "conv_same"):
            return self.kernels.conv_same(s, self.conv_w, self.conv_b)
        b = self.conv_b.float() if self.conv_b is not None else None
        return F.conv2d(s, self.conv_w.float(), b, padding=self.conv_w.shape[-1] // 2)

    def _conv_backward(self, s: Tensor, dz: Tensor) -> tuple[Tensor, Tensor, Tensor | None]:
        if hasattr(self.kernels, "conv_same_backward"):
            ds, dw, db = self.kernels.conv_same_backward(s, self.conv_w, dz)
            return ds, dw, db if self.conv_b is not None else None
        k = self.conv_w.shape[-1]
        bias_sizes = [1] if self.conv_b is not None else None
        return torch.ops.aten.convolution_backward(
            dz, s, self.conv_w.float(), bias_sizes, [1, 1], [k // 2, k // 2], [1, 1], False, [0, 0], 1,
            [True, True, self.conv_b is not None],
        )  # fmt: skip

    def _eval_affine(self) -> tuple[float, float]:
        """BatchNorm in eval mode (or none) as z * scale + shift, in Python floats for the C loops."""
        if self.bn_w is None:
            return 1.0, 0.0
        scale = float(self.bn_w) / math.sqrt(float(self.bn_var) + self.bn_eps)
        return scale, float(self.bn_b) - float(self.bn_mean) * scale

    def _normalise(self, z: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(z - mean) / std with the batch's statistics in training, the running ones otherwise."""
        if self.bn_training:
            mean, var = z.mean(), z.var(unbiased=False)
        else:
            mean, var = self.bn_mean.float().reshape(()), self.bn_var.float().reshape(())
        inv_std = torch.rsqrt(var + self.bn_eps)
        return (z - mean) * inv_std, mean, var

    def forward(self, s: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Ms (N, 1, H, W) and the batch mean and variance of the conv output (for running stats)."""
        if not self.bn_training and hasattr(self.kernels, "conv_same"):
            none = s.new_zeros(())
            return self.kernels.conv_same(s, self.conv_w, self.conv_b, self._eval_affine()), none, none
        z = self._conv(s)
        if self.bn_w is None:
            return torch.sigmoid(z), z.new_zeros(()), z.new_zeros(())
        zh, mean, var = self._normalise(z)
        return torch.sigmoid(zh * self.bn_w.float() + self.bn_b.float()), mean, var

    def forward_backward(self, s: Tensor, dms: Tensor) -> tuple[Tensor, Tensor, list[Tensor | None]]:
        """Ms, the gradient of the descriptor s and those of (conv_w, conv_b, bn_w, bn_b), one conv each way."""
        z = self._conv(s)
        bn_grads: list[Tensor | None] = [None, None]
        if self.bn_w is None:
            ms = torch.sigmoid(z)
            dz = dms * ms * (1 - ms)
        else:
            zh, _, var = self._normalise(z)
            ms = torch.sigmoid(zh * self.bn_w.float() + self.bn_b.float())
            dlogit = dms * ms * (1 - ms)
            bn_grads = [(dlogit * zh).sum().reshape(1), dlogit.sum().reshape(1)]
            scale = self.bn_w.float() * torch.rsqrt(var + self.bn_eps)
            dz = dlogit * scale
            if self.bn_training:
                dz = dz - scale * (dlogit.mean() + zh * (dlogit * zh).mean())
        ds, dw, db = self._conv_backward(s, dz)
        return ms, ds, [dw, db, *bn_grads]


def _ncp(x: Tensor) -> Tensor:
    return x.flatten(2)


def _pools(use_avg: bool, use_max: bool, avg: Tensor, mx: Tensor) -> Tensor:
    if use_avg and use_max:
        return torch.stack([avg, mx])
    return (avg if use_avg else mx).unsqueeze(0)


def _descriptor(mean: Tensor, mx: Tensor, shape: torch.Size) -> Tensor:
    n, _, h, w = shape
    return torch.stack([mean, mx], dim=1).view(n, 2, h, w)


def _gate_forward(
    x: Tensor,
    shortcut: Tensor | None,
    w1: Tensor | None,
    b1: Tensor | None,
    w2: Tensor | None,
    b2: Tensor | None,
    conv_w: Tensor | None,
    conv_b: Tensor | None,
    bn_w: Tensor | None,
    bn_b: Tensor | None,
    bn_mean: Tensor | None,
    bn_var: Tensor | None,
    use_avg: bool,
    use_max: bool,
    bn_training: bool,
    bn_eps: float,
    backend: str,
    relu: bool,
    into_input: bool = False,
) -> tuple[Tensor, Tensor, Tensor]:
    k = kernels(backend)
    x3 = _ncp(x)
    mc = None
    if w1 is not None:
        avg, mx = _forward_stats(k, "channel_stats", x3)
        mc, _ = ChannelGraph(w1, b1, w2, b2).forward(_pools(use_avg, use_max, avg, mx))
    z_mean = z_var = x.new_zeros((), dtype=torch.float32)
    ms = None
    if conv_w is not None:
        spatial = SpatialGraph(conv_w, conv_b, bn_w, bn_b, bn_mean, bn_var, bn_training, bn_eps, k)
        smean, smax = _forward_stats(k, "spatial_stats", x3, mc)
        ms4, z_mean, z_var = spatial.forward(_descriptor(smean, smax, x.shape))
        ms = ms4.flatten(1)
    shortcut3 = _ncp(shortcut) if shortcut is not None else None
    written = k.gate_apply(x3, mc, ms, shortcut3, relu, out=x3 if into_input else None)
    # detach: a tensor of its own, not a view, so callers may add to it in place (torchvision's `out += identity`)
    out = x if written is x3 else written.view(x.shape).detach()
    return out, z_mean.detach().clone(), z_var.detach().clone()


def gate_forward(
    x: Tensor,
    shortcut: Tensor | None,
    w1: Tensor | None,
    b1: Tensor | None,
    w2: Tensor | None,
    b2: Tensor | None,
    conv_w: Tensor | None,
    conv_b: Tensor | None,
    bn_w: Tensor | None,
    bn_b: Tensor | None,
    bn_mean: Tensor | None,
    bn_var: Tensor | None,
    use_avg: bool,
    use_max: bool,
    bn_training: bool,
    bn_eps: float,
    backend: str,
    relu: bool,
) -> tuple[Tensor, Tensor, Tensor]:
    """The fused gate's forward: (out, batch mean, batch variance of the spatial conv output).

    out = x * Mc * Ms, then `+ shortcut` if one is given and a ReLU if `relu`: the tail of a
    residual block in the same pass. This is the function `torch.ops.cbam.attention_gate` runs.
    """
    return _gate_forward(
        x, shortcut, w1, b1, w2, b2, conv_w, conv_b, bn_w, bn_b, bn_mean, bn_var,
        use_avg, use_max, bn_training, bn_eps, backend, relu,
    )  # fmt: skip


def gate_forward_into_input(*args: object) -> tuple[Tensor, Tensor, Tensor]:
    """`gate_forward` (same arguments) writing its output over x: for inference, where x is a
    temporary nobody reads again. Never through the dispatcher: it mutates x."""
    return _gate_forward(*args, into_input=True)


attention_gate = torch.library.custom_op("cbam::attention_gate", gate_forward, mutates_args=())


@attention_gate.register_fake
def _(x, shortcut, w1, b1, w2, b2, conv_w, conv_b, bn_w, bn_b, bn_mean, bn_var, *flags):
    scalar = x.new_empty((), dtype=torch.float32)
    return torch.empty_like(x), scalar, scalar.clone()


@torch.library.custom_op("cbam::attention_gate_backward", mutates_args=())
def attention_gate_backward(
    grad: Tensor,
    x: Tensor,
    w1: Tensor | None,
    b1: Tensor | None,
    w2: Tensor | None,
    b2: Tensor | None,
    conv_w: Tensor | None,
    conv_b: Tensor | None,
    bn_w: Tensor | None,
    bn_b: Tensor | None,
    bn_mean: Tensor | None,
    bn_var: Tensor | None,
    use_avg: bool,
    use_max: bool,
    bn_training: bool,
    bn_eps: float,
    backend: str,
) -> list[Tensor]:
    """Gradients of x and of each present parameter (w1, b1, w2, b2, conv_w, conv_b, bn_w, bn_b), in order.

    Four passes over the map: recompute the channel pools, then the spatial pools with the
    gradient of Ms, then the gradient of Mc, then dx (which reads only the incoming gradient).
    """
    k = kernels(backend)
    x3, g3 = _ncp(x), _ncp(grad)
    channel = ChannelGraph(w1, b1, w2, b2) if w1 is not None else None
    mc = pooled = hidden = cidx = None
    if channel is not None:
        avg, cmx, cidx = k.channel_stats(x3)
        pooled = _pools(use_avg, use_max, avg, cmx)
        mc, hidden = channel.forward(pooled)
    ms = dmean = dmax = sidx = None
    spatial_grads: list[Tensor | None] = []
    if conv_w is not None:
        spatial = SpatialGraph(conv_w, conv_b, bn_w, bn_b, bn_mean, bn_var, bn_training, bn_eps, k)
        smean, smax, sidx, dms = k.spatial_grad(x3, g3, mc)
        s = _descriptor(smean, smax, x.shape)
        ms4, ds, spatial_grads = spatial.forward_backward(s, dms.view(x.shape[0], 1, *x.shape[2:]))
        ms = ms4.flatten(1)
        dmean, dmax = ds[:, 0].flatten(1), ds[:, 1].flatten(1)
    channel_grads: list[Tensor] = []
    davg = dcmax = None
    if channel is not None:
        dmc = k.channel_grad(x3, g3, ms, dmean, dmax, sidx)
        dpooled, channel_grads = channel.backward(pooled, hidden, mc, dmc)
        davg = dpooled[0] if use_avg else None
        dcmax = dpooled[-1] if use_max else None
    dx = k.input_grad(g3, mc, ms, dmean, dmax, sidx, davg, dcmax, cidx if use_max else None).view(x.shape)
    params = [w1, b1, w2, b2, conv_w, conv_b, bn_w, bn_b]
    grads = [*channel_grads, *spatial_grads] if channel is not None else [None] * 4 + spatial_grads
    grads = grads + [None] * (len(params) - len(grads))
    return [dx] + [g.to(p.dtype) for p, g in zip(params, grads, strict=True) if p is not None]


@attention_gate_backward.register_fake
def _(grad, x, w1, b1, w2, b2, conv_w, conv_b, bn_w, bn_b, bn_mean, bn_var, *flags):
    params = [w1, b1, w2, b2, conv_w, conv_b, bn_w, bn_b]
    return [torch.empty_like(grad)] + [torch.empty_like(p) for p in params if p is not None]


TENSOR_INPUTS = 12  # x, shortcut, w1, b1, w2, b2, conv_w, conv_b, bn_w, bn_b, bn_mean, bn_var


def _setup_context(ctx, inputs, output) -> None:
    x, shortcut, *params = inputs[:TENSOR_INPUTS]
    ctx.flags = inputs[TENSOR_INPUTS:-1]
    ctx.has_shortcut, ctx.relu = shortcut is not None, inputs[-1]
    if ctx.flags[2]:  # BatchNorm in training normalises by the batch: the running stats are not used
        params[-2:] = [None, None]
    # after a ReLU its output masks the gradient, as nn.ReLU keeps its output for the same purpose
    ctx.save_for_backward(x, output[0] if ctx.relu else None, *params)


def _backward(ctx, grad_out: Tensor | None, _grad_mean: Tensor, _grad_var: Tensor):
    x, out, *params = ctx.saved_tensors
    if grad_out is None:
        grad_out = torch.zeros_like(x)
    if ctx.relu:
        grad_out = torch.ops.aten.threshold_backward(grad_out, out, 0)
    grads = iter(torch.ops.cbam.attention_gate_backward(grad_out, x, *params, *ctx.flags))
    dx = next(grads)
    param_grads = [next(grads) if p is not None else None for p in params[:8]]
    shortcut_grad = grad_out if ctx.has_shortcut else None
    return (dx, shortcut_grad, *param_grads, None, None) + (None,) * (len(ctx.flags) + 1)


attention_gate.register_autograd(_backward, setup_context=_setup_context)


def forward_flops(
    x: Sequence[int], w1: Sequence[int] | None, conv_w: Sequence[int] | None, use_avg: bool, use_max: bool
) -> int:
    """FLOPs (2 per multiply-accumulate) of the gate's forward as FlopCounterMode counts the eager layers:
    the shared MLP's two matrix products per pooled descriptor and the k x k convolution to one channel;
    pooling, BatchNorm, sigmoid and the element-wise products count nothing there, and here."""
    n, c, h, w = x
    flops = 0
    if w1 is not None:
        descriptors = n * (int(use_avg) + int(use_max))
        flops += 2 * 2 * descriptors * c * w1[0]  # (descriptors, C) @ (C, C/r), then (descriptors, C/r) @ (C/r, C)
    if conv_w is not None:
        flops += 2 * n * h * w * math.prod(conv_w)  # conv_w: (1, 2, k, k), one output channel per position
    return flops


@register_flop_formula(torch.ops.cbam.attention_gate)
def _gate_flops(x, shortcut, w1, b1, w2, b2, conv_w, *args, **kwargs) -> int:
    use_avg, use_max = args[5:7]  # after conv_b, bn_w, bn_b, bn_mean, bn_var
    return forward_flops(x, w1, conv_w, use_avg, use_max)


@register_flop_formula(torch.ops.cbam.attention_gate_backward)
def _gate_backward_flops(grad, x, w1, b1, w2, b2, conv_w, *args, **kwargs) -> int:
    """Eager's backward of each matrix product and of the convolution: one product for the input's gradient and
    one for the weight's, each costing the forward's. (The fused backward also recomputes the forward's small
    graphs; like activation checkpointing, that is not counted.)"""
    use_avg, use_max = args[5:7]
    return 2 * forward_flops(x, w1, conv_w, use_avg, use_max)


def update_running_stats(bn: torch.nn.BatchNorm2d, mean: Tensor, var: Tensor, count: int) -> None:
    """Move BatchNorm's running statistics as its own training forward would (unbiased variance)."""
    with torch.no_grad():
        bn.num_batches_tracked.add_(1)
        momentum = bn.momentum if bn.momentum is not None else 1.0 / float(bn.num_batches_tracked)
        unbiased = var * count / max(count - 1, 1)
        bn.running_mean.lerp_(mean.to(bn.running_mean.dtype).expand_as(bn.running_mean), momentum)
        bn.running_var.lerp_(unbiased.to(bn.running_var.dtype).expand_as(bn.running_var), momentum)
