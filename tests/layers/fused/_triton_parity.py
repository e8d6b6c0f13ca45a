"""Parity of `triton_kernels` with `primitives`, run by Triton's CPU interpreter; test_triton_kernels.py runs it.

Run it from the repository's root as `TRITON_INTERPRET=1 python -m tests.layers.fused._triton_parity`: the
variable must be set before triton itself is imported (its own library functions are decorated then), so this is a
process of its own. It tries every case, prints each mismatch and exits non-zero if there was one. Its random draws
are seeded by `CBAM_TEST_SEED` (default 0), as the tests' are. Without `TRITON_INTERPRET=1` it runs the compiled
kernels on the GPU (`benchmarks/gpu_check.sh`), every tensor made there.
"""

from __future__ import annotations

import itertools
import os
import sys
from collections.abc import Iterator

import torch
from torch import Tensor

from cbam.layers.fused import primitives as ref
from cbam.layers.fused import triton_kernels as tk
from tests.layers.rounding import outcomes, rounding_bound

NCHW, CL = torch.contiguous_format, torch.channels_last
DTYPES = (torch.float32, torch.float16, torch.bfloat16)
UNIT_ROUNDOFF = torch.finfo(torch.float32).eps / 2  # of the float32 arithmetic every implementation does
PASSES = ("channel_stats", "spatial_stats", "spatial_grad", "gate_apply", "channel_grad", "input_grad")
ELEMENTWISE = ("gate_apply", "input_grad")
# Whole layers checked with impl="triton": the paper's, every channel gate of SE's shape that the fused gate runs, SimAM
LAYERS = ("cbam", "se", "spatial", "eca", "ceca", "ese", "ge", "simam")
# (N, C, H, W): odd C and P (several blocks of the kept axis in both layouts), P = 1, C = 1
SHAPES = ((2, 37, 5, 7), (2, 3, 1, 1), (2, 1, 6, 6))
# P or C longer than the largest block (512) of a reduction over it, for the passes that reduce over it (those
# that keep it would launch hundreds of programs, which the interpreter runs one by one) and the elementwise ones
LONG_SHAPES = {(1, 3, 24, 25): ("channel_stats", "channel_grad"), (1, 600, 1, 3): ("spatial_stats", "spatial_grad")}
SMALL_SHAPE = (2, 5, 3, 4)
PAIRS = (("dmax", "sidx"), ("dcmax", "cidx"))  # a max's gradient needs the max's index
SIMAM = ("simam_stats", "simam_apply", "simam_grad_stats", "simam_input_grad")
FULL_SIZE = (*ELEMENTWISE, "simam_apply", "simam_input_grad")  # the passes whose result's layout is checked
SIMAM_SHAPES = (*SHAPES, (1, 3, 24, 25))  # and P longer than the largest block of a reduction over it
E_LAMBDA = 1e-4
WEIGHT_ROUNDINGS = 10
"""A bound on SimAM's weight s = sigmoid(z), z = inv d^2 + 1/2, in units of u x (s + s (1 - s) z), on a GPU too: z
has at most 6 roundings (4 of inv d^2, one of z, one of exp's argument), each moving s by s (1 - s) z u, and the
sigmoid's own at most 9 u s (exp's 2 ulps, 1 + e, 1 / (1 + e) in 2 ulps)."""


def maps(shape: tuple[int, ...], dtype: torch.dtype, fmt: torch.memory_format, values: str = "normal") -> Tensor:
    """An (N, C, P) view of a random (N, C, H, W) map in `fmt`.

    values: "normal"; "ties", small integers and zero slices; "special", normal with -inf slices and NaNs.
    """
    x = torch.randint(-2, 3, shape).float() if values == "ties" else torch.randn(shape)
    x = x.flatten(2)
    if values == "ties":
        x[:, 0] = 0  # a whole channel of zeros
        x[:, :, 0] = 0  # a whole column over C of zeros
    if values == "special":
        # NaN beats everything and the first one wins. Two in three of channel 2 and of column 1 are NaNs: as a
        # block size is a power of 2, not a multiple of 3, a lane of a tile meets NaN after NaN and a number after NaN
        c, p = x.shape[1:]
        x[0, 2, torch.arange(p) % 3 > 0] = float("nan")
        x[0, (torch.arange(c) % 3 > 0) & (torch.arange(c) > 1), 1] = float("nan")
        x[0, 1] = float("-inf")  # a whole channel
        x[-1, :, -1] = float("-inf")  # a whole column over C
    return x.unflatten(2, shape[2:]).to(dtype).to(memory_format=fmt).flatten(2)


