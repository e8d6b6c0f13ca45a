"""Bounds for an implementation against the eager layers, taken from the eager layers' own rounding.

A fused gate computes what the eager ops compute in another order, so it rounds differently, and by how much
depends on the data and on the CPU: PyTorch's eager kernels pick their vector code (AVX2, AVX-512) when they run,
and the fused ones are built for the CPU. So no comparison here uses a tolerance that happened to pass on one
machine: each runs the eager module in float64 (exact, for this purpose) and in the dtype under test, and lets
the implementation be at most `FACTOR` times as far from float64 as eager is, tensor by tensor, plus one unit in
the last place of the tensor's largest magnitude.

One eager run is one draw of its rounding error, and a scalar (a BatchNorm gradient, a running mean) is a single
number that may happen to land very close to the exact one (measured: up to 160 times closer than the fused gate,
which was as close as eager on other draws). So eager runs `SAMPLES` times: on the inputs, then on copies with each
element moved at random by up to one unit in the last place, which changes every rounding downstream but not the
function (its ReLU and max-pool patterns); each run is measured against its own float64 run, and the bound takes
the largest of those errors.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

FACTOR = 8.0
"""How many times eager's own distance from float64 the implementation under test may be: the same arithmetic in
another order, so errors of the same size, but the C kernels sum a map's positions in 16 running lanes where
PyTorch sums in a cascade. Measured over the parity tests (about 9,000 tensors, seeds 0-5, eager on AVX2 and on
plain code with ATEN_CPU_CAPABILITY=default): at most 5.7 times (an SE gradient over a 32 x 32 map), 4.2 at the
99.9th percentile."""
SAMPLES = 4
"""Eager runs per bound: the inputs as given, then jittered by up to one ulp, each against its own float64 run."""

Step = Callable[..., Tensor]
Outcomes = dict[str, Tensor | None]


def call(module: nn.Module, *inputs: Tensor) -> Tensor:
    """The default step: the module on its inputs."""
    return module(*inputs)


def outcomes(module: nn.Module, inputs: Sequence[Tensor], upstream: Tensor | None, step: Step = call) -> Outcomes:
    """What a parity test compares after one step: the output, then with an `upstream` gradient the gradient of
    each input and parameter, and every buffer (BatchNorm's running statistics and counter)."""
    module.zero_grad(set_to_none=True)
    leaves = [t.detach().requires_grad_(upstream is not None) for t in inputs]
    out = step(module, *leaves)
    result: Outcomes = {"output": out.detach()}
    if upstream is not None:
        out.backward(upstream.to(out.dtype))
        result |= {f"gradient of input {i}": leaf.grad for i, leaf in enumerate(leaves)}
        result |= {f"gradient of {name}": p.grad for name, p in module.named_parameters()}
    result |= {f"buffer {name}": b.detach().clone() for name, b in module.named_buffers()}
    return result


def _distance(got: Tensor | None, want: Tensor | None) -> float:
    if got is None or want is None:
        return 0.0 if got is None and want is None else math.inf
    if got.shape != want.shape:
        return math.inf
    if not want.is_floating_point():
        return 0.0 if torch.equal(got, want) else math.inf
    return (got.double() - want.double()).abs().max().item() if got.numel() else 0.0


@dataclass(frozen=True)
class RoundingBound:
    """The float64 outcomes of a step and, for each, eager's largest distance from them in the dtype under test."""

    exact: Outcomes
    eager_errors: dict[str, list[float]]
    dtype: torch.dtype

    @property
    def eager_error(self) -> dict[str, float]:
        """Eager's largest distance from float64 over the samples, per outcome."""
        return {name: max(errors) for name, errors in self.eager_errors.items()}

    def allowed(self, name: str, got: Tensor) -> float:
        """FACTOR x eager's distance from float64, plus one ulp of the tensor's largest magnitude in its dtype."""
        exact = self.exact[name]
        if exact is None or not exact.is_floating_point():
            return 0.0
        scale = exact.abs().max().item() if exact.numel() else 0.0
        return FACTOR * self.eager_error[name] + torch.finfo(got.dtype).eps * scale

    def failures(self, actual: Outcomes) -> list[str]:
        """One line per outcome of `actual` further from float64 than allowed (or missing, or of another shape)."""
        lines = [f"{name}: missing" for name in self.exact.keys() - actual.keys()]
        for name, got in actual.items():
            error = _distance(got, self.exact.get(name))
            allowed = self.allowed(name, got) if got is not None and name in self.exact else 0.0
            if not error <= allowed:
                lines.append(
                    f"{name}: {error:.3g} from float64, allowed {allowed:.3g} "
                    f"(eager {self.dtype}: {self.eager_error.get(name, math.nan):.3g})"
                )
        return lines

    def check(self, actual: Outcomes, what: str = "") -> None:
        """Assert that every outcome of `actual` is within its bound."""
        failures = self.failures(actual)
        assert not failures, f"{what}: " + "; ".join(failures) if what else "; ".join(failures)


def rounding_bound(
    eager: nn.Module, inputs: Sequence[Tensor], upstream: Tensor | None, step: Step = call, samples: int = SAMPLES
) -> RoundingBound:
    """The bound for one step of `eager` (in the dtype under test, weights and all, in its state before the step)
    on `inputs`; the module itself is left untouched."""
    exact: Outcomes = {}
    errors: dict[str, list[float]] = {}
    wide_upstream = upstream.double() if upstream is not None else None
    generator = torch.Generator().manual_seed(torch.initial_seed())  # the test's seed, without drawing from it
    for k in range(samples):
        sample = [t if k == 0 else jitter(t, generator) for t in inputs]
        low = outcomes(copy.deepcopy(eager), sample, upstream, step)
        high = outcomes(copy.deepcopy(eager).double(), [t.double() for t in sample], wide_upstream, step)
        exact = exact or high
        for name, value in high.items():
            errors.setdefault(name, []).append(_distance(low[name], value))
    return RoundingBound(exact, errors, inputs[0].dtype)


def jitter(t: Tensor, generator: torch.Generator) -> Tensor:
    """t with each element multiplied by 1 + u * eps, u uniform in (-1, 1), rounded back to t's dtype (and layout,
    where dense): about half the elements move by one unit in the last place. Zeros (so ties at zero) stay."""
    u = torch.rand(t.shape, generator=generator, dtype=torch.float64) * 2 - 1
    return torch.empty_like(t).copy_(t.double() * (1 + u * torch.finfo(t.dtype).eps))
