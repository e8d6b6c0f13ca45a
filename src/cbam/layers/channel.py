"""Channel attention: the "what" branch of CBAM (paper eq. 2, Table 1)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from cbam.errors import ConfigError
from cbam.layers.fused import FusableAttention, channel_fusable, check_impl
from cbam.layers.pooling import global_pool, parse_pool_types


def hidden_width(channels: int, reduction: float) -> int:
    """Width C/r of the shared MLP's hidden layer, rounded to nearest and at least 1.

    Rounding (not flooring) reproduces the paper's MobileNet 0.7 figures (Table 5); every
    ResNet width divides by 16, so both agree there.
    """
    if channels < 1:
        raise ConfigError(f"channels must be positive, got {channels}")
    if reduction <= 0:
        raise ConfigError(f"reduction must be positive, got {reduction}")
    return max(1, int(channels / reduction + 0.5))


class ChannelAttention(FusableAttention, nn.Module):
    """Channel attention Mc(F) = sigmoid(sum_p MLP(Pool_p(F))), paper eq. (2).

    One MLP (C -> C/r -> C, ReLU, with biases) is shared by every pooled descriptor and the
    outputs are summed before the sigmoid. `forward` returns the refined map Mc(F) * F.
    `impl` picks the implementation (`cbam.layers.fused`); every choice computes the same function.
    """

    def __init__(
        self,
        channels: int,
        reduction: float = 16,
        pool_types: str | Sequence[str] = ("avg", "max"),
        hidden_channels: int | None = None,
        impl: str = "auto",
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        factory = {"device": device, "dtype": dtype}
        self.pool_types = parse_pool_types(pool_types)
        self.impl = check_impl(impl)
        if impl in ("compiled", "triton") and not channel_fusable(self):
            raise ConfigError(f"impl={impl!r} fuses the avg and max pools only, not {'+'.join(self.pool_types)}")
        hidden = hidden_channels if hidden_channels is not None else hidden_width(channels, reduction)
        self.mlp = nn.Sequential(
            nn.Linear(channels, hidden, **factory),
            nn.ReLU(inplace=True),
            nn.Linear(hidden, channels, **factory),
        )

    def logits(self, x: Tensor) -> Tensor:
        """The map before the sigmoid, (N, C, 1, 1)."""
        n, c = x.shape[0], x.shape[1]
        pooled = torch.cat([global_pool(x, p) for p in self.pool_types], dim=0)  # (P*N, C)
        summed = self.mlp(pooled).view(len(self.pool_types), n, c).sum(dim=0)
        return summed.view(n, c, 1, 1)

    def attention_map(self, x: Tensor) -> Tensor:
        """Mc(F), (N, C, 1, 1), in the input's dtype."""
        return torch.sigmoid(self.logits(x)).to(x.dtype)

    def forward(self, x: Tensor) -> Tensor:
        if not torch.jit.is_scripting():
            fused = self._fused(x)
            if fused is not None:
                return fused
        return x * self.attention_map(x)

    def _fused_branches(self) -> tuple[nn.Module | None, nn.Module | None] | None:
        return (self, None) if channel_fusable(self) else None

    def fused_channel_fields(self) -> dict[str, object]:
        """The fused gate's arguments (`GateArgs` fields) that compute this channel gate."""
        first, last = self.mlp[0], self.mlp[2]
        return {
            "w1": first.weight, "b1": first.bias, "w2": last.weight, "b2": last.bias,
            "use_avg": "avg" in self.pool_types, "use_max": "max" in self.pool_types,
        }  # fmt: skip

    def extra_repr(self) -> str:
        return f"pool_types={'+'.join(self.pool_types)}, impl={self.impl}"
