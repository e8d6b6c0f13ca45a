"""The six memory-bound passes of a fused attention gate, and SimAM's four, as Triton kernels.

Same names, signatures and results as `primitives.py` (see its docstring); each pass reads every full-size map
once and writes every full-size result once, but SimAM's statistics, which read x twice: the mean first, then the
squared deviations about it. Maps are (N, C, P) views, NCHW or channels_last, and the kernels
take their strides, so neither layout is copied. A reduction gives each program one sample and a block of the
kept axis, and loops over the reduced axis in [BLOCK_C, BLOCK_P] tiles that load coalesced along whichever axis
has unit stride. Index results are int64, like `torch.max(dim)`; index operands may be int32 or int64.

Importing this module needs triton. To run the kernels on the CPU, TRITON_INTERPRET=1 must be in the
environment before triton is first imported (torch may import it), not merely before this module.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

_TILE = 2048  # elements a program loads per step: 8 a thread at 8 warps
_UNIT = 64  # block along the unit-stride axis, 128 bytes of a 16-bit map
_MIN_UNIT = 16  # smallest such block: a 32-byte sector of a 16-bit map
_MIN_ROWS = 4  # smallest block along the other axis: each (N, C) or (N, P) operand loaded serves 4 rows
_MIN_PROGRAMS = 4 * 132  # a reduction shrinks its kept block until it has this many programs: 4 per H100 SM
_WARPS = 8
_NO_INDEX: tl.constexpr = tl.constexpr(2**31 - 1)  # above every real index: "nothing seen", "no NaN"


def channel_stats(x: Tensor, with_index: bool = True) -> tuple[Tensor, Tensor, Tensor]:
    """Mean and max over P per (n, c), and the first index of the max: three (N, C) tensors.

    The index costs no extra memory traffic on a GPU, so it is computed whatever `with_index` says.
    """
    x, p_unit = _layout(x)
    n, c, p = x.shape
    mean, mx = (x.new_empty((n, c), dtype=torch.float32) for _ in range(2))
    idx = x.new_empty((n, c), dtype=torch.int64)
    bc, bp = _reduction_tile(n, c, p, p_unit, over_p=True)
    _channel_stats_kernel[(triton.cdiv(c, bc), n)](
        x, mean, mx, idx, c, p, *x.stride(), BLOCK_C=bc, BLOCK_P=bp, num_warps=_WARPS
    )
    return mean, mx, idx


def spatial_stats(x: Tensor, mc: Tensor | None, with_index: bool = True) -> tuple[Tensor, Tensor, Tensor]:
    """Mean and max over C of y = x * mc per (n, p), and the first channel of the max: (N, P) each (index always)."""
    return _spatial(x, None, mc)[:3]


def spatial_grad(x: Tensor, g: Tensor, mc: Tensor | None) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """`spatial_stats` recomputed, plus dms = sum over C of g * x * mc, the gradient of ms: (N, P)."""
    return _spatial(x, g, mc)


def gate_apply(
    x: Tensor,
    mc: Tensor | None,
    ms: Tensor | None,
    shortcut: Tensor | None = None,
    relu: bool = False,
    out: Tensor | None = None,
) -> Tensor:
    """out = x * mc * ms (+ shortcut) (then ReLU), in x's dtype and memory layout; into `out` if given.

    `out` may be x itself: each element is read before it is written.
    """
    x, p_unit = _layout(x)
    n, c, p = x.shape
    if out is None or out.stride() != x.stride():
        out = torch.empty_like(x)
    bc, bp = _tile(c, p, p_unit)
    _gate_apply_kernel[(triton.cdiv(p, bp), triton.cdiv(c, bc), n)](
        x, _small(mc, n, c), _small(ms, n, p), shortcut, out, c, p,
        *x.stride(), *(x if shortcut is None else shortcut).stride(), *out.stride(),
        RELU=relu, BLOCK_C=bc, BLOCK_P=bp, num_warps=_WARPS,
    )  # fmt: skip
    return out


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
    x, p_unit = _layout(x)
    g, _ = _layout(g)
    n, c, p = x.shape
    dmc = x.new_empty((n, c), dtype=torch.float32)
    bc, bp = _reduction_tile(n, c, p, p_unit, over_p=True)
    _channel_grad_kernel[(triton.cdiv(c, bc), n)](
        x, g, _small(ms, n, p), _small(dmean, n, p), _small(dmax, n, p), _small(sidx, n, p), dmc,
        c, p, *x.stride(), *g.stride(), BLOCK_C=bc, BLOCK_P=bp, num_warps=_WARPS,
    )  # fmt: skip
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
    """dx = dy * mc plus the channel descriptors' share: davg / P everywhere, dcmax at cidx.

    It reads g but not x: every term that depends on x was reduced by the earlier passes.
    """
    g, p_unit = _layout(g)
    n, c, p = g.shape
    dx = torch.empty_like(g)
    bc, bp = _tile(c, p, p_unit)
    _input_grad_kernel[(triton.cdiv(p, bp), triton.cdiv(c, bc), n)](
        g, _small(mc, n, c), _small(ms, n, p), _small(dmean, n, p), _small(dmax, n, p), _small(sidx, n, p),
        _small(davg, n, c), _small(dcmax, n, c), _small(cidx, n, c), dx,
        c, p, *g.stride(), *dx.stride(), BLOCK_C=bc, BLOCK_P=bp, num_warps=_WARPS,
    )  # fmt: skip
    return dx


def simam_stats(x: Tensor, e_lambda: float) -> tuple[Tensor, Tensor]:
    """Per (n, c), the mean over P and inv = 1 / (4 (v + e_lambda)), v the squared deviations about the mean summed
    over max(P - 1, 1): two (N, C) tensors."""
    x, p_unit = _layout(x)
    n, c, p = x.shape
    mean, inv = (x.new_empty((n, c), dtype=torch.float32) for _ in range(2))
    bc, bp = _reduction_tile(n, c, p, p_unit, over_p=True)
    _simam_stats_kernel[(triton.cdiv(c, bc), n)](
        x, mean, inv, e_lambda, c, p, max(p - 1, 1), *x.stride(), BLOCK_C=bc, BLOCK_P=bp, num_warps=_WARPS
    )
    return mean, inv


def simam_apply(x: Tensor, mean: Tensor, inv: Tensor) -> Tensor:
    """out = x * sigmoid(inv (x - mean)^2 + 1/2), in x's dtype and memory layout."""
    x, p_unit = _layout(x)
    n, c, p = x.shape
    out = torch.empty_like(x)
    bc, bp = _tile(c, p, p_unit)
    _simam_apply_kernel[(triton.cdiv(p, bp), triton.cdiv(c, bc), n)](
        x, _small(mean, n, c), _small(inv, n, c), out, c, p, *x.stride(), *out.stride(),
        BLOCK_C=bc, BLOCK_P=bp, num_warps=_WARPS,
    )  # fmt: skip
    return out


