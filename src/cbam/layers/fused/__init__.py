"""Fused attention gates: which implementation runs a layer, and the call into the fused op.

Every CBAM/SE/channel/spatial layer takes `impl` (and so does `cbam.create_model`), and so do ECA, effective SE
and Gather-Excite, whose global GE-theta-minus fuses as a channel gate (`gate.CHANNEL_FUNCTIONS`), SimAM,
which has passes of its own (`simam`), and Triplet Attention, whose passes (`triplet`) and convolutions
(`plane_conv`) have C loops only, so it runs eagerly on CUDA:
- `"eager"`: the reference PyTorch modules, op by op;
- `"compiled"`: the fused gate with natively compiled passes: C kernels built at first use
  on the CPU (for `CBAM_CPU_ARCH`, see `cpu_kernels`), inductor-generated kernels on CUDA;
- `"triton"`: the fused gate with the hand-written Triton kernels (CUDA; on the CPU only
  under Triton's interpreter, `TRITON_INTERPRET=1`, for testing);
- `"auto"` (default): the fused gate where it is expected to be faster, else eager.

Reading order: `backends` (which kernels run an `impl`: the table and `backend_for`), `gate` (the
custom op over `GateArgs`), `plane_conv` (the k x k convolution of a pooled plane), `simam` (SimAM's op),
`triplet` (Triplet Attention's ops), `primitives` (what each kernel pass computes). Measurements:
docs/performance.md.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import Tensor, nn

from cbam.errors import ConfigError

# The custom ops and their FLOP formulas, registered at import: FlopCounterMode copies the formulas as it starts.
from cbam.layers.fused import backends, gate, plane_conv, simam, triplet
from cbam.layers.fused.backends import (
    AUTO_MIN_ELEMENTS,
    BACKENDS,
    SE_RESIDUAL_MIN_ELEMENTS,
    Backend,
    backend_for,
    eager_squeeze_excite_is_faster,
    triton_available,
    triton_interpreted,
)
from cbam.layers.fused.gate import GateArgs

IMPLS: tuple[str, ...] = ("auto", "eager", "compiled", "triton")
FUSABLE_POOLS: frozenset[str] = frozenset({"avg", "max"})


def check_impl(impl: str) -> str:
    """`impl` itself if it names an implementation, else a ValueError listing them."""
    if impl not in IMPLS:
        raise ConfigError(f"unknown attention impl {impl!r}; choose from {', '.join(IMPLS)}")
    return impl


def _has_hooks(module: nn.Module | None) -> bool:
    return module is not None and bool(
        module._forward_hooks or module._forward_pre_hooks or module._backward_hooks or module._backward_pre_hooks
    )


def channel_fusable(channel: nn.Module) -> bool:
    """A channel gate the fused op computes: avg and/or max pools into the shared MLP."""
    return set(channel.pool_types) <= FUSABLE_POOLS


def spatial_fusable(spatial: nn.Module) -> bool:
    """A spatial gate the fused op computes: the paper's pooled descriptor, conv, optional BatchNorm."""
    bn = spatial.bn
    standard_bn = bn is None or (isinstance(bn, nn.BatchNorm2d) and bn.affine and bn.track_running_stats)
    return spatial.descriptor == "pool" and standard_bn


def fused_gate(
    x: Tensor,
    channel: nn.Module | None,
    spatial: nn.Module | None,
    backend: str,
    shortcut: Tensor | None = None,
    relu: bool = False,
    overwrite_input: bool = False,
) -> Tensor | None:
    """x * Mc(x) * Ms(x * Mc(x)) (+ shortcut) (then ReLU) on the kernels named `backend`, or None where the eager
    modules must run (hooks on a branch). `overwrite_input` lets inference write the result over x."""
    if _has_hooks(channel) or _has_hooks(spatial):
        return None
    if shortcut is not None and (shortcut.shape != x.shape or shortcut.device != x.device):
        return None
    args = GateArgs.of_layers(x, channel, spatial, backend, shortcut, relu)
    # Autograd, tracing and dispatch modes (FlopCounterMode, fake tensors) need the registered op; plain
    # inference skips the dispatcher.
    traced = torch.is_grad_enabled() or torch.compiler.is_compiling() or torch._C._len_torch_dispatch_stack() > 0
    if traced:
        out, z_mean, z_var = torch.ops.cbam.attention_gate(*args)
    else:
        out, z_mean, z_var = gate.gate_forward(args, into_input=overwrite_input)
    bn = spatial.bn if spatial is not None else None
    if bn is not None and bn.training:
        gate.update_running_stats(bn, z_mean, z_var, count=x.shape[0] * x.shape[2] * x.shape[3])
    return out


def set_attention_impl(model: nn.Module, impl: str) -> nn.Module:
    """Switch every attention layer in `model` to `impl` (layers that cannot fuse stay eager); returns the model."""
    check_impl(impl)
    for module in model.modules():
        if isinstance(getattr(module, "impl", None), str):
            module.impl = impl
    return model


@contextlib.contextmanager
def attention_impl(model: nn.Module, impl: str) -> Iterator[nn.Module]:
    """Run every attention layer of `model` with `impl` inside the block, then restore each one's own."""
    before = {module: module.impl for module in model.modules() if isinstance(getattr(module, "impl", None), str)}
    set_attention_impl(model, impl)
    try:
        yield model
    finally:
        for module, own in before.items():
            module.impl = own


class FusableAttention:
    """What an attention layer needs to run through the fused gate: it names its branches, this does the rest.

    Subclasses (nn.Modules with an `impl`) return from `_fused_branches` the (channel, spatial)
    pair the gate computes, either may be None, or None when their configuration cannot fuse.
    """

    def _fused_branches(self) -> tuple[nn.Module | None, nn.Module | None] | None:
        raise NotImplementedError

    @torch.jit.unused
    def _fused(self, x: Tensor, shortcut: Tensor | None = None, overwrite_input: bool = False) -> Tensor | None:
        branches = self._fused_branches()
        backend = backend_for(self.impl, x, *branches, shortcut) if branches is not None else None
        if backend is None:
            return None
        return fused_gate(x, *branches, backend.name, shortcut, shortcut is not None, overwrite_input)

    @torch.jit.unused
    def fused_residual(self, x: Tensor, shortcut: Tensor, overwrite_input: bool = False) -> Tensor | None:
        """relu(self(x) + shortcut) in one fused pass, or None where this layer runs eagerly on x."""
        return self._fused(x, shortcut, overwrite_input)


def residual_tail(attention: nn.Module, x: Tensor, shortcut: Tensor, overwrite_input: bool = False) -> Tensor | None:
    """relu(attention(x) + shortcut), the tail of a residual block, as one fused pass; None where the
    attention layer has no fused path for x (the caller then runs the ops one by one).

    With `overwrite_input` (x is the block's own temporary), inference writes the result over x
    instead of allocating, as torchvision's `out += identity` does.
    """
    fused = getattr(attention, "fused_residual", None)
    if fused is None or _has_hooks(attention):
        return None
    return fused(x, shortcut, overwrite_input)


__all__ = [
    "AUTO_MIN_ELEMENTS",
    "BACKENDS",
    "IMPLS",
    "SE_RESIDUAL_MIN_ELEMENTS",
    "Backend",
    "FusableAttention",
    "GateArgs",
    "attention_impl",
    "backend_for",
    "backends",
    "check_impl",
    "eager_squeeze_excite_is_faster",
    "fused_gate",
    "plane_conv",
    "residual_tail",
    "set_attention_impl",
    "simam",
    "triplet",
    "triton_available",
    "triton_interpreted",
]
