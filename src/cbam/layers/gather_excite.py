"""Gather-Excite (Hu et al., NeurIPS 2018): context gathered over an extent, spread back, and gated."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from cbam.errors import ConfigError
from cbam.layers.fused import FusableAttention, check_impl
from cbam.layers.maps import check_feature_map


class GatherExcite(FusableAttention, nn.Module):
    """out = sigmoid(interp(gather(F))) * F (Sect. 3): `gather` averages over windows of `extent` (0: the whole
    map) in the parameter-free GE-theta-minus, or with `parametric=True` (GE-theta) is a stack of log2(extent)
    stride-2 depthwise 3 x 3 convolutions with BatchNorm (ReLU between them), or for the global extent one
    depthwise convolution the size of the map (`feat_size`, which a global GE-theta must be given). `interp`
    is nearest-neighbour upsampling back to the map's size. `impl` picks the implementation (`cbam.layers.fused`),
    which fuses the global GE-theta-minus: its gather is the fused gate's average pool."""

    pool_types: tuple[str, ...] = ("avg",)

    def __init__(
        self,
        channels: int,
        extent: int = 0,
        parametric: bool = False,
        feat_size: int | tuple[int, int] | None = None,
        impl: str = "auto",
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        if extent < 0 or (extent and (extent & (extent - 1) or extent == 1)):
            raise ConfigError(f"Gather-Excite's extent is 0 (global) or a power of 2 from 2 on, got {extent}")
        self.extent, self.parametric, self.impl = extent, parametric, check_impl(impl)
        if impl in ("compiled", "triton") and not self.global_pool_only:
            raise ConfigError(f"impl={impl!r} fuses Gather-Excite's global GE-theta-minus only (extent=0, "
                              "parametric=False)")  # fmt: skip
        factory = {"device": device, "dtype": dtype}
        self.gather: nn.Sequential | None = None
        if parametric:
            if extent == 0 and feat_size is None:
                raise ConfigError("a global GE-theta (extent=0, parametric=True) needs feat_size: its depthwise "
                                  "convolution spans the whole map")  # fmt: skip
            layers: list[nn.Module] = []
            if extent == 0:
                layers += [nn.Conv2d(channels, channels, feat_size, groups=channels, bias=False, **factory),
                           nn.BatchNorm2d(channels, **factory)]  # fmt: skip
            else:
                steps = int(math.log2(extent))
                for i in range(steps):
                    layers += [nn.Conv2d(channels, channels, 3, stride=2, padding=1, groups=channels, bias=False,
                                         **factory), nn.BatchNorm2d(channels, **factory)]  # fmt: skip
                    if i < steps - 1:
                        layers.append(nn.ReLU(inplace=True))
            self.gather = nn.Sequential(*layers)
        elif feat_size is not None:
            raise ConfigError("feat_size applies to a global GE-theta only (parametric=True, extent=0)")

    @property
    def global_pool_only(self) -> bool:
        """Whether this is GE-theta-minus with the global extent: sigmoid(GAP(F)) * F, which the fused gate runs."""
        return self.extent == 0 and not self.parametric

    def gathered(self, x: Tensor) -> Tensor:
        """The context at the gather's resolution, before the excite."""
        if self.gather is not None:
            return self.gather(x)
        if self.extent == 0:
            return x.mean(dim=(2, 3), keepdim=True)
        window = 2 * self.extent - 1
        return F.avg_pool2d(x, window, stride=self.extent, padding=window // 2, count_include_pad=False)

    def attention_map(self, x: Tensor) -> Tensor:
        """The weights, (N, C, 1, 1) for the global extent, else the input's shape."""
        context = self.gathered(x)
        if context.shape[-2:] != (1, 1):
            context = F.interpolate(context, size=x.shape[-2:], mode="nearest")
        return torch.sigmoid(context).to(x.dtype)

    def forward(self, x: Tensor) -> Tensor:
        if not torch.jit.is_scripting():
            check_feature_map(x, "Gather-Excite")
            fused = self._fused(x)
            if fused is not None:
                return fused
        return x * self.attention_map(x)

    def _fused_branches(self) -> tuple[nn.Module | None, nn.Module | None] | None:
        return (self, None) if self.global_pool_only else None

    def fused_channel_fields(self) -> dict[str, object]:
        """The fused gate's arguments (`GateArgs` fields) that compute this gate."""
        return {"use_avg": True, "channel_fn": "none"}

    def extra_repr(self) -> str:
        return f"extent={self.extent or 'global'}, parametric={self.parametric}, impl={self.impl}"
