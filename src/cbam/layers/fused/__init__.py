"""Fused attention gates: which implementation runs a layer, and the call into the fused op.

`impl` on every CBAM/SE/channel/spatial layer (and `cbam.create_model(..., impl=)`):
- `"eager"`: the reference PyTorch modules, op by op;
- `"compiled"`: the fused gate with natively compiled passes: C kernels built at first use
  on the CPU, inductor-generated kernels on CUDA;
- `"triton"`: the fused gate with the hand-written Triton kernels (CUDA; on the CPU only
  under Triton's interpreter, `TRITON_INTERPRET=1`, for testing);
- `"auto"` (default): triton on CUDA, compiled on the CPU for maps large enough to gain
  (`AUTO_MIN_ELEMENTS`; for a float32 SE in inference, only as a large residual tail,
  `SE_RESIDUAL_MIN_ELEMENTS`), eager otherwise and wherever the configuration is not fusable
  (other arrangements or pools, hooks on the branches, the meta device, TorchScript), and
  inside `torch.compile`, where inductor fuses the eager ops itself.

The C kernels are built for this CPU (`-march=native`) unless `CBAM_CPU_ARCH` names another `-march`
target (`x86-64`, `x86-64-v2`, `x86-64-v3`, ...): see `cpu_kernels`. Each target is cached apart.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import os
import warnings
from collections.abc import Iterator

import torch
from torch import Tensor, nn

from cbam.errors import ConfigError

# The custom ops and their FLOP formulas, registered at import: FlopCounterMode copies the formulas as it starts.
from cbam.layers.fused import gate

IMPLS: tuple[str, ...] = ("auto", "eager", "compiled", "triton")
FUSABLE_POOLS: frozenset[str] = frozenset({"avg", "max"})
AUTO_MIN_ELEMENTS = 1 << 15
"""Below this many elements per map, Python overhead outweighs the fused passes on the CPU.

Measured on 2 cores (residual tail of a CBAM, channels_last): at 32K elements the fused path is
1.3x faster in inference and 1.15x in a training step; at 4K it is 0.88x in training."""


SE_RESIDUAL_MIN_ELEMENTS = 1 << 20
"""A float32 squeeze-and-excitation gate in inference fuses only as a residual tail over maps this large.

Measured on 2 cores (channels_last, no grad): alone, the fused SE took 0.98-1.56x the eager
module's time over ResNet50 and MobileNet shapes (1.09-1.60x with cold caches), since SE's eager
ops are already three passes; as a residual tail it took 0.54-0.92x at batch 8 and 1.10-1.85x at
batch 1, crossing over near 1M elements. With autograd, and in bf16, the fused SE was faster on
most shapes (batch 8: forward+backward 0.61-0.76x the eager passes except 1.16x at 2048x7x7; a bf16
forward 0.54-0.89x on seven of eight shapes), so `auto` keeps it there."""


def check_impl(impl: str) -> str:
    """`impl` itself if it names an implementation, else a ValueError listing them."""
    if impl not in IMPLS:
        raise ConfigError(f"unknown attention impl {impl!r}; choose from {', '.join(IMPLS)}")
    return impl


def triton_interpreted() -> bool:
    """Whether Triton kernels run in its CPU interpreter (`TRITON_INTERPRET=1`)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


@torch._dynamo.assume_constant_result
@functools.cache
def triton_available() -> bool:
    return importlib.util.find_spec("triton") is not None


@torch._dynamo.assume_constant_result
def _cpu_kernels_available(dtype: torch.dtype) -> bool:
    from cbam.layers.fused.cpu_kernels import target_arch

    return _build_cpu_kernels(dtype, target_arch())


@functools.cache
def _build_cpu_kernels(dtype: torch.dtype, arch: str) -> bool:
    """Whether the kernels for `dtype` build for `arch` (`CBAM_CPU_ARCH`); warns once per pair where not."""
    from cbam.layers.fused import cpu_kernels

    try:
        cpu_kernels._built(dtype, arch)
        return True
    except (cpu_kernels.KernelBuildError, ConfigError, OSError) as e:
        reason = str(e).splitlines()[0]
    warnings.warn(
        f"the fused CPU attention kernels for {dtype} could not be built ({reason}); CBAM runs eagerly (slower, "
        "more memory). Install a C compiler (gcc) with OpenMP, check CBAM_CPU_ARCH, or pass impl='eager' "
        "to silence this.",
        RuntimeWarning,
        stacklevel=3,
    )
    return False


