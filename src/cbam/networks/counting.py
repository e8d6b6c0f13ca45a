"""Parameters and FLOPs of a network, counted as the paper reports them.

FLOPs are counted by `torch.utils.flop_counter` (PyTorch's own counter) and reported as the
paper does: multiply-accumulates (counter FLOPs / 2) of one 224 x 224 image.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode

INPUT_SIZE: tuple[int, int, int] = (3, 224, 224)


@dataclass(frozen=True)
class Complexity:
    """Size and cost of a network for one image of `input_size` (C, H, W)."""

    params: int
    macs: int
    input_size: tuple[int, int, int] = INPUT_SIZE

    @property
    def params_m(self) -> float:
        return self.params / 1e6

    @property
    def gflops(self) -> float:
        """Giga multiply-accumulates, the paper's "GFLOPs"."""
        return self.macs / 1e9


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def forward_zeros(model: nn.Module, input_size: Sequence[int] = INPUT_SIZE) -> None:
    """One eval-mode, no-grad forward pass of a zero image on the model's device and dtype; the mode is restored."""
    parameter = next(model.parameters(), None)
    device = parameter.device if parameter is not None else torch.device("cpu")
    dtype = parameter.dtype if parameter is not None and parameter.is_floating_point() else torch.float32
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(torch.zeros(1, *input_size[-3:], device=device, dtype=dtype))
    finally:
        model.train(was_training)


def count_macs(model: nn.Module, input_size: Sequence[int] = INPUT_SIZE) -> int:
    """Multiply-accumulates of one forward pass on a single image, in eval mode."""
    with FlopCounterMode(display=False) as counter:
        forward_zeros(model, input_size)
    return counter.get_total_flops() // 2


def saved_activation_ratio(module: nn.Module, x: Tensor) -> float:
    """Bytes a forward keeps for backward (distinct storages; parameters and buffers excluded) / x's bytes."""
    own = {t.untyped_storage().data_ptr() for t in [*module.parameters(), *module.buffers()]}
    kept: dict[int, int] = {}

    def pack(t: Tensor) -> Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in own:
            kept[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        module(x.detach().requires_grad_())
    return sum(kept.values()) / (x.numel() * x.element_size())


def measure(model: nn.Module, input_size: Sequence[int] = INPUT_SIZE) -> Complexity:
    return Complexity(count_parameters(model), count_macs(model, input_size), tuple(input_size))


def complexity_dict(complexity: Complexity) -> dict[str, Any]:
    out = asdict(complexity)
    out.update(params_m=round(complexity.params_m, 4), gflops=round(complexity.gflops, 4))
    return out
