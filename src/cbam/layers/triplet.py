"""Triplet Attention (Misra et al., WACV 2021): three spatial-style gates over the (C, W), (H, C) and (H, W)
planes of the map, averaged."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from cbam.errors import ConfigError
from cbam.layers.fused import backend_for, check_impl
from cbam.layers.fused import triplet as fused_triplet
from cbam.layers.fused.backends import kernels
from cbam.layers.maps import check_feature_map


class ZPoolGate(nn.Module):
    """One branch's gate: k x k convolution -> BatchNorm -> sigmoid of its Z-pooled plane, as the authors'
    `AttentionGate` computes it (BatchNorm with eps 1e-5, momentum 0.01) before scaling its input."""

    def __init__(self, kernel_size: int, device: torch.device | str | None = None,
                 dtype: torch.dtype | None = None) -> None:  # fmt: skip
        super().__init__()
        factory = {"device": device, "dtype": dtype}
        self.conv = nn.Conv2d(2, 1, kernel_size, padding=(kernel_size - 1) // 2, bias=False, **factory)
        self.bn = nn.BatchNorm2d(1, eps=1e-5, momentum=0.01, **factory)

    def forward(self, pooled: Tensor, backend: str = "") -> Tensor:
        """The (N, 1, A, B) sigmoid map of an (N, 2, A, B) Z-pooled plane (`z_pool`), its convolution in
        `backend`'s loops (`cbam.layers.fused.plane_conv`) where one is named, else PyTorch's."""
        z = self.conv(pooled) if backend == "" else torch.ops.cbam.plane_conv(pooled, self.conv.weight, backend)
        return torch.sigmoid(self.bn(z))


def z_pool(x: Tensor, dim: int) -> Tensor:
    """[max, mean] of x along `dim`, stacked as two channels: (N, C, H, W) pooled along H gives (N, 2, C, W)."""
    return torch.stack([x.amax(dim=dim), x.mean(dim=dim)], dim=1)


class TripletAttention(nn.Module):
    """out = (1/3) (P1^-1(G_cw(P1 F)) + P2^-1(G_hc(P2 F)) + G_hw(F)) (Sect. 3.2), each G a `ZPoolGate` over a
    rotation P of the map: the channel-height, channel-width and the spatial branch. `no_spatial=True` keeps
    the two cross-dimension branches only (averaged over two), as the authors' option does. `impl` picks the
    implementation (`cbam.layers.fused`): on the CPU the passes over the map and the three convolutions run in
    C loops (`fused.triplet`, `fused.plane_conv`); elsewhere the eager modules run."""

    def __init__(
        self,
        channels: int,
        kernel_size: int = 7,
        no_spatial: bool = False,
        impl: str = "auto",
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise ConfigError(f"Triplet Attention's kernel_size must be odd and positive, got {kernel_size}")
        factory = {"device": device, "dtype": dtype}
        self.kernel_size, self.no_spatial, self.impl = kernel_size, no_spatial, check_impl(impl)
        self.cw = ZPoolGate(kernel_size, **factory)
        self.hc = ZPoolGate(kernel_size, **factory)
        self.hw = None if no_spatial else ZPoolGate(kernel_size, **factory)

    def forward(self, x: Tensor) -> Tensor:
        if not torch.jit.is_scripting():
            check_feature_map(x, "Triplet Attention")
            backend = self._backend(x)
            if backend != "":
                return self._fused(x, backend)
        # Each branch pools the map where it lies instead of permuting it (the authors' code copies the whole
        # map twice each way); only the small pooled planes are turned so each convolution sees its plane as
        # the authors' does: (C, W) for the channel-height branch, (H, C) for the channel-width one.
        n, c, h, w = x.shape
        gate = self.cw(z_pool(x, dim=2)).view(n, c, 1, w)
        gate = gate + self.hc(z_pool(x, dim=3).transpose(2, 3)).transpose(2, 3).reshape(n, c, h, 1)
        if self.hw is None:
            return x * (gate / 2)
        return x * ((gate + self.hw(z_pool(x, dim=1))) / 3)

    @torch.jit.unused
    def _backend(self, x: Tensor) -> str:
        """The backend whose loops run this layer on x under `impl` (`cbam.layers.fused.triplet`), or "" for eager."""
        backend = backend_for(self.impl, x)
        return backend.name if backend is not None and fused_triplet.has_loops(kernels(backend.name)) else ""

    @torch.jit.unused
    def _fused(self, x: Tensor, backend: str) -> Tensor:
        """The eager forward's computation with the map's passes fused: pools, gates on the planes, weighting."""
        n, c, h, w = x.shape
        pc, ph, pw = torch.ops.cbam.triplet_pool(x, backend)[:3]
        a = self.cw(ph, backend).view(n, c, w)
        b = self.hc(pw.transpose(2, 3), backend).transpose(2, 3).reshape(n, c, h)
        s = None if self.hw is None else self.hw(pc, backend).view(n, h, w)
        return torch.ops.cbam.triplet_apply(x, a, b, s, backend)

    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel_size}, no_spatial={self.no_spatial}, impl={self.impl}"
