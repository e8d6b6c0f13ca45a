"""Effective squeeze-and-excitation (Lee & Park, CenterMask, CVPR 2020): SE with one full-width layer."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from cbam.errors import ConfigError
from cbam.layers.fused import FusableAttention, check_impl
from cbam.layers.maps import check_feature_map, hard_sigmoid

GATES: tuple[str, ...] = ("hard_sigmoid", "sigmoid")


class EffectiveSqueezeExcite(FusableAttention, nn.Module):
    """eSE: w = hsigmoid(W GAP(F) + b), out = w * F, with W a C x C matrix (no reduction, so no channel
    information is lost in a bottleneck; CenterMask Sect. 3.3). `gate="sigmoid"` swaps the hard sigmoid.
    `impl` picks the implementation (`cbam.layers.fused`)."""

    pool_types: tuple[str, ...] = ("avg",)

    def __init__(
        self,
        channels: int,
        gate: str = "hard_sigmoid",
        impl: str = "auto",
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        if gate not in GATES:
            raise ConfigError(f"eSE's gate is one of {', '.join(GATES)}, got {gate!r}")
        self.gate, self.impl = gate, check_impl(impl)
        self.fc = nn.Linear(channels, channels, device=device, dtype=dtype)

    def logits(self, x: Tensor) -> Tensor:
        """The map before the gate, (N, C, 1, 1)."""
        return self.fc(x.mean(dim=(2, 3))).view(x.shape[0], x.shape[1], 1, 1)

    def attention_map(self, x: Tensor) -> Tensor:
        """The channel weights, (N, C, 1, 1)."""
        logits = self.logits(x)
        return (hard_sigmoid(logits) if self.gate == "hard_sigmoid" else torch.sigmoid(logits)).to(x.dtype)

    def forward(self, x: Tensor) -> Tensor:
        if not torch.jit.is_scripting():
            check_feature_map(x, "eSE")
            fused = self._fused(x)
            if fused is not None:
                return fused
        return x * self.attention_map(x)

    def _fused_branches(self) -> tuple[nn.Module | None, nn.Module | None]:
        return self, None

    def fused_channel_fields(self) -> dict[str, object]:
        """The fused gate's arguments (`GateArgs` fields) that compute this gate."""
        fc = self.fc
        return {"w1": fc.weight, "b1": fc.bias, "use_avg": True, "channel_fn": "linear", "channel_gate": self.gate}

    def extra_repr(self) -> str:
        return f"gate={self.gate}, impl={self.impl}"