def simam_grad_stats(x: Tensor, g: Tensor, mean: Tensor, inv: Tensor) -> tuple[Tensor, Tensor]:
    """Per (n, c), A = sum over P of h d and B = sum of h d^2, d = x - mean, h = g x s (1 - s), s the weight."""
    x, p_unit = _layout(x)
    g, _ = _layout(g)
    n, c, p = x.shape
    a, b = (x.new_empty((n, c), dtype=torch.float32) for _ in range(2))
    bc, bp = _reduction_tile(n, c, p, p_unit, over_p=True)
    _simam_grad_stats_kernel[(triton.cdiv(c, bc), n)](
        x, g, _small(mean, n, c), _small(inv, n, c), a, b, c, p, *x.stride(), *g.stride(),
        BLOCK_C=bc, BLOCK_P=bp, num_warps=_WARPS,
    )  # fmt: skip
    return a, b


def simam_input_grad(x: Tensor, g: Tensor, mean: Tensor, inv: Tensor, a: Tensor, b: Tensor) -> Tensor:
    """dx = g s + 2 inv (h d - A / P) - 8 inv^2 d B / max(P - 1, 1), in g's dtype and x's memory layout."""
    x, p_unit = _layout(x)
    g, _ = _layout(g)
    n, c, p = x.shape
    dx = torch.empty_like(x, dtype=g.dtype)
    bc, bp = _tile(c, p, p_unit)
    _simam_input_grad_kernel[(triton.cdiv(p, bp), triton.cdiv(c, bc), n)](
        x, g, *(_small(t, n, c) for t in (mean, inv, a, b)), dx, c, p, max(p - 1, 1),
        *x.stride(), *g.stride(), *dx.stride(),
        BLOCK_C=bc, BLOCK_P=bp, num_warps=_WARPS,
    )  # fmt: skip
    return dx


