"""Effective squeeze-and-excitation (Lee & Park, CenterMask, CVPR 2020): SE with one full-width layer."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from cbam.errors import ConfigError
from cbam.layers.maps import check_feature_map, hard_sigmoid

GATES: tuple[str, ...] = ("hard_sigmoid", "sigmoid")


class EffectiveSqueezeExcite(nn.Module):
    """eSE: w = hsigmoid(W GAP(F) + b), out = w * F, with W a C x C matrix (no reduction, so no channel
    information is lost in a bottleneck; CenterMask Sect. 3.3). `gate="sigmoid"` swaps the hard sigmoid."""

    def __init__(
        self,
        channels: int,
        gate: str = "hard_sigmoid",
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        if gate not in GATES:
            raise ConfigError(f"eSE's gate is one of {', '.join(GATES)}, got {gate!r}")
        self.gate = gate
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
        return x * self.attention_map(x)

    def extra_repr(self) -> str:
        return f"gate={self.gate}"
