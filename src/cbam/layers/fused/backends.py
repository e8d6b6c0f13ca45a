"""Which kernels run a fused gate: the table of backends and the one function that picks a row for an `impl`.

A layer's `impl` is what the user asks for (`auto`, `eager`, `compiled`, `triton`); a backend is the kernel module
that runs the gate's six passes over the full map (`primitives` states what each pass computes). `backend_for`
turns the first into the second, or into None where the eager modules run. Measurements behind `auto`'s
thresholds: docs/performance.md.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType

import torch
from torch import Tensor, nn

from cbam.errors import ConfigError, DependencyError, unknown_name
from cbam.layers.fused import cpu_kernels, inductor_kernels, primitives

FUSED_DTYPES: frozenset[torch.dtype] = frozenset({torch.float32, torch.float16, torch.bfloat16})

AUTO_MIN_ELEMENTS = 1 << 15
"""On the CPU, `auto` fuses maps of at least this many elements: below it Python overhead outweighs the saved passes."""

SE_RESIDUAL_MIN_ELEMENTS = 1 << 20
"""A float32 gate shaped like squeeze-and-excitation (`eager_squeeze_excite_is_faster`) in CPU inference fuses only
as a residual tail over maps this large: its eager ops are already few passes, so fusing pays only where it also
saves the residual add and ReLU."""


def _triton_kernels() -> ModuleType:
    """The Triton kernels, imported at first use: the module needs triton, which is optional."""
    from cbam.layers.fused import triton_kernels

    return triton_kernels


@dataclass(frozen=True)
class Backend:
    """One kernel set for the fused gate, as a row of `BACKENDS`."""

    name: str  # what the custom op is told, in its `backend` argument
    runs: str  # the `impl` and device it serves
    auto: str  # when impl="auto" picks it
    needs: str
    kernels: Callable[[], ModuleType]  # the kernel module (the six passes, `conv_same` where it has one)


BACKENDS: dict[str, Backend] = {
    backend.name: backend
    for backend in (
        Backend(
            name="cpu",
            runs="impl='compiled' on the CPU",
            auto="on the CPU, for maps of at least AUTO_MIN_ELEMENTS (a float32 SE in inference: see below)",
            needs="a C compiler with OpenMP; built at first use for CBAM_CPU_ARCH (cpu_kernels)",
            kernels=lambda: cpu_kernels,
        ),
        Backend(
            name="reference",
            runs="impl='compiled' on the CPU where the C kernels do not build (it warns once)",
            auto="never: auto runs the eager modules instead",
            needs="nothing",
            kernels=lambda: primitives,
        ),
        Backend(
            name="inductor",
            runs="impl='compiled' on CUDA",
            auto="on CUDA without triton",
            needs="torch.compile's inductor",
            kernels=lambda: inductor_kernels,
        ),
        Backend(
            name="triton",
            runs="impl='triton' on CUDA, or on the CPU under TRITON_INTERPRET=1",
            auto="on CUDA",
            needs="the triton package",
            kernels=_triton_kernels,
        ),
    )
}


def kernels(name: str) -> ModuleType:
    """The kernel module of the backend called `name`."""
    if name not in BACKENDS:
        raise unknown_name("fused backend", name, BACKENDS)
    return BACKENDS[name].kernels()


def backend_for(
    impl: str,
    x: Tensor,
    channel: nn.Module | None = None,
    spatial: nn.Module | None = None,
    shortcut: Tensor | None = None,
) -> Backend | None:
    """The backend that runs `impl` on `x` for these branches (and residual shortcut), or None for the eager modules.

    `auto` stays eager inside `torch.compile`, where inductor fuses the eager ops itself.
    """
    if impl == "eager" or x.device.type not in ("cpu", "cuda") or x.dim() != 4 or x.dtype not in FUSED_DTYPES:
        return None
    on_cuda = x.device.type == "cuda"
    if impl == "triton":
        _check_triton_runs_on(on_cuda)
        return BACKENDS["triton"]
    if impl == "compiled":
        if on_cuda:
            return BACKENDS["inductor"]
        return BACKENDS["cpu"] if _cpu_kernels_available(x.dtype) else BACKENDS["reference"]
    if torch.compiler.is_compiling():
        return None
    if on_cuda:
        return BACKENDS["triton"] if triton_available() else BACKENDS["inductor"]
    if x.numel() < AUTO_MIN_ELEMENTS or not _cpu_kernels_available(x.dtype):
        return None
    return None if eager_squeeze_excite_is_faster(channel, spatial, x, shortcut) else BACKENDS["cpu"]


def eager_squeeze_excite_is_faster(
    channel: nn.Module | None, spatial: nn.Module | None, x: Tensor, shortcut: Tensor | None
) -> bool:
    """Whether `auto` runs a fusable gate eagerly on the CPU anyway: a gate shaped like squeeze-and-excitation (one
    avg pool, no spatial branch: SE, ECA, eSE, GE-theta-minus) in float32 inference, unless it is a residual tail
    over a large map. (Eager reads the map twice and writes it once, as the fused passes do.)"""
    squeeze_excite = spatial is None and channel is not None and tuple(channel.pool_types) == ("avg",)
    if not squeeze_excite or x.dtype != torch.float32 or torch.is_grad_enabled():
        return False
    return shortcut is None or x.numel() < SE_RESIDUAL_MIN_ELEMENTS


def triton_interpreted() -> bool:
    """Whether Triton kernels run in its CPU interpreter (`TRITON_INTERPRET=1`)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


@torch._dynamo.assume_constant_result
@functools.cache
def triton_available() -> bool:
    return importlib.util.find_spec("triton") is not None


def _check_triton_runs_on(on_cuda: bool) -> None:
    if not triton_available():
        raise DependencyError("impl='triton' needs the triton package: pip install triton")
    if not on_cuda and not triton_interpreted():
        raise ConfigError("impl='triton' runs on CUDA tensors, or on the CPU under TRITON_INTERPRET=1")


@torch._dynamo.assume_constant_result
def _cpu_kernels_available(dtype: torch.dtype) -> bool:
    return _build_cpu_kernels(dtype, cpu_kernels.target_arch())


@functools.cache
def _build_cpu_kernels(dtype: torch.dtype, arch: str) -> bool:
    """Whether the C kernels for `dtype` build for `arch` (`CBAM_CPU_ARCH`); warns once per pair where not."""
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
