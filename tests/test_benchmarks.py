"""The benchmark scripts' measurements that are not timings: what a layer keeps for backward."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

import cbam
from cbam.layers.fused import cpu_kernels

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from bench_utils import markdown, saved_activation_ratio


@pytest.mark.skipif(not cpu_kernels.available(), reason="no C compiler for the fused CPU kernels")
def test_saved_activation_ratio_separates_fused_from_eager() -> None:
    x = torch.randn(2, 64, 14, 14).contiguous(memory_format=torch.channels_last)
    assert saved_activation_ratio(cbam.CBAM(64, impl="compiled").train(), x) == 1.0
    assert saved_activation_ratio(cbam.SqueezeExcite(64, impl="compiled").train(), x) == 1.0
    assert saved_activation_ratio(cbam.CBAM(64, impl="eager").train(), x) > 2.0


def test_markdown_table_has_a_row_per_measurement() -> None:
    table = markdown([{"layer": "CBAM", "passes": 3.14159}, {"layer": "SE", "passes": 1.0}])
    assert table.splitlines() == ["| layer | passes |", "|---|---|", "| CBAM | 3.14 |", "| SE | 1.00 |"]
