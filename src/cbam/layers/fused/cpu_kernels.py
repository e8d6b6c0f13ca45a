"""The fused passes on the CPU: `cpu_kernels.c`, built with the system C compiler at first use.

Same functions and semantics as `primitives.py` (the gate's six passes and SimAM's four). Each element type
gets its own shared library, compiled once per machine (`-O3 -march=$CBAM_CPU_ARCH -fopenmp`) into the cache
folder and loaded with ctypes; the build is atomic, so concurrent processes never load half a file.

`CBAM_CPU_ARCH` is the compiler's `-march` target: `native` (the default: every extension of this
CPU), or any other `-march` value, such as `x86-64` (baseline SSE2: code every x86-64 CPU runs),
`x86-64-v2` or `x86-64-v3` (AVX2, FMA). Each target is a build of its own, cached side by side;
the variable is read at each call, so a process may switch targets. (With gcc, `-std=c11` turns off
contracting a * b + c into an FMA, and the loops fix their summation order: on an AVX2 machine the
native and x86-64 builds gave the same bits. The parity tests check both against the eager layers.)
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import platform
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import torch
from torch import Tensor

from cbam.errors import ConfigError
from cbam.layers.maps import dense_layout

SOURCE = Path(__file__).with_name("cpu_kernels.c")
TYPE_FLAGS: dict[torch.dtype, str] = {torch.float32: "CBAM_F32", torch.float16: "CBAM_F16", torch.bfloat16: "CBAM_BF16"}
COMPILE_FLAGS: tuple[str, ...] = ("-O3", "-fopenmp", "-fPIC", "-shared", "-std=c11")
ARCH_VARIABLE = "CBAM_CPU_ARCH"
DEFAULT_ARCH = "native"


class KernelBuildError(RuntimeError):
    """The C compiler is missing or failed; the fused CPU path is unavailable."""


def cache_dir() -> Path:
    """Where built kernels live: `$CBAM_CACHE/kernels`, else `~/.cache/cbam/kernels`."""
    root = os.environ.get("CBAM_CACHE") or Path.home() / ".cache" / "cbam"
    return Path(root) / "kernels"


def _compiler() -> str:
    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if not compiler:
        raise KernelBuildError("no C compiler found (set CC, or install gcc) for the fused CPU attention kernels")
    return compiler


def target_arch() -> str:
    """The `-march` the kernels are built for: `$CBAM_CPU_ARCH`, else `native`."""
    return os.environ.get(ARCH_VARIABLE, "").strip() or DEFAULT_ARCH


def _machine_key() -> str:
    """What the built code depends on besides its source: the CPU's features and the compiler."""
    try:
        flags = next(line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags"))
    except (OSError, StopIteration):
        flags = platform.processor()
    return f"{platform.machine()}|{flags}|{_compiler()}"


def _library(dtype: torch.dtype) -> ctypes.CDLL:
    """The kernels for one element type, built for `target_arch()`."""
    return _built(dtype, target_arch())


@functools.cache
def _built(dtype: torch.dtype, arch: str) -> ctypes.CDLL:
    """Build (once per machine and target) and load the kernels for one element type.

    The cache key hashes the whole command, `-march` included, so no target reuses another's build."""
    if dtype not in TYPE_FLAGS:
        raise TypeError(f"fused CPU attention supports float32, float16 and bfloat16, not {dtype}")
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._+-]*", arch):
        raise ConfigError(f"{ARCH_VARIABLE}={arch!r} is not a -march value (e.g. native, x86-64, x86-64-v3)")
    command = [_compiler(), *COMPILE_FLAGS, f"-march={arch}", f"-D{TYPE_FLAGS[dtype]}"]
    digest = hashlib.sha256("\n".join([SOURCE.read_text(), *command, _machine_key()]).encode()).hexdigest()[:16]
    target = cache_dir() / f"gate-{TYPE_FLAGS[dtype].lower()}-{digest}.so"
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
            built = Path(tmp) / target.name
            result = subprocess.run([*command, str(SOURCE), "-o", str(built)], capture_output=True, text=True)
            if result.returncode != 0:
                raise KernelBuildError(
                    f"building the fused CPU attention kernels for -march={arch} ({ARCH_VARIABLE}) failed:\n"
                    f"{result.stderr.strip()}"
                )
            os.replace(built, target)
    return ctypes.CDLL(str(target))


def available(dtype: torch.dtype = torch.float32) -> bool:
    """Whether the kernels for `dtype` build and load on this machine."""
    try:
        _library(dtype)
    except (KernelBuildError, ConfigError, OSError, TypeError):
        return False
    return True


