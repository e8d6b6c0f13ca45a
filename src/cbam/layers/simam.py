"""SimAM (Yang et al., ICML 2021): a parameter-free weight for every neuron from its energy."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from cbam.errors import ConfigError
from cbam.layers.fused import backend_for, check_impl
from cbam.layers.fused.simam import simam_forward
from cbam.layers.maps import check_feature_map


class SimAM(nn.Module):
    """out = sigmoid(1 / E) * F with 1 / E = (t - mu)^2 / (4 (sigma^2 + lambda)) + 1/2 (eq. 5): mu is the mean of
    the neuron's channel and sigma^2 its sum of squared deviations over n = H W - 1, as the authors compute it.
    No parameters; `e_lambda` is the paper's regulariser (1e-4). On a 1 x 1 map (n = 0, where the authors' code
    divides 0 by 0) every weight is sigmoid(1/2). `impl` picks the implementation (`cbam.layers.fused`: the fused
    op reads the map once for the statistics and once for the weighting, and keeps only x for backward).

    In a block it goes right after the last spatial convolution, before that convolution's BatchNorm (a ResNet
    block's conv2, an inverted residual's depthwise convolution), as the authors' networks place it.
    """

    preferred_site = "conv"

    def __init__(self, channels: int, e_lambda: float = 1e-4, impl: str = "auto") -> None:
        super().__init__()
        if e_lambda <= 0:
            raise ConfigError(f"SimAM's e_lambda must be positive (it keeps the energy finite), got {e_lambda}")
        self.channels, self.e_lambda, self.impl = channels, e_lambda, check_impl(impl)

    def attention_map(self, x: Tensor) -> Tensor:
        """The neurons' weights, the input's shape."""
        n = x.shape[2] * x.shape[3] - 1
        squared = (x - x.mean(dim=(2, 3), keepdim=True)).pow(2)
        variance = squared.sum(dim=(2, 3), keepdim=True) / max(n, 1)
        return (squared / (4 * (variance + self.e_lambda)) + 0.5).sigmoid()

    def forward(self, x: Tensor) -> Tensor:
        if not torch.jit.is_scripting():
            check_feature_map(x, "SimAM")
            fused = self._fused(x)
            if fused is not None:
                return fused
        return x * self.attention_map(x)

    @torch.jit.unused
    def _fused(self, x: Tensor) -> Tensor | None:
        """The fused op's output, or None where `impl` runs the eager ops on x."""
        backend = backend_for(self.impl, x)
        if backend is None:
            return None
        traced = torch.is_grad_enabled() or torch.compiler.is_compiling() or torch._C._len_torch_dispatch_stack() > 0
        if traced:  # autograd, tracing and dispatch modes need the registered op; plain inference skips the dispatcher
            return torch.ops.cbam.simam(x, self.e_lambda, backend.name)[0]
        return simam_forward(x, self.e_lambda, backend.name)[0]

    def extra_repr(self) -> str:
        return f"e_lambda={self.e_lambda}, impl={self.impl}"