def operands(x: Tensor, ties: bool = False) -> dict[str, Tensor]:
    """Every small operand of the six passes, for the map x: weights, upstream gradients and max indices."""
    n, c, p = x.shape
    weight = (lambda *s: torch.randint(1, 3, s) / 2) if ties else (lambda *s: torch.rand(s) + 0.5)
    return {
        "mc": weight(n, c),
        "ms": weight(n, p),
        "dmean": torch.randn(n, p),
        "dmax": torch.randn(n, p),
        "sidx": torch.randint(0, c, (n, p)),
        "davg": torch.randn(n, c),
        "dcmax": torch.randn(n, c),
        "cidx": torch.randint(0, p, (n, c)),
    }


def calls(x: Tensor, g: Tensor, ops: dict[str, Tensor], names: tuple[str, ...]) -> Iterator[tuple[str, tuple]]:
    """The passes named, with every operand present."""
    o = ops
    every = {  # the argument lists of the passes, in PASSES order
        "channel_stats": (x,),
        "spatial_stats": (x, o["mc"]),
        "spatial_grad": (x, g, o["mc"]),
        "gate_apply": (x, o["mc"], o["ms"]),
        "channel_grad": (x, g, o["ms"], o["dmean"], o["dmax"], o["sidx"]),
        "input_grad": (g, o["mc"], o["ms"], o["dmean"], o["dmax"], o["sidx"], o["davg"], o["dcmax"], o["cidx"]),
    }
    return ((name, every[name]) for name in names)


def residual(x: Tensor, shortcut: Tensor, ops: dict[str, Tensor]) -> Iterator[tuple[str, tuple]]:
    """gate_apply as the tail of a residual block: + a shortcut in whatever layout it comes, then ReLU or not."""
    for relu in (False, True):
        yield "gate_apply", (x, ops["mc"], ops["ms"], shortcut, relu)


def written_over_input(x: Tensor, shortcut: Tensor, ops: dict[str, Tensor]) -> str | None:
    """None if gate_apply with out=x (inference's residual tail) puts primitives' result in x's own memory."""
    args = (x, ops["mc"], ops["ms"], shortcut, True)
    target = x.clone()
    got = tk.gate_apply(target, *args[1:], out=target)
    if got.data_ptr() != target.data_ptr():
        return "the result was not written over x"
    return compare(got, ref.gate_apply(*args), *rounding_scale("gate_apply", args))


def absent(x: Tensor, g: Tensor, ops: dict[str, Tensor]) -> Iterator[tuple[str, tuple]]:
    """Each pass with every combination of absent operands that `primitives` accepts (no dmax without sidx)."""

    def subsets(*names: str) -> Iterator[dict[str, Tensor | None]]:
        for keep in itertools.product((False, True), repeat=len(names)):
            chosen = {k: ops[k] if kept else None for k, kept in zip(names, keep, strict=True)}
            if not any(chosen.get(v) is not None and chosen.get(i) is None for v, i in PAIRS):
                yield chosen

    for s in subsets("mc"):
        yield "spatial_stats", (x, s["mc"])
        yield "spatial_grad", (x, g, s["mc"])
    for s in subsets("mc", "ms"):
        yield "gate_apply", (x, s["mc"], s["ms"])
    for s in subsets("ms", "dmean", "dmax", "sidx"):
        yield "channel_grad", (x, g, s["ms"], s["dmean"], s["dmax"], s["sidx"])
    for s in subsets("mc", "ms", "dmean", "dmax", "sidx", "davg", "dcmax", "cidx"):
        yield "input_grad", (g, *s.values())


