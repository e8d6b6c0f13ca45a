"""Shared by the benchmarks: interleaved median timing, saved-activation bytes, the machine line."""

from __future__ import annotations

import platform
import statistics
import time
from collections.abc import Callable

import torch
from torch import Tensor, nn


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def interleaved_medians(
    cases: dict[str, Callable[[], object]], device: torch.device, rounds: int, warmup: int = 2
) -> dict[str, float]:
    """Median seconds per call of each case, the cases taking turns so drift hits all alike."""
    for fn in cases.values():
        for _ in range(warmup):
            fn()
    synchronize(device)
    samples: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(rounds):
        for name, fn in cases.items():
            synchronize(device)
            start = time.perf_counter()
            fn()
            synchronize(device)
            samples[name].append(time.perf_counter() - start)
    return {name: statistics.median(times) for name, times in samples.items()}


def saved_activation_ratio(module: nn.Module, x: Tensor) -> float:
    """Bytes the forward keeps for backward (distinct storages, parameters and buffers excluded) / x's bytes."""
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
    """A list of same-keyed dicts as a markdown table."""
    keys = list(rows[0])
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    for row in rows:
        cells = [f"{v:.2f}" if isinstance(v, float) else str(v) for v in row.values()]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
