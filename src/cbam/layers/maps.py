"""What every attention layer checks of its input, and the small functions several of them share."""

from __future__ import annotations

import torch
from torch import Tensor

from cbam.errors import ConfigError


@torch.jit.unused
def check_feature_map(x: Tensor, layer: str) -> None:
    """Refuse an input that is not an (N, C, H, W) feature map, naming the layer (eager only: TorchScript
    checks the shapes its ops get)."""
    if x.dim() != 4:
        raise ConfigError(f"{layer} takes an (N, C, H, W) feature map, got a {x.dim()}-D input {tuple(x.shape)}")


def dense_layout(x: Tensor) -> Tensor:
    """x if it is dense NCHW or channels_last, the two layouts the fused kernels walk; else an NCHW copy."""
    dense = x.is_contiguous() or x.is_contiguous(memory_format=torch.channels_last)
    return x if dense else x.contiguous()


def hard_sigmoid(x: Tensor) -> Tensor:
    """relu6(x + 3) / 6: the piecewise-linear sigmoid of MobileNetV3, which Effective SE gates with."""
    return torch.nn.functional.relu6(x + 3.0) / 6.0


def divisible(value: float, divisor: int) -> int:
    """`value` rounded to the nearest multiple of `divisor`, at least `divisor` (timm's `make_divisible` with
    `round_limit=0`, how timm sizes its bottlenecks)."""
    return max(divisor, int(value + divisor / 2) // divisor * divisor)