def simam(x: Tensor, g: Tensor) -> Iterator[tuple[str, tuple]]:
    """SimAM's four passes on x and g, each given the statistics primitives computes from them."""
    mean, inv = ref.simam_stats(x, E_LAMBDA)
    a, b = ref.simam_grad_stats(x, g, mean, inv)
    yield "simam_stats", (x, E_LAMBDA)
    yield "simam_apply", (x, mean, inv)
    yield "simam_grad_stats", (x, g, mean, inv)
    yield "simam_input_grad", (x, g, mean, inv, a, b)


def rounding_scale(name: str, args: tuple) -> tuple[object, int]:
    """What bounds the rounding of a pass, whatever order an implementation computes it in: the pass on the
    operands' magnitudes (non-finite ones as 0: a finite result has no such term), which for each result is the sum
    of its terms' magnitudes, and the most roundings in a chain (the length summed over, plus one per operand)."""
    if name in SIMAM:
        return simam_rounding_scale(name, args)
    magnitudes = [torch.nan_to_num(a.abs(), nan=0.0, posinf=0.0) if _is_float(a) else a for a in args]
    _, c, p = args[0].shape
    summed = {"channel_stats": p, "channel_grad": p, "spatial_stats": c, "spatial_grad": c}.get(name, 0)
    return getattr(ref, name)(*magnitudes), summed + len(args)


def simam_rounding_scale(name: str, args: tuple) -> tuple[object, int]:
    """`rounding_scale` for SimAM, where a difference and a sigmoid make the pass on magnitudes no bound: each term's
    magnitude weighted by how far a relative error in it moves the result, from primitives' chain of operations.

    With d = x - mean exact and s's bound m_s = s + s (1 - s) z (`WEIGHT_ROUNDINGS`), h = g x s (1 - s) is bounded by
    m_h = |g x| (|1 - 2s| m_s + s (1 - s)) (1 - s is exact, s > 1/2). The mean's own error enters v only at second
    order: the mean makes the sum of squared deviations stationary, which is why the statistics take two loops.
    """
    xf = args[0].double()
    p = xf.shape[2]
    if name == "simam_stats":
        return (xf.abs().mean(dim=2), ref.simam_stats(*args)[1]), p + 5
    at = 1 if name == "simam_apply" else 2  # after x, or after x and g
    mean, inv = (t.double().unsqueeze(2) for t in args[at : at + 2])
    d = xf - mean
    z = inv * d * d + 0.5
    s = torch.sigmoid(z)
    m_s = s + s * (1 - s) * z
    if name == "simam_apply":
        return xf.abs() * m_s, WEIGHT_ROUNDINGS + 1
    gf = args[1].double()
    m_h = (gf * xf).abs() * ((1 - 2 * s).abs() * m_s + s * (1 - s))
    if name == "simam_grad_stats":
        return ((m_h * d.abs()).sum(dim=2), (m_h * d * d).sum(dim=2)), p + WEIGHT_ROUNDINGS + 3
    a, b = (t.double().unsqueeze(2) for t in args[4:])
    m_dx = gf.abs() * m_s + 2 * inv * (m_h * d.abs() + a.abs() / p) + 8 * inv * inv * d.abs() * b.abs() / max(p - 1, 1)
    return m_dx, WEIGHT_ROUNDINGS + 6


def _is_float(a: object) -> bool:
    return isinstance(a, Tensor) and a.is_floating_point()