def _ptr(t: Tensor | None) -> ctypes.c_void_p:
    return ctypes.c_void_p(t.data_ptr() if t is not None else None)


def _small(t: Tensor | None, n: int, k: int, absent: float = 0.0, dtype: torch.dtype = torch.float32) -> Tensor:
    """An (N, C) or (N, P) operand as the loops read it: contiguous float32 (a max index: int64), and for an
    absent branch its neutral value everywhere, as the C code takes no NULL."""
    if t is None:
        return torch.full((n, k), absent, dtype=dtype, device="cpu")
    if t.shape != (n, k):
        raise ValueError(f"expected a ({n}, {k}) tensor, got {tuple(t.shape)}")
    return t.to(dtype).contiguous()


def _ints(*values: int) -> list[ctypes.c_int64]:
    return [ctypes.c_int64(v) for v in values]


def _threads() -> ctypes.c_int:
    return ctypes.c_int(torch.get_num_threads())


def _map(t: Tensor) -> Tensor:
    """t if it is a dense NCHW or channels_last (N, C, P) map, else a contiguous copy.

    Outputs are allocated with `empty_like`, which keeps exactly these two layouts, so a
    kernel may write its output with its input's strides.
    """
    if t.is_contiguous() or t.transpose(1, 2).is_contiguous():
        return t
    return t.contiguous()


def channel_stats(x: Tensor, with_index: bool = True) -> tuple[Tensor, Tensor, Tensor]:
    x = _map(x)
    n, c, p = x.shape
    avg, mx = x.new_empty((n, c), dtype=torch.float32), x.new_empty((n, c), dtype=torch.float32)
    idx = x.new_empty((n, c), dtype=torch.int64)
    _library(x.dtype).channel_stats(
        _ptr(x), *_ints(n, c, p, *x.stride()), _ptr(avg), _ptr(mx), _ptr(idx), ctypes.c_int(with_index), _threads()
    )
    return avg, mx, idx


def _spatial(x: Tensor, g: Tensor | None, mc: Tensor | None, with_index: bool) -> tuple[Tensor, ...]:
    x = _map(x)
    n, c, p = x.shape
    g = _map(g) if g is not None else None
    mc = _small(mc, n, c, absent=1.0)
    mean, mx, dms = (x.new_empty((n, p), dtype=torch.float32) for _ in range(3))
    idx = x.new_empty((n, p), dtype=torch.int64)
    g_strides = g.stride() if g is not None else (0, 0, 0)
    _library(x.dtype).spatial_stats(
        _ptr(x), _ptr(g), _ptr(mc), *_ints(n, c, p, *x.stride(), *g_strides),
        _ptr(mean), _ptr(mx), _ptr(idx), _ptr(dms), ctypes.c_int(with_index), _threads(),
    )  # fmt: skip
    return mean, mx, idx, dms


def spatial_stats(x: Tensor, mc: Tensor | None, with_index: bool = True) -> tuple[Tensor, Tensor, Tensor]:
    mean, mx, idx, _ = _spatial(x, None, mc, with_index)
    return mean, mx, idx


def spatial_grad(x: Tensor, g: Tensor, mc: Tensor | None) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    return _spatial(x, g, mc, True)


def gate_apply(
    x: Tensor,
    mc: Tensor | None,
    ms: Tensor | None,
    shortcut: Tensor | None = None,
    relu: bool = False,
    out: Tensor | None = None,
) -> Tensor:
    x = _map(x)
    n, c, p = x.shape
    mc, ms = _small(mc, n, c, absent=1.0), _small(ms, n, p, absent=1.0)
    if out is None or out.stride() != x.stride():
        out = torch.empty_like(x)
    if shortcut is not None and (shortcut.stride() != x.stride() or shortcut.dtype != x.dtype):
        # the loops walk the shortcut with x's strides; each element is read before it is written
        shortcut = (out if out is not x else torch.empty_like(x)).copy_(shortcut)
    _library(x.dtype).gate_apply(
        _ptr(x), _ptr(mc), _ptr(ms), _ptr(shortcut), ctypes.c_int(relu), _ptr(out), *_ints(n, c, p, *x.stride()),
        _threads(),
    )  # fmt: skip
    return out