def _spatial(x: Tensor, g: Tensor | None, mc: Tensor | None) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
    """Mean, max and first max channel of y = x * mc over C, and sum over C of g * y when g is given."""
    x, p_unit = _layout(x)
    if g is not None:
        g, _ = _layout(g)
    n, c, p = x.shape
    mean, mx = (x.new_empty((n, p), dtype=torch.float32) for _ in range(2))
    idx = x.new_empty((n, p), dtype=torch.int64)
    dms = None if g is None else x.new_empty((n, p), dtype=torch.float32)
    bc, bp = _reduction_tile(n, c, p, p_unit, over_p=False)
    _spatial_kernel[(triton.cdiv(p, bp), n)](
        x, g, _small(mc, n, c), mean, mx, idx, dms, c, p, *x.stride(), *(x if g is None else g).stride(),
        BLOCK_C=bc, BLOCK_P=bp, num_warps=_WARPS,
    )  # fmt: skip
    return mean, mx, idx, dms


def _layout(t: Tensor) -> tuple[Tensor, bool]:
    """t and whether P is its unit-stride axis (NCHW) rather than C (channels_last); a contiguous copy if neither."""
    axis = _unit_axis(t)
    if axis is None:
        t = t.contiguous()
        axis = _unit_axis(t)
    return t, axis != 1


def _unit_axis(t: Tensor) -> int | None:
    """The axis (1: C, 2: P) with unit stride and more than one element, 2 for a single element, else None."""
    _, c, p = t.shape
    if p > 1 and t.stride(2) == 1:
        return 2
    if c > 1 and t.stride(1) == 1:
        return 1
    return 2 if c == p == 1 else None


def _small(t: Tensor | None, n: int, k: int) -> Tensor | None:
    """An (N, C) or (N, P) operand, made contiguous for the kernels' n * k + i indexing; None stays None."""
    if t is None:
        return None
    if t.shape != (n, k):
        raise ValueError(f"expected a ({n}, {k}) tensor, got {tuple(t.shape)}")
    return t.contiguous()