def compare(got: object, want: object, magnitude: object, depth: int) -> str | None:
    """None if got matches primitives' want: indices exactly, non-finite values exactly, every finite value within
    what two float32 evaluations of the same sum may differ by, 2 gamma(depth) x its terms' magnitude (Higham's
    bound for any summation order, gamma(k) = k u / (1 - k u)), plus for a result rounded to half precision one unit
    in the last place of that dtype."""
    if isinstance(want, tuple):
        if not isinstance(got, tuple) or len(got) != len(want):
            return f"expected {len(want)} results, got {got!r:.80}"
        errors = [compare(a, b, m, depth) for a, b, m in zip(got, want, magnitude, strict=True)]
        return "; ".join(f"result {i}: {e}" for i, e in enumerate(errors) if e) or None
    if got.dtype != want.dtype or got.shape != want.shape:
        return f"got {got.dtype} {tuple(got.shape)}, expected {want.dtype} {tuple(want.shape)}"
    if not want.is_floating_point():
        bad = (got != want).nonzero()
        return f"{len(bad)} indices differ, first at {bad[0].tolist()}" if len(bad) else None
    got64, want64 = got.double(), want.double()
    finite = want64.isfinite()
    same = (got64 == want64) | (got64.isnan() & want64.isnan())
    if not same[~finite].all():
        return "a non-finite value differs"
    gamma = depth * UNIT_ROUNDOFF / (1 - depth * UNIT_ROUNDOFF)
    last_rounding = torch.finfo(want.dtype).eps * want64.abs() if want.dtype != torch.float32 else 0.0
    allowed = 2 * gamma * magnitude.double() + last_rounding
    excess = ((got64 - want64).abs() - allowed)[finite]
    if excess.numel() and excess.max() > 0:
        i = int(excess.argmax())
        error, bound = (got64 - want64).abs()[finite][i].item(), allowed[finite][i].item()
        return f"{int((excess > 0).sum())} values off, the worst by {error:.3g} where {bound:.3g} is allowed"
    return None


def check_layout(got: Tensor, like: Tensor) -> str | None:
    """None if got, a full-size result, has the strides of `like` (NCHW or channels_last), else contiguous ones."""
    dense = like.is_contiguous() or like.transpose(1, 2).is_contiguous()
    expected = like.stride() if dense else like.contiguous().stride()
    return None if got.stride() == expected else f"strides {got.stride()}, expected {expected}"


