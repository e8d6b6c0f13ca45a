"""A network by name measured (`cbam.networks.counting`), and the paper's complexity tables set beside ours.

Networks are built on the `meta` device, so a whole table costs no real memory or compute.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from cbam.layers.create import AttentionSpec
from cbam.networks.build import create_model
from cbam.networks.counting import INPUT_SIZE, Complexity, measure
from cbam.networks.names import model_entry
from cbam.paper import PARAMS_DECIMALS, PaperRow, paper_rows


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
