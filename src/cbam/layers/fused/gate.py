"""One fused attention gate: out = x * Mc * Ms with a backward that recomputes instead of saving.

The gate covers CBAM in the paper's configuration (channel then spatial), its channel-only and
spatial-only ablations, and every channel gate of the same shape (pool, a small function of the
pooled vector, a sigmoid, scale): squeeze-and-excitation, ECA, effective SE and GE-theta-minus.
Work on the full map goes through one of the kernel sets (`backends.BACKENDS`); the small graphs
(the channel function on (N, C), the k x k convolution and BatchNorm on (N, 2, H, W)) are written
here with their gradients. The forward
saves only x (and after a fused ReLU its output, as nn.ReLU keeps it): the backward recomputes
the pooled descriptors, the maps and the max indices in the passes it needs anyway.

`torch.ops.cbam.attention_gate` and its backward are registered custom ops, so `torch.compile`
treats the gate as one opaque node and still differentiates through it. Their arguments are the
fields of `GateArgs`, in order. Each op has a FLOP formula for `torch.utils.flop_counter`, so
`FlopCounterMode` counts the MLP's matrix products and the k x k convolution inside the op
exactly as it counts them in the eager layers.
"""

from __future__ import annotations

import math
import typing
from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.flop_counter import register_flop_formula

from cbam.layers.fused import plane_conv
from cbam.layers.fused.backends import kernels


class GateArgs(NamedTuple):
    """Everything the fused gate reads; as a tuple, the custom ops' argument list.

    An absent branch leaves its fields at None: no channel gate, no pool either; no spatial gate, conv_w to
    bn_var; a spatial gate without BatchNorm, bn_w to bn_var. Under the FLOP formulas each tensor is its shape.
    """

    x: Tensor
    shortcut: Tensor | None = None  # added before the ReLU: the tail of a residual block
    w1: Tensor | None = None  # the channel function's weights (`CHANNEL_FUNCTIONS`): for "mlp" Linear(C, C/r),
    b1: Tensor | None = None  # ReLU, Linear(C/r, C); for "conv1d" w1 is ECA's (1, 1, k) kernel; for "linear"
    w2: Tensor | None = None  # w1, b1 are eSE's Linear(C, C)
    b2: Tensor | None = None
    conv_w: Tensor | None = None  # the spatial gate's k x k convolution to one channel
    conv_b: Tensor | None = None
    bn_w: Tensor | None = None  # the spatial gate's BatchNorm
    bn_b: Tensor | None = None
    bn_mean: Tensor | None = None
    bn_var: Tensor | None = None
    use_avg: bool = False  # the channel gate's pools (neither: no channel gate)
    use_max: bool = False
    channel_fn: str = "mlp"  # a name in `CHANNEL_FUNCTIONS`: what maps the pooled vector to the gate's logits
    channel_gate: str = "sigmoid"  # or "hard_sigmoid" (effective SE)
    circular: bool = False  # "conv1d" pads the channel axis circularly (timm's CECA) instead of with zeros
    bn_training: bool = False  # normalise by the batch's statistics and report them
    bn_eps: float = 1e-5
    backend: str = "reference"  # a name in `backends.BACKENDS`
    relu: bool = False  # after the shortcut

    @classmethod
    def of_layers(
        cls,
        x: Tensor,
        channel: nn.Module | None,
        spatial: nn.Module | None,
        backend: str,
        shortcut: Tensor | None = None,
        relu: bool = False,
    ) -> GateArgs:
        """The arguments that compute a channel and a spatial attention module (either may be None) on x."""
        fields: dict[str, object] = {}
        if channel is not None:
            fields.update(channel.fused_channel_fields())
        if spatial is not None:
            fields.update(conv_w=spatial.conv.weight, conv_b=spatial.conv.bias)
        bn = spatial.bn if spatial is not None else None
        if bn is not None:
            fields.update(bn_w=bn.weight, bn_b=bn.bias, bn_mean=bn.running_mean, bn_var=bn.running_var)
            fields.update(bn_training=bn.training, bn_eps=bn.eps)
        return cls(x, shortcut, backend=backend, relu=relu, **fields)

    def learnable(self) -> dict[str, Tensor]:
        """The parameters present, by field name, in the order the backward op returns their gradients."""
        present = {name: getattr(self, name) for name in LEARNABLE}
        return {name: p for name, p in present.items() if p is not None}

    def channel_graph(self) -> ChannelGraph | None:
        if not (self.use_avg or self.use_max):
            return None
        if self.channel_fn not in CHANNEL_FUNCTIONS:
            raise ValueError(f"unknown channel function {self.channel_fn!r}; one of {', '.join(CHANNEL_FUNCTIONS)}")
        if self.channel_gate not in CHANNEL_GATES:
            raise ValueError(f"unknown channel gate {self.channel_gate!r}; one of {', '.join(CHANNEL_GATES)}")
        return CHANNEL_FUNCTIONS[self.channel_fn](self)

    def spatial_graph(self, k: ModuleType) -> SpatialGraph | None:
        if self.conv_w is None:
            return None
        bn = (self.bn_w, self.bn_b, self.bn_mean, self.bn_var, self.bn_training, self.bn_eps)
        return SpatialGraph(self.conv_w, self.conv_b, *bn, kernels=k)


