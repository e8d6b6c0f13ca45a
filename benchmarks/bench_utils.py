"""Shared by the benchmarks: interleaved median timing, the machine line, the table."""

from __future__ import annotations

import platform
import statistics
import time
from collections.abc import Callable
from typing import TypeVar

import torch

from cbam.report import format_markdown_table

T = TypeVar("T")


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def interleaved_medians(
    cases: dict[str, Callable[[], object]],
    device: torch.device,
    rounds: int,
    warmup: int = 2,
    before: Callable[[], object] | None = None,
) -> dict[str, float]:
    """Median seconds per call of each case, the cases taking turns so drift hits all alike.

    `before`, if given, runs untimed ahead of every timed call (`cache_evictor`'s fill, say).
    """
    for fn in cases.values():
        for _ in range(warmup):
            fn()
    synchronize(device)
    samples: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(rounds):
        for name, fn in cases.items():
            if before is not None:
                before()
            synchronize(device)
            start = time.perf_counter()
            fn()
            synchronize(device)
            samples[name].append(time.perf_counter() - start)
    return {name: statistics.median(times) for name, times in samples.items()}


def cache_evictor(device: torch.device, mebibytes: int) -> Callable[[], object]:
    """A call that writes `mebibytes` of fresh data on `device`, pushing the benchmark's tensors out of
    the caches: the next call then reads them from memory, as a layer inside a network does."""
    buffer = torch.empty(mebibytes * 2**20 // 4, dtype=torch.float32, device=device)
    return lambda: buffer.fill_(1.0)


def only(cases: dict[str, T], labels: list[str] | None, what: str, keep: tuple[str, ...] = ()) -> dict[str, T]:
    """The cases named by `labels` (every one when None) and those in `keep`, in their order; an unknown label
    ends the run with one line listing the `what`s there are."""
    if labels is None:
        return cases
    unknown = [label for label in labels if label not in cases]
    if unknown:
        raise SystemExit(f"unknown {what} {', '.join(map(repr, unknown))}; the {what}s: {', '.join(cases)}")
    return {label: case for label, case in cases.items() if label in labels or label in keep}


def machine_line(device: torch.device) -> str:
    """The hardware and versions a result belongs to."""
    if device.type == "cuda":
        hardware = torch.cuda.get_device_name(device)
    else:
        hardware = f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"
        try:
            with open("/proc/cpuinfo") as info:
                model = next(line.split(":", 1)[1].strip() for line in info if line.startswith("model name"))
            hardware = f"{model}, {torch.get_num_threads()} threads"
        except (OSError, StopIteration):
            pass
    return f"{hardware}; torch {torch.__version__}, Python {platform.python_version()}"


def markdown(rows: list[dict[str, object]]) -> str:
    """Same-keyed dicts as a markdown table, floats to two decimals."""
    cells = [[f"{v:.2f}" if isinstance(v, float) else v for v in row.values()] for row in rows]
    return format_markdown_table(list(rows[0]), cells)