def main() -> int:
    if os.environ.get("TRITON_INTERPRET") != "1":
        print("set TRITON_INTERPRET=1 in the environment: there is no GPU to run the kernels on otherwise")
        return 2
    torch.manual_seed(int(os.environ.get("CBAM_TEST_SEED", "0") or 0))
    failures, count = [], 0

    def run(tag: str, cases: Iterator[tuple[str, tuple]]) -> None:
        nonlocal count
        for name, args in cases:
            count += 1
            try:
                got = getattr(tk, name)(*args)
                error = compare(got, getattr(ref, name)(*args), *rounding_scale(name, args))
                if error is None and name in FULL_SIZE:
                    error = check_layout(got, args[0])
            except Exception as e:  # a crash is one more failure to report
                error = f"{type(e).__name__}: {e}"
            if error:
                failures.append(f"{name} [{tag}]: {error}")

    shapes = {shape: PASSES for shape in SHAPES} | {s: (*r, *ELEMENTWISE) for s, r in LONG_SHAPES.items()}
    for dtype, (shape, names), (fx, fg) in itertools.product(DTYPES, shapes.items(), ((NCHW, CL), (CL, NCHW))):
        x, g = maps(shape, dtype, fx), maps(shape, dtype, fg)
        ops = operands(x)
        run(f"{dtype} {shape} x {fx} g {fg}", calls(x, g, ops, names))
        for shortcut in (g, maps(shape, dtype, fx)):
            run(f"residual {dtype} {shape} x {fx} shortcut {shortcut.stride()}", residual(x, shortcut, ops))
        count += 1
        error = written_over_input(x, g, ops)
        if error:
            failures.append(f"gate_apply over x [{dtype} {shape} x {fx} shortcut {fg}]: {error}")
        x = maps(shape, dtype, fx, "ties")
        reductions = tuple(n for n in names if n not in ELEMENTWISE)
        run(f"ties {dtype} {shape} x {fx} g {fg}", calls(x, g, operands(x, ties=True), reductions))
        if "spatial_stats" in names:
            run(f"ties, no mc {dtype} {shape} {fx}", [("spatial_stats", (x, None))])
    for dtype, shape, fx, fg in itertools.product(DTYPES, SIMAM_SHAPES, (NCHW, CL), (NCHW, CL)):
        run(f"SimAM {dtype} {shape} x {fx} g {fg}", simam(maps(shape, dtype, fx), maps(shape, dtype, fg)))
    for fx, fg in ((NCHW, CL), (CL, NCHW)):
        x, g = maps(SMALL_SHAPE, torch.float32, fx), maps(SMALL_SHAPE, torch.float32, fg)
        run(f"absent operands, x {fx} g {fg}", absent(x, g, operands(x)))
    for dtype, (shape, names), fmt in itertools.product(DTYPES, shapes.items(), (NCHW, CL)):
        if shape[1] >= 3 and shape[2] * shape[3] >= 2:
            x = maps(shape, dtype, fmt, "special")
            shortcut = maps(shape, dtype, NCHW if fmt == CL else CL)
            cases = [("channel_stats", (x,)), ("spatial_stats", (x, None)), *residual(x, shortcut, operands(x))]
            run(f"-inf and NaN {dtype} {shape} {fmt}", [c for c in cases if c[0] in names])
    # neither C nor P of unit stride: the kernels work on a contiguous copy
    x, g = (torch.randn(2, 5, 4 * 3)[..., ::3] for _ in range(2))
    run("strided views", [*calls(x, g, operands(x), PASSES), *simam(x, g)])
    # P of unit stride, C strided (every other channel of a wider map): the kernels take such views as they are
    x, g = (torch.randn(2, 10, 12)[:, ::2] for _ in range(2))
    ops = operands(x)
    cases = [*calls(x, g, ops, PASSES), *residual(x, g, ops), *residual(x, g.contiguous(), ops), *simam(x, g)]
    run("every other channel", cases)

    for name, tag, layout, dtype in itertools.product(LAYERS, ("train", "eval"), (NCHW, CL), DTYPES):
        count += 1
        error = layer_error(name, tag == "train", layout, dtype)
        if error:
            failures.append(f"impl='triton' {name} layer [{tag}, {layout}, {dtype}]: {error}")

    print("\n".join(failures))
    print(f"{count - len(failures)} of {count} cases match primitives.py and the eager layers")
    return 1 if failures else 0


def layer_error(name: str, train: bool, layout: torch.memory_format, dtype: torch.dtype) -> str | None:
    """A whole layer with impl='triton' against the same layer run eagerly in `dtype` on the same inputs and weights:
    output, every gradient and the BatchNorm buffers within the eager layer's own rounding (`tests.layers.rounding`)."""
    import copy
    import functools

    import cbam
    from cbam.layers.eca import EfficientChannelAttention
    from cbam.layers.ese import EffectiveSqueezeExcite
    from cbam.layers.fused import set_attention_impl
    from cbam.layers.gather_excite import GatherExcite
    from cbam.layers.simam import SimAM

    build = {
        "cbam": cbam.CBAM,
        "se": cbam.SqueezeExcite,
        "spatial": cbam.SpatialAttention,
        "eca": EfficientChannelAttention,
        "ceca": functools.partial(EfficientChannelAttention, circular=True),
        "ese": EffectiveSqueezeExcite,
        "ge": GatherExcite,
        "simam": SimAM,
    }[name]
    eager = build(12, impl="eager").train(train)
    with torch.no_grad():
        for p in eager.parameters():
            p.normal_(0, 0.5)
    eager = eager.to(dtype)
    fused = set_attention_impl(copy.deepcopy(eager), "triton")
    x = torch.relu(torch.randn(2, 12, 5, 6)).to(dtype).contiguous(memory_format=layout)  # zeros: max-pool ties
    upstream = torch.randn(2, 12, 5, 6)
    return "; ".join(rounding_bound(eager, [x], upstream).failures(outcomes(fused, [x], upstream))) or None


if __name__ == "__main__":
    if os.environ.get("TRITON_INTERPRET") != "1":
        torch.set_default_device("cuda")  # compiled Triton kernels take GPU tensors only
    sys.exit(main())