LEARNABLE: tuple[str, ...] = ("w1", "b1", "w2", "b2", "conv_w", "conv_b", "bn_w", "bn_b")
# The custom ops' schema is derived from GateArgs' annotations, so the argument list is written once.
_SCHEMA_TYPES: dict[object, str] = {
    Tensor: "Tensor",
    Tensor | None: "Tensor?",
    bool: "bool",
    float: "float",
    str: "str",
}
_ARG_TYPES: dict[str, str] = {name: _SCHEMA_TYPES[hint] for name, hint in typing.get_type_hints(GateArgs).items()}
ARGS_SCHEMA = ", ".join(f"{schema_type} {name}" for name, schema_type in _ARG_TYPES.items())
"""`GateArgs` in the dispatcher's schema language: the ops' arguments are its fields, in order."""
TENSOR_FIELDS: tuple[str, ...] = tuple(
    name for name, schema_type in _ARG_TYPES.items() if schema_type.startswith("Tensor")
)


CHANNEL_GATES: tuple[str, ...] = ("sigmoid", "hard_sigmoid")


@dataclass(frozen=True)
class ChannelGraph:
    """A channel gate's small graph: Mc = gate(f(pooled descriptors)), in float32; subclasses are the functions f.

    The pooled descriptors are stacked, (pools, N, C), so that each layer of f is one call; f sums its result over
    the pools (the paper's eq. 2 for two pools; one pool for every other gate).
    """

    use_avg: bool
    use_max: bool
    gate: str

    def stack(self, avg: Tensor, mx: Tensor) -> Tensor:
        """The descriptors this gate pools, stacked: (pools, N, C)."""
        if self.use_avg and self.use_max:
            return torch.stack([avg, mx])
        return (avg if self.use_avg else mx).unsqueeze(0)

    def unstack(self, dpooled: Tensor) -> tuple[Tensor | None, Tensor | None]:
        """The gradients of the avg and max descriptors from those of `stack`'s result; None for a pool not used."""
        return (dpooled[0] if self.use_avg else None), (dpooled[-1] if self.use_max else None)

    def logits(self, pooled: Tensor) -> tuple[Tensor, object]:
        """f(pooled), (N, C), and what its backward needs."""
        raise NotImplementedError

    def logits_backward(self, pooled: Tensor, saved: object, dlogits: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """Gradients of the stacked descriptors and of f's weights (by `GateArgs` field), from those of f's result."""
        raise NotImplementedError

    def forward(self, pooled: Tensor) -> tuple[Tensor, tuple[Tensor, object]]:
        """Mc (N, C) and what the backward needs."""
        logits, saved = self.logits(pooled)
        if self.gate == "hard_sigmoid":
            return F.relu6(logits + 3.0) / 6.0, (logits, saved)
        return torch.sigmoid(logits), (logits, saved)

    def backward(
        self, pooled: Tensor, cache: tuple[Tensor, object], mc: Tensor, dmc: Tensor
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """Gradients of the stacked descriptors and of the weights, from that of Mc."""
        logits, saved = cache
        if self.gate == "hard_sigmoid":  # relu6(z + 3) / 6: slope 1/6 strictly inside (-3, 3), as autograd has it
            shifted = logits + 3.0
            dlogits = dmc * ((shifted > 0) & (shifted < 6)) / 6.0
        else:
            dlogits = dmc * mc * (1 - mc)
        return self.logits_backward(pooled, saved, dlogits)


@dataclass(frozen=True)
class SharedMlp(ChannelGraph):
    """CBAM's and SE's f: one MLP (C -> C/r -> C, ReLU) shared by the pools, summed (paper eq. 2)."""

    w1: Tensor
    b1: Tensor
    w2: Tensor
    b2: Tensor

    def logits(self, pooled: Tensor) -> tuple[Tensor, Tensor]:
        hidden = F.relu(F.linear(pooled, self.w1.float(), self.b1.float()))
        return F.linear(hidden, self.w2.float(), self.b2.float()).sum(0), hidden

    def logits_backward(self, pooled: Tensor, hidden: Tensor, dz: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        dhidden = (dz @ self.w2.float()) * (hidden > 0)
        grads = {
            "w1": torch.einsum("pnh,pnc->hc", dhidden, pooled),
            "b1": dhidden.sum((0, 1)),
            "w2": dz.t() @ hidden.sum(0),
            "b2": dz.sum(0) * pooled.shape[0],
        }
        return dhidden @ self.w1.float(), grads


@dataclass(frozen=True)
class CrossChannelConv(ChannelGraph):
    """ECA's f: one k-tap convolution along the channel axis, zero- or circularly padded, no bias (ECA-Net eq. 9).

    Padding is an index into the pooled vector (and a mask for zeros), so the backward folds it back with one
    `index_add_` whichever padding it is.
    """

    w1: Tensor  # (1, 1, k)
    circular: bool

    def _padding(self, c: int, device: torch.device) -> tuple[Tensor, Tensor | None]:
        pad = (self.w1.shape[-1] - 1) // 2
        index = torch.arange(-pad, c + pad, device=device)
        if self.circular:
            return index % c, None
        inside = (index >= 0) & (index < c)
        return index.clamp(0, c - 1), inside

    def _padded(self, pooled: Tensor) -> Tensor:
        index, inside = self._padding(pooled.shape[-1], pooled.device)
        padded = pooled[..., index]
        return padded if inside is None else padded * inside

    def logits(self, pooled: Tensor) -> tuple[Tensor, Tensor]:
        pools, n, c = pooled.shape
        padded = self._padded(pooled).reshape(pools * n, 1, -1)
        return F.conv1d(padded, self.w1.float()).view(pools, n, c).sum(0), padded

    def logits_backward(self, pooled: Tensor, padded: Tensor, dz: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        pools, n, c = pooled.shape
        dz = dz.unsqueeze(0).expand(pools, n, c).reshape(pools * n, 1, c)
        dpadded, dw, _ = torch.ops.aten.convolution_backward(
            dz, padded, self.w1.float(), None, [1], [0], [1], False, [0], 1, [True, True, False]
        )
        index, inside = self._padding(c, pooled.device)
        dpadded = dpadded.view(pools, n, -1)
        if inside is not None:
            dpadded = dpadded * inside
        return torch.zeros_like(pooled).index_add_(-1, index, dpadded), {"w1": dw}


@dataclass(frozen=True)
class FullyConnected(ChannelGraph):
    """Effective SE's f: one Linear(C, C), no reduction (CenterMask Sect. 3.3)."""

    w1: Tensor  # (C, C)
    b1: Tensor

    def logits(self, pooled: Tensor) -> tuple[Tensor, None]:
        return F.linear(pooled, self.w1.float(), self.b1.float()).sum(0), None

    def logits_backward(self, pooled: Tensor, saved: None, dz: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        grads = {"w1": dz.t() @ pooled.sum(0), "b1": dz.sum(0) * pooled.shape[0]}
        return (dz @ self.w1.float()).unsqueeze(0).expand_as(pooled), grads


@dataclass(frozen=True)
class PooledIdentity(ChannelGraph):
    """GE-theta-minus with the global extent: the pooled vector itself is the logit (Gather-Excite Sect. 3)."""

    def logits(self, pooled: Tensor) -> tuple[Tensor, None]:
        return pooled.sum(0), None

    def logits_backward(self, pooled: Tensor, saved: None, dz: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        return dz.unsqueeze(0).expand_as(pooled), {}


CHANNEL_FUNCTIONS: dict[str, Callable[[GateArgs], ChannelGraph]] = {
    "mlp": lambda a: SharedMlp(a.use_avg, a.use_max, a.channel_gate, a.w1, a.b1, a.w2, a.b2),
    "conv1d": lambda a: CrossChannelConv(a.use_avg, a.use_max, a.channel_gate, a.w1, a.circular),
    "linear": lambda a: FullyConnected(a.use_avg, a.use_max, a.channel_gate, a.w1, a.b1),
    "none": lambda a: PooledIdentity(a.use_avg, a.use_max, a.channel_gate),
}
"""The functions f a fused channel gate computes, by `GateArgs.channel_fn`."""


@dataclass(frozen=True)
class SpatialGraph:
    """The spatial gate's small graph: Ms = sigmoid(BN(conv_kxk([mean; max]))), in float32.

    The convolution runs in the kernel set's own loops where it has them (`plane_conv`), else in PyTorch.
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
        return plane_conv.conv_same(self.kernels, s, self.conv_w, self.conv_b)

    def _conv_backward(self, s: Tensor, dz: Tensor) -> tuple[Tensor, Tensor, Tensor | None]:
        return plane_conv.conv_same_backward(self.kernels, s, self.conv_w, dz, self.conv_b is not None)

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
        if not self.bn_training and plane_conv.has_loops(self.kernels):
            none = s.new_zeros(())
            return self.kernels.conv_same(s, self.conv_w, self.conv_b, self._eval_affine()), none, none
        z = self._conv(s)
        if self.bn_w is None:
            return torch.sigmoid(z), z.new_zeros(()), z.new_zeros(())
        zh, mean, var = self._normalise(z)
        return torch.sigmoid(zh * self.bn_w.float() + self.bn_b.float()), mean, var

    def forward_backward(self, s: Tensor, dms: Tensor) -> tuple[Tensor, Tensor, dict[str, Tensor | None]]:
        """Ms, the gradient of the descriptor s and those of conv_w, conv_b, bn_w, bn_b (by `GateArgs` field),
        one conv each way."""
        z = self._conv(s)
        grads: dict[str, Tensor | None] = {}
        if self.bn_w is None:
            ms = torch.sigmoid(z)
            dz = dms * ms * (1 - ms)
        else:
            zh, _, var = self._normalise(z)
            ms = torch.sigmoid(zh * self.bn_w.float() + self.bn_b.float())
            dlogit = dms * ms * (1 - ms)
            grads.update(bn_w=(dlogit * zh).sum().reshape(1), bn_b=dlogit.sum().reshape(1))
            scale = self.bn_w.float() * torch.rsqrt(var + self.bn_eps)
            dz = dlogit * scale
            if self.bn_training:
                dz = dz - scale * (dlogit.mean() + zh * (dlogit * zh).mean())
        ds, grads["conv_w"], grads["conv_b"] = self._conv_backward(s, dz)
        return ms, ds, grads


def _without_index(stats: Callable[..., tuple[Tensor, Tensor, Tensor]], *args: Tensor | None) -> tuple[Tensor, Tensor]:
    """Mean and max of a pooling pass; the forward never needs the index, so skip it where possible."""
    mean, mx, _ = stats(*args, with_index=False)
    return mean, mx


def _descriptor(mean: Tensor, mx: Tensor, shape: torch.Size) -> Tensor:
    n, _, h, w = shape
    return torch.stack([mean, mx], dim=1).view(n, 2, h, w)


def gate_forward(args: GateArgs, into_input: bool = False) -> tuple[Tensor, Tensor, Tensor]:
    """The fused gate's forward: (out, batch mean, batch variance of the spatial conv output).

    out = x * Mc * Ms, then `+ shortcut` and a ReLU where asked: the tail of a residual block in the
    same pass. `into_input` writes out over x, for inference where x is a temporary nobody reads again.
    """
    k = kernels(args.backend)
    x, x3 = args.x, args.x.flatten(2)
    channel, spatial = args.channel_graph(), args.spatial_graph(k)
    mc = ms = None
    z_mean = z_var = x.new_zeros((), dtype=torch.float32)
    if channel is not None:
        mc, _ = channel.forward(channel.stack(*_without_index(k.channel_stats, x3)))
    if spatial is not None:
        smean, smax = _without_index(k.spatial_stats, x3, mc)
        ms4, z_mean, z_var = spatial.forward(_descriptor(smean, smax, x.shape))
        ms = ms4.flatten(1)
    shortcut3 = args.shortcut.flatten(2) if args.shortcut is not None else None
    written = k.gate_apply(x3, mc, ms, shortcut3, args.relu, out=x3 if into_input else None)
    # detach: a tensor of its own, not a view, so callers may add to it in place (torchvision's `out += identity`)
    out = x if written is x3 else written.view(x.shape).detach()
    return out, z_mean.detach().clone(), z_var.detach().clone()


def gate_backward(grad: Tensor, args: GateArgs) -> list[Tensor]:
    """Gradients of x and of each present parameter (`GateArgs.learnable`), from that of out before any ReLU.

    Four passes over the map: recompute the channel pools, then the spatial pools with the
    gradient of Ms, then the gradient of Mc, then dx (which reads only the incoming gradient).
    """
    k = kernels(args.backend)
    x, x3, g3 = args.x, args.x.flatten(2), grad.flatten(2)
    channel, spatial = args.channel_graph(), args.spatial_graph(k)
    mc = pooled = cache = cidx = None
    if channel is not None:
        avg, cmx, cidx = k.channel_stats(x3)
        pooled = channel.stack(avg, cmx)
        mc, cache = channel.forward(pooled)
    ms = dmean = dmax = sidx = None
    grads: dict[str, Tensor | None] = {}
    if spatial is not None:
        smean, smax, sidx, dms = k.spatial_grad(x3, g3, mc)
        s = _descriptor(smean, smax, x.shape)
        ms4, ds, spatial_grads = spatial.forward_backward(s, dms.view(x.shape[0], 1, *x.shape[2:]))
        grads.update(spatial_grads)
        ms = ms4.flatten(1)
        dmean, dmax = ds[:, 0].flatten(1), ds[:, 1].flatten(1)
    davg = dcmax = None
    if channel is not None:
        dmc = k.channel_grad(x3, g3, ms, dmean, dmax, sidx)
        dpooled, channel_grads = channel.backward(pooled, cache, mc, dmc)
        grads.update(channel_grads)
        davg, dcmax = channel.unstack(dpooled)
    dx = k.input_grad(g3, mc, ms, dmean, dmax, sidx, davg, dcmax, cidx if args.use_max else None).view(x.shape)
    return [dx, *(grads[name].to(p.dtype) for name, p in args.learnable().items())]


def _attention_gate(*inputs: object) -> tuple[Tensor, Tensor, Tensor]:
    return gate_forward(GateArgs(*inputs))


def _attention_gate_backward(grad: Tensor, *inputs: object) -> list[Tensor]:
    return gate_backward(grad, GateArgs(*inputs))


attention_gate = torch.library.custom_op(
    "cbam::attention_gate", _attention_gate, mutates_args=(), schema=f"({ARGS_SCHEMA}) -> (Tensor, Tensor, Tensor)"
)
# The backward reads neither `shortcut` (its gradient is the incoming one) nor `relu` (applied before the call).
attention_gate_backward = torch.library.custom_op(
    "cbam::attention_gate_backward",
    _attention_gate_backward,
    mutates_args=(),
    schema=f"(Tensor grad, {ARGS_SCHEMA}) -> Tensor[]",
)


@attention_gate.register_fake
def _(*inputs: object) -> tuple[Tensor, Tensor, Tensor]:
    x = GateArgs(*inputs).x
    scalar = x.new_empty((), dtype=torch.float32)
    return torch.empty_like(x), scalar, scalar.clone()


@attention_gate_backward.register_fake
def _(grad: Tensor, *inputs: object) -> list[Tensor]:
    return [torch.empty_like(grad), *(torch.empty_like(p) for p in GateArgs(*inputs).learnable().values())]


def _setup_context(ctx, inputs: tuple, output: tuple[Tensor, Tensor, Tensor]) -> None:
    args = GateArgs(*inputs)
    if args.bn_training:  # BatchNorm in training normalises by the batch: the running stats are not read
        args = args._replace(bn_mean=None, bn_var=None)
    ctx.has_shortcut = args.shortcut is not None
    args = args._replace(shortcut=None)
    ctx.flags = args._replace(**dict.fromkeys(TENSOR_FIELDS))  # the tensors go through save_for_backward
    # after a ReLU its output masks the gradient, as nn.ReLU keeps its output for the same purpose
    ctx.save_for_backward(output[0] if args.relu else None, *(getattr(args, name) for name in TENSOR_FIELDS))


def _backward(ctx, grad_out: Tensor | None, _grad_mean: Tensor, _grad_var: Tensor) -> tuple[Tensor | None, ...]:
    relu_out, *tensors = ctx.saved_tensors
    args = ctx.flags._replace(**dict(zip(TENSOR_FIELDS, tensors, strict=True)))
    if grad_out is None:
        grad_out = torch.zeros_like(args.x)
    if args.relu:
        grad_out = torch.ops.aten.threshold_backward(grad_out, relu_out, 0)
    dx, *param_grads = torch.ops.cbam.attention_gate_backward(grad_out, *args)
    grads = {"x": dx, "shortcut": grad_out if ctx.has_shortcut else None}
    grads.update(zip(args.learnable(), param_grads, strict=True))
    return tuple(grads.get(name) for name in GateArgs._fields)


attention_gate.register_autograd(_backward, setup_context=_setup_context)


def forward_flops(shapes: GateArgs) -> int:
    """FLOPs (2 per multiply-accumulate) of the gate's forward, given each tensor's shape in its place, as
    FlopCounterMode counts the eager layers: the channel function's matrix products (or ECA's 1-D convolution)
    per pooled descriptor and the k x k convolution to one channel; pooling, BatchNorm, the gates and the
    element-wise products count nothing there, and here."""
    n, c, h, w = shapes.x
    flops = 0
    descriptors = n * (int(shapes.use_avg) + int(shapes.use_max))
    if descriptors and shapes.channel_fn == "mlp":  # (descriptors, C) @ (C, C/r), then (descriptors, C/r) @ (C/r, C)
        flops += 2 * 2 * descriptors * c * shapes.w1[0]
    elif descriptors and shapes.channel_fn == "linear":  # (descriptors, C) @ (C, C)
        flops += 2 * descriptors * c * c
    elif descriptors and shapes.channel_fn == "conv1d":  # k taps per output channel
        flops += 2 * descriptors * c * shapes.w1[-1]
    if shapes.conv_w is not None:
        flops += plane_conv.forward_flops((n, 2, h, w), shapes.conv_w)
    return flops


@register_flop_formula(torch.ops.cbam.attention_gate)
def _gate_flops(*inputs: object, **kwargs: object) -> int:
    return forward_flops(GateArgs(*inputs))


@register_flop_formula(torch.ops.cbam.attention_gate_backward)
def _gate_backward_flops(grad: object, *inputs: object, **kwargs: object) -> int:
    """Eager's backward of each matrix product and of the convolution: one product for the input's gradient and
    one for the weight's, each costing the forward's. (The fused backward also recomputes the forward's small
    graphs; like activation checkpointing, that is not counted.)"""
    return 2 * forward_flops(GateArgs(*inputs))


def update_running_stats(bn: torch.nn.BatchNorm2d, mean: Tensor, var: Tensor, count: int) -> None:
    """Move BatchNorm's running statistics as its own training forward would (unbiased variance)."""
    with torch.no_grad():
        bn.num_batches_tracked.add_(1)
        momentum = bn.momentum if bn.momentum is not None else 1.0 / float(bn.num_batches_tracked)
        unbiased = var * count / max(count - 1, 1)
        bn.running_mean.lerp_(mean.to(bn.running_mean.dtype).expand_as(bn.running_mean), momentum)
        bn.running_var.lerp_(unbiased.to(bn.running_var.dtype).expand_as(bn.running_var), momentum)