def _tile(c: int, p: int, p_unit: bool) -> tuple[int, int]:
    """(BLOCK_C, BLOCK_P) of a _TILE-element tile that is _UNIT wide along the unit-stride axis."""
    if p_unit:
        bp = min(_UNIT, triton.next_power_of_2(p))
        return min(triton.next_power_of_2(c), _TILE // bp), bp
    bc = min(_UNIT, triton.next_power_of_2(c))
    return bc, min(triton.next_power_of_2(p), _TILE // bc)


def _reduction_tile(n: int, c: int, p: int, p_unit: bool, over_p: bool) -> tuple[int, int]:
    """`_tile`, with the kept axis's block halved until there are enough programs, the reduced one's grown to match.

    Each program loops over the whole reduced axis, so a small N * (kept blocks) would leave SMs idle.
    """
    bc, bp = _tile(c, p, p_unit)
    kept, size, floor = (
        (bc, c, _MIN_ROWS if p_unit else _MIN_UNIT) if over_p else (bp, p, _MIN_UNIT if p_unit else _MIN_ROWS)
    )
    while kept > floor and n * triton.cdiv(size, kept) < _MIN_PROGRAMS:
        kept //= 2
    reduced = min(triton.next_power_of_2(p if over_p else c), _TILE // kept)
    return (kept, reduced) if over_p else (reduced, kept)


@triton.jit
def _first_max(v1, i1, v2, i2):
    """Combine two (value, index) max candidates as torch.max does: NaN above all, ties to the lower index."""
    nan1 = v1 != v1
    nan2 = v2 != v2
    first = (v1 > v2) | (nan1 & ~nan2) | (((v1 == v2) | (nan1 & nan2)) & (i1 < i2))
    return tl.where(first, v1, v2), tl.where(first, i1, i2)


@triton.jit
def _reduce_first_max(best, best_at, AXIS: tl.constexpr):
    """`_first_max` over AXIS: the NaN of lowest index, else the max of lowest index.

    Built from tl.min / tl.max, which the interpreter runs vectorised; it runs a custom tl.reduce element by element.
    """
    nan = best != best
    nan_at = tl.min(tl.where(nan, best_at, _NO_INDEX), AXIS)
    mx = tl.max(tl.where(nan, float("-inf"), best), AXIS)
    at = tl.min(tl.where(best == tl.expand_dims(mx, AXIS), best_at, _NO_INDEX), AXIS)
    has_nan = nan_at < _NO_INDEX
    return tl.where(has_nan, float("nan"), mx), tl.where(has_nan, nan_at, at)


@triton.jit
def _channel_stats_kernel(
    x_ptr, mean_ptr, max_ptr, idx_ptr, C, P, sxn, sxc, sxp, BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr
):
    """Per (n, c): sum, max and first argmax over P, kept per lane of the tile and reduced across it at the end."""
    n = tl.program_id(1).to(tl.int64)
    cs = tl.program_id(0) * BLOCK_C + tl.arange(0, BLOCK_C)
    c = cs[:, None]
    x_ptr += n * sxn + c * sxc
    total = tl.zeros([BLOCK_C, BLOCK_P], tl.float32)
    best = tl.full([BLOCK_C, BLOCK_P], float("-inf"), tl.float32)
    best_at = tl.full([BLOCK_C, BLOCK_P], _NO_INDEX, tl.int32)
    for p0 in range(0, P, BLOCK_P):
        p = p0 + tl.arange(0, BLOCK_P)[None, :]
        mask = (c < C) & (p < P)
        v = tl.load(x_ptr + p * sxp, mask=mask, other=0.0).to(tl.float32)
        total += v
        best, best_at = _first_max(best, best_at, tl.where(mask, v, float("-inf")), p)
    mx, at = _reduce_first_max(best, best_at, 1)
    out = n * C + cs
    tl.store(mean_ptr + out, tl.sum(total, 1) / P, mask=cs < C)
    tl.store(max_ptr + out, mx, mask=cs < C)
    tl.store(idx_ptr + out, at.to(tl.int64), mask=cs < C)


@triton.jit
def _spatial_kernel(
    x_ptr, g_ptr, mc_ptr, mean_ptr, max_ptr, idx_ptr, dms_ptr, C, P, sxn, sxc, sxp, sgn, sgc, sgp,
    BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr,
):  # fmt: skip
    """Per (n, p): sum, max and first argmax over C of y = x * mc, and sum of g * y when g_ptr is given."""
    n = tl.program_id(1).to(tl.int64)
    ps = tl.program_id(0) * BLOCK_P + tl.arange(0, BLOCK_P)
    p = ps[None, :]
    x_ptr += n * sxn + p * sxp
    total = tl.zeros([BLOCK_C, BLOCK_P], tl.float32)
    best = tl.full([BLOCK_C, BLOCK_P], float("-inf"), tl.float32)
    best_at = tl.full([BLOCK_C, BLOCK_P], _NO_INDEX, tl.int32)
    if g_ptr is not None:
        g_ptr += n * sgn + p * sgp
        dms = tl.zeros([BLOCK_C, BLOCK_P], tl.float32)
    for c0 in range(0, C, BLOCK_C):
        c = c0 + tl.arange(0, BLOCK_C)[:, None]
        mask = (c < C) & (p < P)
        y = tl.load(x_ptr + c * sxc, mask=mask, other=0.0).to(tl.float32)
        if mc_ptr is not None:
            y *= tl.load(mc_ptr + n * C + c, mask=c < C, other=0.0).to(tl.float32)
        total += y
        best, best_at = _first_max(best, best_at, tl.where(mask, y, float("-inf")), c)
        if g_ptr is not None:
            dms += tl.load(g_ptr + c * sgc, mask=mask, other=0.0).to(tl.float32) * y
    mx, at = _reduce_first_max(best, best_at, 0)
    out = n * P + ps
    tl.store(mean_ptr + out, tl.sum(total, 0) / C, mask=ps < P)
    tl.store(max_ptr + out, mx, mask=ps < P)
    tl.store(idx_ptr + out, at.to(tl.int64), mask=ps < P)
    if g_ptr is not None:
        tl.store(dms_ptr + out, tl.sum(dms, 0), mask=ps < P)


@triton.jit
def _gate_apply_kernel(
    x_ptr, mc_ptr, ms_ptr, r_ptr, out_ptr, C, P, sxn, sxc, sxp, srn, src, srp, son, soc, sop,
    RELU: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr,
):  # fmt: skip
    """out = x * mc * ms (+ r) (then ReLU) on one [BLOCK_C, BLOCK_P] tile of one sample."""
    n = tl.program_id(2).to(tl.int64)
    c = (tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C))[:, None]
    p = (tl.program_id(0) * BLOCK_P + tl.arange(0, BLOCK_P))[None, :]
    mask = (c < C) & (p < P)
    y = tl.load(x_ptr + n * sxn + c * sxc + p * sxp, mask=mask, other=0.0).to(tl.float32)
    if mc_ptr is not None:
        y *= tl.load(mc_ptr + n * C + c, mask=c < C, other=0.0).to(tl.float32)
    if ms_ptr is not None:
        y *= tl.load(ms_ptr + n * P + p, mask=p < P, other=0.0).to(tl.float32)
    if r_ptr is not None:
        y += tl.load(r_ptr + n * srn + c * src + p * srp, mask=mask, other=0.0).to(tl.float32)
    if RELU:
        y = tl.maximum(y, 0.0, propagate_nan=tl.PropagateNan.ALL)  # NaN stays NaN, as in torch.relu
    tl.store(out_ptr + n * son + c * soc + p * sop, y.to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _grad_of_scaled(g, n, c, p, C, P, ms_ptr, dmean_ptr, dmax_ptr, sidx_ptr):
    """dy from g (float32): g * ms + dmean / C + dmax where c == sidx, each term only where its pointer is given."""
    at = n * P + p
    if ms_ptr is not None:
        g *= tl.load(ms_ptr + at, mask=p < P, other=0.0).to(tl.float32)
    if dmean_ptr is not None:
        g += tl.load(dmean_ptr + at, mask=p < P, other=0.0).to(tl.float32) / C
    if dmax_ptr is not None:
        dmax = tl.load(dmax_ptr + at, mask=p < P, other=0.0).to(tl.float32)
        g += tl.where(c == tl.load(sidx_ptr + at, mask=p < P, other=-1), dmax, 0.0)
    return g


@triton.jit
def _channel_grad_kernel(
    x_ptr, g_ptr, ms_ptr, dmean_ptr, dmax_ptr, sidx_ptr, dmc_ptr, C, P, sxn, sxc, sxp, sgn, sgc, sgp,
    BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr,
):  # fmt: skip
    """Per (n, c): sum over P of dy * x."""
    n = tl.program_id(1).to(tl.int64)
    cs = tl.program_id(0) * BLOCK_C + tl.arange(0, BLOCK_C)
    c = cs[:, None]
    x_ptr += n * sxn + c * sxc
    g_ptr += n * sgn + c * sgc
    total = tl.zeros([BLOCK_C, BLOCK_P], tl.float32)
    for p0 in range(0, P, BLOCK_P):
        p = p0 + tl.arange(0, BLOCK_P)[None, :]
        mask = (c < C) & (p < P)
        x = tl.load(x_ptr + p * sxp, mask=mask, other=0.0).to(tl.float32)
        g = tl.load(g_ptr + p * sgp, mask=mask, other=0.0).to(tl.float32)
        total += _grad_of_scaled(g, n, c, p, C, P, ms_ptr, dmean_ptr, dmax_ptr, sidx_ptr) * x
    tl.store(dmc_ptr + n * C + cs, tl.sum(total, 1), mask=cs < C)


@triton.jit
def _input_grad_kernel(
    g_ptr, mc_ptr, ms_ptr, dmean_ptr, dmax_ptr, sidx_ptr, davg_ptr, dcmax_ptr, cidx_ptr, dx_ptr,
    C, P, sgn, sgc, sgp, sdn, sdc, sdp, BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr,
):  # fmt: skip
    """dx = dy * mc + davg / P + dcmax where p == cidx on one [BLOCK_C, BLOCK_P] tile of one sample."""
    n = tl.program_id(2).to(tl.int64)
    c = (tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C))[:, None]
    p = (tl.program_id(0) * BLOCK_P + tl.arange(0, BLOCK_P))[None, :]
    mask = (c < C) & (p < P)
    g = tl.load(g_ptr + n * sgn + c * sgc + p * sgp, mask=mask, other=0.0).to(tl.float32)
    dx = _grad_of_scaled(g, n, c, p, C, P, ms_ptr, dmean_ptr, dmax_ptr, sidx_ptr)
    at = n * C + c
    if mc_ptr is not None:
        dx *= tl.load(mc_ptr + at, mask=c < C, other=0.0).to(tl.float32)
    if davg_ptr is not None:
        dx += tl.load(davg_ptr + at, mask=c < C, other=0.0).to(tl.float32) / P
    if dcmax_ptr is not None:
        dcmax = tl.load(dcmax_ptr + at, mask=c < C, other=0.0).to(tl.float32)
        dx += tl.where(p == tl.load(cidx_ptr + at, mask=c < C, other=-1), dcmax, 0.0)
    tl.store(dx_ptr + n * sdn + c * sdc + p * sdp, dx.to(dx_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _simam_weight(x, mean, inv):
    """d = x - mean and SimAM's weight s = sigmoid(inv d^2 + 1/2), both float32."""
    d = x - mean
    return d, tl.sigmoid(inv * (d * d) + 0.5)


@triton.jit
def _simam_stats_kernel(
    x_ptr, mean_ptr, inv_ptr, e_lambda, C, P, DOF, sxn, sxc, sxp, BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr
):
    """Per (n, c): the mean over P, then in a second loop the squared deviations about it, for inv; DOF is
    max(P - 1, 1), from the host (Triton makes an argument equal to 1 a constant)."""
    n = tl.program_id(1).to(tl.int64)
    cs = tl.program_id(0) * BLOCK_C + tl.arange(0, BLOCK_C)
    c = cs[:, None]
    x_ptr += n * sxn + c * sxc
    total = tl.zeros([BLOCK_C, BLOCK_P], tl.float32)
    for p0 in range(0, P, BLOCK_P):
        p = p0 + tl.arange(0, BLOCK_P)[None, :]
        total += tl.load(x_ptr + p * sxp, mask=(c < C) & (p < P), other=0.0).to(tl.float32)
    mean = tl.sum(total, 1) / P
    squares = tl.zeros([BLOCK_C, BLOCK_P], tl.float32)
    for p0 in range(0, P, BLOCK_P):
        p = p0 + tl.arange(0, BLOCK_P)[None, :]
        mask = (c < C) & (p < P)
        x = tl.load(x_ptr + p * sxp, mask=mask, other=0.0).to(tl.float32)
        d = tl.where(mask, x - mean[:, None], 0.0)
        squares += d * d
    variance = tl.sum(squares, 1) / DOF
    out = n * C + cs
    tl.store(mean_ptr + out, mean, mask=cs < C)
    tl.store(inv_ptr + out, 1 / (4 * (variance + e_lambda)), mask=cs < C)


@triton.jit
def _simam_apply_kernel(
    x_ptr, mean_ptr, inv_ptr, out_ptr, C, P, sxn, sxc, sxp, son, soc, sop,
    BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr,
):  # fmt: skip
    """out = x * s on one [BLOCK_C, BLOCK_P] tile of one sample."""
    n = tl.program_id(2).to(tl.int64)
    c = (tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C))[:, None]
    p = (tl.program_id(0) * BLOCK_P + tl.arange(0, BLOCK_P))[None, :]
    mask = (c < C) & (p < P)
    x = tl.load(x_ptr + n * sxn + c * sxc + p * sxp, mask=mask, other=0.0).to(tl.float32)
    mean = tl.load(mean_ptr + n * C + c, mask=c < C, other=0.0).to(tl.float32)
    inv = tl.load(inv_ptr + n * C + c, mask=c < C, other=0.0).to(tl.float32)
    _, s = _simam_weight(x, mean, inv)
    tl.store(out_ptr + n * son + c * soc + p * sop, (x * s).to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _simam_grad_stats_kernel(
    x_ptr, g_ptr, mean_ptr, inv_ptr, a_ptr, b_ptr, C, P, sxn, sxc, sxp, sgn, sgc, sgp,
    BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr,
):  # fmt: skip
    """Per (n, c): sums over P of h d and h d^2 (a masked element has x = g = 0, so h = 0)."""
    n = tl.program_id(1).to(tl.int64)
    cs = tl.program_id(0) * BLOCK_C + tl.arange(0, BLOCK_C)
    c = cs[:, None]
    x_ptr += n * sxn + c * sxc
    g_ptr += n * sgn + c * sgc
    mean = tl.load(mean_ptr + n * C + c, mask=c < C, other=0.0).to(tl.float32)
    inv = tl.load(inv_ptr + n * C + c, mask=c < C, other=0.0).to(tl.float32)
    a = tl.zeros([BLOCK_C, BLOCK_P], tl.float32)
    b = tl.zeros([BLOCK_C, BLOCK_P], tl.float32)
    for p0 in range(0, P, BLOCK_P):
        p = p0 + tl.arange(0, BLOCK_P)[None, :]
        mask = (c < C) & (p < P)
        x = tl.load(x_ptr + p * sxp, mask=mask, other=0.0).to(tl.float32)
        g = tl.load(g_ptr + p * sgp, mask=mask, other=0.0).to(tl.float32)
        d, s = _simam_weight(x, mean, inv)
        hd = g * x * s * (1 - s) * d
        a += hd
        b += hd * d
    out = n * C + cs
    tl.store(a_ptr + out, tl.sum(a, 1), mask=cs < C)
    tl.store(b_ptr + out, tl.sum(b, 1), mask=cs < C)


@triton.jit
def _simam_input_grad_kernel(
    x_ptr, g_ptr, mean_ptr, inv_ptr, a_ptr, b_ptr, dx_ptr, C, P, DOF, sxn, sxc, sxp, sgn, sgc, sgp, sdn, sdc, sdp,
    BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr,
):  # fmt: skip
    """dx = g s + 2 inv (h d - A / P) - 8 inv^2 d B / max(P - 1, 1) on one [BLOCK_C, BLOCK_P] tile of one sample."""
    n = tl.program_id(2).to(tl.int64)
    c = (tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C))[:, None]
    p = (tl.program_id(0) * BLOCK_P + tl.arange(0, BLOCK_P))[None, :]
    mask = (c < C) & (p < P)
    x = tl.load(x_ptr + n * sxn + c * sxc + p * sxp, mask=mask, other=0.0).to(tl.float32)
    g = tl.load(g_ptr + n * sgn + c * sgc + p * sgp, mask=mask, other=0.0).to(tl.float32)
    at = n * C + c
    mean = tl.load(mean_ptr + at, mask=c < C, other=0.0).to(tl.float32)
    inv = tl.load(inv_ptr + at, mask=c < C, other=0.0).to(tl.float32)
    a = tl.load(a_ptr + at, mask=c < C, other=0.0).to(tl.float32)
    b = tl.load(b_ptr + at, mask=c < C, other=0.0).to(tl.float32)
    d, s = _simam_weight(x, mean, inv)
    h = g * x * s * (1 - s)
    dx = g * s + 2 * inv * (h * d - a / P) - 8 * inv * inv * d * b / DOF
    tl.store(dx_ptr + n * sdn + c * sdc + p * sdp, dx.to(dx_ptr.dtype.element_ty), mask=mask)
