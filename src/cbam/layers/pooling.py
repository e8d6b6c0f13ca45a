"""Global pooling descriptors shared by the attention layers.

`global_pool` squeezes the spatial axes (the channel attention's descriptors, paper eq. 2);
`channel_pool` squeezes the channel axis (the spatial attention's descriptors, eq. 3).

Where several elements tie for the maximum, the max pools pass the whole gradient to the first
of them, as max pooling and the authors' `torch.max` do; the fused kernels follow the same rule.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from cbam.errors import ConfigError

POOL_TYPES: tuple[str, ...] = ("avg", "max", "lp", "lse")


def parse_pool_types(pool_types: str | Sequence[str]) -> list[str]:
    """Normalise `"avg+max"` or `("avg", "max")` to a checked list of pool names."""
    names = pool_types.split("+") if isinstance(pool_types, str) else list(pool_types)
    names = [name.strip() for name in names]
    if not names:
        raise ConfigError(f"pool_types is empty; choose from {', '.join(POOL_TYPES)}")
    for name in names:
        if name not in POOL_TYPES:
            raise ConfigError(f"unknown pool type {name!r}; choose from {', '.join(POOL_TYPES)}")
    if len(set(names)) != len(names):
        raise ConfigError(f"pool_types repeats a pool: {names}")
    return names


def global_pool(x: Tensor, pool_type: str) -> Tensor:
    """Pool (N, C, H, W) over H and W to (N, C).

    `lp` is the L2 norm and `lse` the log-sum-exp of each channel, the two extra pools of the
    authors' code; both are written in their numerically safe forms.
    """
    if pool_type == "avg":
        return x.mean(dim=(2, 3))
    if pool_type == "max":
        return max_over(x.flatten(2), 2)
    if pool_type == "lp":
        return torch.linalg.vector_norm(x, ord=2, dim=(2, 3))
    if pool_type == "lse":
        return torch.logsumexp(x.flatten(2), dim=2)
    raise ConfigError("unknown pool type " + pool_type + "; choose from avg, max, lp, lse")


def channel_pool(x: Tensor) -> Tensor:
    """Mean and max across channels, concatenated in the paper's order: (N, 2, H, W)."""
    return torch.cat([x.mean(dim=1, keepdim=True), max_over(x, 1).unsqueeze(1)], dim=1)


def max_over(x: Tensor, dim: int) -> Tensor:
    """The max along `dim`; its gradient goes to the first maximum. Without autograd the cheaper
    `amax` gives the same values."""
    if x.requires_grad and torch.is_grad_enabled():
        return x.max(dim=dim).values
    return x.amax(dim=dim)