def backend_for(impl: str, x: Tensor) -> str | None:
    """The kernel backend that runs `impl` on `x`, or None for the eager modules."""
    if impl == "eager" or x.device.type not in ("cpu", "cuda") or x.dim() != 4:
        return None
    if x.dtype not in (torch.float32, torch.float16, torch.bfloat16):
        return None
    on_cuda = x.device.type == "cuda"
    if impl == "triton":
        if not triton_available():
            raise RuntimeError("impl='triton' needs the triton package")
        if not on_cuda and not triton_interpreted():
            raise RuntimeError("impl='triton' runs on CUDA tensors, or on the CPU under TRITON_INTERPRET=1")
        return "triton"
    if impl == "compiled":
        if on_cuda:
            return "inductor"
        if not _cpu_kernels_available(x.dtype):
            return "reference"
        return "cpu"
    if torch.compiler.is_compiling():
        return None  # inductor fuses the eager ops of a compiled network itself
    if on_cuda:
        return "triton" if triton_available() else "inductor"
    if x.numel() < AUTO_MIN_ELEMENTS or not _cpu_kernels_available(x.dtype):
        return None
    return "cpu"


def eager_squeeze_excite_is_faster(
    channel: nn.Module | None, spatial: nn.Module | None, x: Tensor, shortcut: Tensor | None
) -> bool:
    """Whether `auto` runs a fusable gate eagerly on the CPU anyway: a squeeze-and-excitation gate
    (one avg pool, no spatial branch) in float32 inference, unless it is a residual tail over a
    large map (`SE_RESIDUAL_MIN_ELEMENTS`)."""
    squeeze_excite = spatial is None and channel is not None and tuple(channel.pool_types) == ("avg",)
    if not squeeze_excite or x.dtype != torch.float32 or torch.is_grad_enabled():
        return False
    return shortcut is None or x.numel() < SE_RESIDUAL_MIN_ELEMENTS


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
    """x * Mc(x) * Ms(x * Mc(x)) (+ shortcut) (then ReLU) through the fused op, or None where the eager
    modules must run (hooks on a branch). `overwrite_input` lets inference write the result over x."""
    if _has_hooks(channel) or _has_hooks(spatial):
        return None
    if shortcut is not None and (shortcut.shape != x.shape or shortcut.device != x.device):
        return None
    w1 = b1 = w2 = b2 = None
    use_avg = use_max = False
    if channel is not None:
        first, last = channel.mlp[0], channel.mlp[2]
        w1, b1, w2, b2 = first.weight, first.bias, last.weight, last.bias
        use_avg, use_max = "avg" in channel.pool_types, "max" in channel.pool_types
    conv_w = conv_b = bn_w = bn_b = bn_mean = bn_var = None
    bn_training, bn_eps = False, 1e-5
    bn = spatial.bn if spatial is not None else None
    if spatial is not None:
        conv_w, conv_b = spatial.conv.weight, spatial.conv.bias
    if bn is not None:
        bn_w, bn_b, bn_mean, bn_var, bn_eps = bn.weight, bn.bias, bn.running_mean, bn.running_var, bn.eps
        bn_training = bn.training
    # Without autograd, tracing or a dispatch mode (FlopCounterMode, fake tensors), skip the dispatcher
    # and call the op's own function.
    traced = torch.is_grad_enabled() or torch.compiler.is_compiling() or torch._C._len_torch_dispatch_stack() > 0
    op = gate.gate_forward_into_input if overwrite_input else gate.gate_forward
    op = torch.ops.cbam.attention_gate if traced else op
    out, z_mean, z_var = op(
        x, shortcut, w1, b1, w2, b2, conv_w, conv_b, bn_w, bn_b, bn_mean, bn_var,
        use_avg, use_max, bn_training, bn_eps, backend, relu,
    )  # fmt: skip
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
        backend = backend_for(self.impl, x) if branches is not None else None
        if backend is None or (
            self.impl == "auto" and backend == "cpu" and eager_squeeze_excite_is_faster(*branches, x, shortcut)
        ):
            return None
        return fused_gate(x, *branches, backend, shortcut, shortcut is not None, overwrite_input)

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
    "IMPLS",
    "SE_RESIDUAL_MIN_ELEMENTS",
    "FusableAttention",
    "attention_impl",
    "backend_for",
    "check_impl",
    "eager_squeeze_excite_is_faster",
    "fused_gate",
    "residual_tail",
    "set_attention_impl",
]
