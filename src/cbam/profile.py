"""Parameters and FLOPs of a network, and the paper's complexity tables set beside ours.

FLOPs are counted by `torch.utils.flop_counter` (PyTorch's own counter) and reported as the
paper does: multiply-accumulates (counter FLOPs / 2) of one 224 x 224 image. Networks are
built on the `meta` device, so a whole table costs no real memory or compute.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode

from cbam.layers.create import AttentionSpec
from cbam.paper import PARAMS_DECIMALS, PaperRow, paper_rows
from cbam.registry import create_model, model_entry

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


def measure_arch(
    arch: str,
    attention: AttentionSpec = "none",
    *,
    input_size: Sequence[int] = INPUT_SIZE,
    **model_kwargs: Any,
) -> Complexity:
    """Build `arch` on the meta device (no memory, no compute) and measure it."""
    with torch.device("meta"):
        model = create_model(arch, attention=attention, **model_kwargs)
    return measure(model, input_size)


@dataclass(frozen=True)
class RowComparison:
    """Our count of a paper row beside the printed figures, differences at printed precision."""

    row: PaperRow
    ours: Complexity

    @property
    def params_diff(self) -> float | None:
        if self.row.params_m is None:
            return None
        return round(round(self.ours.params_m, PARAMS_DECIMALS) - self.row.params_m, PARAMS_DECIMALS)

    @property
    def gflops_diff(self) -> float | None:
        if self.row.gflops is None:
            return None
        decimals = self.row.gflops_decimals
        return round(round(self.ours.gflops, decimals) - self.row.gflops, decimals)

    @property
    def matches(self) -> bool:
        return not self.params_diff and not self.gflops_diff

    def to_dict(self) -> dict[str, Any]:
        return {
            "table": self.row.table,
            "description": self.row.description,
            "arch": self.row.arch,
            "attention": self.row.attention,
            "model_kwargs": self.row.model_kwargs,
            "params": self.ours.params,
            "params_m": round(self.ours.params_m, 4),
            "gflops": round(self.ours.gflops, 4),
            "paper_params_m": self.row.params_m,
            "paper_gflops": self.row.gflops,
            "params_diff": self.params_diff,
            "gflops_diff": self.gflops_diff,
            "matches": self.matches,
            "note": self.row.note,
        }


def compare_row(row: PaperRow, input_size: Sequence[int] = INPUT_SIZE) -> RowComparison:
    return RowComparison(row, measure_arch(row.arch, row.attention, input_size=input_size, **row.model_kwargs))


def compare_table(table: int) -> list[RowComparison]:
    """Every row of paper Table `table` rebuilt and counted, in the printed order."""
    return [compare_row(row) for row in paper_rows(table)]


def _options(arch: str, model_kwargs: dict[str, Any]) -> dict[str, Any]:
    """Builder options with defaults filled in, less those that do not change a paper figure."""
    signature = inspect.signature(model_entry(arch).builder)
    defaults = {n: p.default for n, p in signature.parameters.items() if p.default is not inspect.Parameter.empty}
    options = {**defaults, **model_kwargs}
    for name in ("stride_in_1x1", "num_classes", "attention"):
        options.pop(name, None)
    return options


def find_paper_rows(arch: str, attention: AttentionSpec, model_kwargs: dict[str, Any]) -> list[PaperRow]:
    """Paper rows that describe this network (same arch, attention and options), Table 4/5 first."""
    wanted = _options(arch, model_kwargs)
    return [
        row
        for table in (4, 5, 2, 1, 3)
        for row in paper_rows(table)
        if row.arch == arch and row.attention == attention and _options(row.arch, row.model_kwargs) == wanted
    ]


def complexity_dict(complexity: Complexity) -> dict[str, Any]:
    out = asdict(complexity)
    out.update(params_m=round(complexity.params_m, 4), gflops=round(complexity.gflops, 4))
    return out