def _spatial_terms(
    g: Tensor, ms: Tensor | None, dmean: Tensor | None, dmax: Tensor | None, sidx: Tensor | None
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The spatial branch's per-position tensors, neutral where the branch is absent."""
    n, _, p = g.shape
    return _small(ms, n, p, absent=1.0), _small(dmean, n, p), _small(dmax, n, p), _small(sidx, n, p, dtype=torch.int64)


def channel_grad(
    x: Tensor, g: Tensor, ms: Tensor | None, dmean: Tensor | None, dmax: Tensor | None, sidx: Tensor | None
) -> Tensor:
    x, g = _map(x), _map(g).to(x.dtype)
    n, c, p = x.shape
    terms = _spatial_terms(g, ms, dmean, dmax, sidx)
    dmc = x.new_empty((n, c), dtype=torch.float32)
    _library(x.dtype).channel_grad(
        _ptr(x), _ptr(g), *(_ptr(t) for t in terms), _ptr(dmc), *_ints(n, c, p, *x.stride(), *g.stride()), _threads()
    )
    return dmc


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
    g = _map(g)
    n, c, p = g.shape
    terms = (
        _small(mc, n, c, absent=1.0),
        *_spatial_terms(g, ms, dmean, dmax, sidx),
        _small(davg, n, c),
        _small(dcmax, n, c),
        _small(cidx, n, c, dtype=torch.int64),
    )
    dx = torch.empty_like(g)
    _library(g.dtype).input_grad(_ptr(g), *(_ptr(t) for t in terms), _ptr(dx), *_ints(n, c, p, *g.stride()), _threads())
    return dx


def conv_same(s: Tensor, weight: Tensor, bias: Tensor | None, affine: tuple[float, float] | None = None) -> Tensor:
    """z = conv2d(s, weight, bias, padding=k // 2) for the spatial gate's one output channel, in float32.

    With `affine=(scale, shift)` it returns sigmoid(z * scale + shift) instead: the whole spatial
    gate when its BatchNorm is in eval mode.
    """
    s, w = s.float().contiguous(), weight.float().contiguous()
    n, ci, h, wd = s.shape
    z = s.new_empty((n, 1, h, wd))
    b = float(bias) if bias is not None else 0.0
    scale, shift = affine if affine is not None else (1.0, 0.0)
    _library(torch.float32).conv_forward(
        _ptr(s), _ptr(w), ctypes.c_float(b), ctypes.c_float(scale), ctypes.c_float(shift),
        ctypes.c_int(affine is not None), _ptr(z), *_ints(n, ci, h, wd, w.shape[-1]), _threads(),
    )  # fmt: skip
    return z


def conv_same_backward(s: Tensor, weight: Tensor, dz: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Gradients of `conv_same` with respect to s, the weight and the bias."""
    s, w, dz = s.float().contiguous(), weight.float().contiguous(), dz.float().contiguous()
    n, ci, h, wd = s.shape
    ds, dw, db = torch.empty_like(s), torch.empty_like(w), s.new_empty(1)
    _library(torch.float32).conv_backward(
        _ptr(s), _ptr(w), _ptr(dz), _ptr(ds), _ptr(dw), _ptr(db), *_ints(n, ci, h, wd, w.shape[-1]), _threads()
    )
    return ds, dw, db


def _like(g: Tensor, x: Tensor) -> Tensor:
    """g in x's dtype and strides, which the SimAM loops walk both maps with (a copy only where they differ)."""
    g = g.to(x.dtype)
    return g if g.stride() == x.stride() else torch.empty_like(x).copy_(g)


def simam_stats(x: Tensor, e_lambda: float) -> tuple[Tensor, Tensor]:
    x = _map(x)
    n, c, p = x.shape
    mean, inv = (x.new_empty((n, c), dtype=torch.float32) for _ in range(2))
    _library(x.dtype).simam_stats(
        _ptr(x), *_ints(n, c, p, *x.stride()), ctypes.c_float(e_lambda), _ptr(mean), _ptr(inv), _threads()
    )
    return mean, inv


def simam_apply(x: Tensor, mean: Tensor, inv: Tensor) -> Tensor:
    x = _map(x)
    n, c, p = x.shape
    out = torch.empty_like(x)
    mean, inv = _small(mean, n, c), _small(inv, n, c)
    _library(x.dtype).simam_apply(_ptr(x), _ptr(mean), _ptr(inv), _ptr(out), *_ints(n, c, p, *x.stride()), _threads())
    return out


def simam_grad_stats(x: Tensor, g: Tensor, mean: Tensor, inv: Tensor) -> tuple[Tensor, Tensor]:
    x = _map(x)
    g = _like(g, x)
    n, c, p = x.shape
    a, b = (x.new_empty((n, c), dtype=torch.float32) for _ in range(2))
    mean, inv = _small(mean, n, c), _small(inv, n, c)
    _library(x.dtype).simam_grad_stats(
        _ptr(x), _ptr(g), _ptr(mean), _ptr(inv), _ptr(a), _ptr(b), *_ints(n, c, p, *x.stride()), _threads()
    )
    return a, b


def simam_input_grad(x: Tensor, g: Tensor, mean: Tensor, inv: Tensor, a: Tensor, b: Tensor) -> Tensor:
    x = _map(x)
    g = _like(g, x)
    n, c, p = x.shape
    dx = torch.empty_like(x)
    small = tuple(_small(t, n, c) for t in (mean, inv, a, b))  # kept alive until the call returns
    _library(x.dtype).simam_input_grad(
        _ptr(x), _ptr(g), *(_ptr(t) for t in small), _ptr(dx), *_ints(n, c, p, *x.stride()), _threads()
    )
    return dx


def _dense(x: Tensor) -> tuple[Tensor, int]:
    """x as the Triplet loops walk it (`dense_layout`) and whether that is channels_last (1) or NCHW (0)."""
    x = dense_layout(x)
    return x, int(not x.is_contiguous())


def _plane(t: Tensor, turned: bool) -> Tensor:
    """An (N, A, B) plane as float32 the loops read: contiguous, or (N, B, A) where the map is channels_last."""
    t = t.float()
    return (t.transpose(1, 2) if turned else t).contiguous()


def triplet_pool(x: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    x, cl = _dense(x)
    n, c, h, w = x.shape
    pc, ph, pw = x.new_empty((n, 2, h, w)), x.new_empty((n, 2, c, w)), x.new_empty((n, 2, c, h))
    cc, ch, cw = (x.new_empty(shape, dtype=torch.float32) for shape in ((n, h, w), (n, c, w), (n, c, h)))
    _library(x.dtype).triplet_pool(
        _ptr(x), *_ints(n, c, h, w), ctypes.c_int(cl), *(_ptr(t) for t in (pc, ph, pw, cc, ch, cw)), _threads()
    )
    return pc, ph, pw, cc, ch, cw


def triplet_pool_backward(
    grads: tuple[Tensor, ...], x: Tensor, pooled: tuple[Tensor, ...], counts: tuple[Tensor, ...]
) -> Tensor:
    x, cl = _dense(x)
    n, c, h, w = x.shape
    operands = []
    for grad, p, count, length, turned in zip(grads, pooled, counts, (c, h, w), (False, cl, cl), strict=True):
        grad = grad.float()
        operands += [_plane(p[:, 0], turned), _plane(grad[:, 0] / count, turned), _plane(grad[:, 1] / length, turned)]
    dx = torch.empty_like(x)
    _library(x.dtype).triplet_pool_backward(
        _ptr(x), *(_ptr(t) for t in operands), _ptr(dx), *_ints(n, c, h, w), ctypes.c_int(cl), _threads()
    )
    return dx


def _gates(x: Tensor, a: Tensor, b: Tensor, s: Tensor | None, cl: int) -> tuple[Tensor, Tensor, Tensor, float]:
    """The three gates as the loops read them (`_plane`; zeros for an absent s) and the branch count k."""
    n, _, h, w = x.shape
    s3 = torch.zeros((n, h, w)) if s is None else s.float().contiguous()
    return _plane(a, cl), _plane(b, cl), s3, 2.0 if s is None else 3.0


def triplet_apply(x: Tensor, a: Tensor, b: Tensor, s: Tensor | None) -> Tensor:
    x, cl = _dense(x)
    n, c, h, w = x.shape
    a, b, s, k = _gates(x, a, b, s, cl)
    out = torch.empty_like(x)
    _library(x.dtype).triplet_apply(
        _ptr(x), _ptr(a), _ptr(b), _ptr(s), ctypes.c_float(k), _ptr(out),
        *_ints(n, c, h, w), ctypes.c_int(cl), _threads(),
    )  # fmt: skip
    return out


def triplet_apply_backward(
    grad: Tensor, x: Tensor, a: Tensor, b: Tensor, s: Tensor | None
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    x, cl = _dense(x)
    n, c, h, w = x.shape
    a, b, s, k = _gates(x, a, b, s, cl)
    g, dx = _like(grad, x), torch.empty_like(x)
    da, db, ds = (x.new_empty(shape, dtype=torch.float32) for shape in ((n, c, w), (n, c, h), (n, h, w)))
    _library(x.dtype).triplet_apply_backward(
        _ptr(x), _ptr(g), _ptr(a), _ptr(b), _ptr(s), ctypes.c_float(k), _ptr(dx),
        _ptr(da), _ptr(db), _ptr(ds), *_ints(n, c, h, w), ctypes.c_int(cl), _threads(),
    )  # fmt: skip
    return dx, da, db, ds
