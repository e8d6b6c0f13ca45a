"""A comparison written out: comparison.md, .csv and .json, and its plots (curves.png, errors.png)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from cbam.classification.compare.statistics import Comparison, RowStats
from cbam.engine.run import seed_records
from cbam.extras import import_optional
from cbam.outputs import atomic_write
from cbam.report import comparison_lines, write_csv


def comparison_json(comparison: Comparison) -> dict[str, Any]:
    """Everything the tables and plots show, with every run's own figures."""
    return {
        "rows": [
            {
                "name": s.runs.row.name,
                "description": s.runs.row.description,
                "arch": s.runs.row.arch,
                "attention": s.runs.row.attention,
                "baseline": s.baseline,
                "top1_error": s.top1.to_dict() if s.top1 else None,
                "top5_error": s.top5.to_dict() if s.top5 else None,
                "top1_difference": s.difference.to_dict() if s.difference else None,
                "verdict": s.verdict,
                "runs": seed_records(s.runs.seeds, s.runs.results),
            }
            for s in comparison.stats
        ],
        "failures": comparison.failures,
        "notes": comparison.notes,
    }


def write_reports(output: Path, comparison: Comparison) -> None:
    """comparison.md (table, verdicts, notes), .csv, .json, curves.png (validation error per epoch, a band over
    seeds) and errors.png (each network's error with its interval) in `output`."""
    lines = comparison_lines(comparison.header, comparison.rows, comparison.verdicts, comparison.failures,
                             comparison.notes)  # fmt: skip
    atomic_write(output / "comparison.md", lambda tmp: tmp.write_text("\n".join(lines) + "\n"))
    write_csv(output / "comparison.csv", comparison.header, comparison.rows)
    payload = json.dumps(comparison_json(comparison), indent=2)
    atomic_write(output / "comparison.json", lambda tmp: tmp.write_text(payload + "\n"))
    atomic_write(output / "curves.png", lambda tmp: plot_curves(comparison.stats, tmp))
    atomic_write(output / "errors.png", lambda tmp: plot_errors(comparison.stats, tmp))


def _pyplot() -> Any:
    matplotlib = import_optional("matplotlib", "compare", "the comparison's plots")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_curves(stats: list[RowStats], path: Path) -> None:
    """Validation top-1 and top-5 error per epoch: each network's mean over seeds, its band the seeds' range."""
    plt = _pyplot()
    from matplotlib.ticker import MaxNLocator

    figure, axes = plt.subplots(1, 2, figsize=(11, 4), constrained_layout=True)
    for stat in stats:
        if not stat.finished:
            continue
        epochs = [h["epoch"] for h in stat.finished[0].history]
        for axis, key in zip(axes, ("val_top1_error", "val_top5_error"), strict=True):
            curves = np.array([[h[key] for h in r.history][: len(epochs)] for r in stat.finished])
            (line,) = axis.plot(epochs, curves.mean(axis=0), marker="o", label=stat.runs.row.description)
            if len(curves) > 1:
                axis.fill_between(epochs, curves.min(axis=0), curves.max(axis=0), alpha=0.2, color=line.get_color())
    for axis, title in zip(axes, ("top-1", "top-5"), strict=True):
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))
        axis.set_title(f"validation {title} error (mean over seeds, band: their range)")
        axis.set_xlabel("epoch")
        axis.set_ylabel("error (%)")
        axis.grid(alpha=0.3)
    if any(stat.finished for stat in stats):
        axes[0].legend(fontsize=8)
    figure.savefig(path, format="png", dpi=110)
    plt.close(figure)


def plot_errors(stats: list[RowStats], path: Path) -> None:
    """Each network's mean top-1 error over seeds with its 95% interval, one bar per network."""
    plt = _pyplot()
    shown = [s for s in stats if s.top1 is not None]
    figure, axis = plt.subplots(figsize=(max(4.0, 1.4 * len(shown) + 2), 4), constrained_layout=True)
    for x, stat in enumerate(shown):
        mean = 100 * stat.top1.estimate
        low = 100 * (stat.top1.low if stat.top1.low is not None else stat.top1.estimate)
        high = 100 * (stat.top1.high if stat.top1.high is not None else stat.top1.estimate)
        axis.errorbar([x], [mean], yerr=[[mean - low], [high - mean]], fmt="o", capsize=6)
    axis.set_xticks(range(len(shown)), [s.runs.row.description for s in shown], rotation=15)
    axis.set_ylabel("top-1 error (%)")
    axis.set_title("validation top-1 error: mean over seeds, 95% interval")
    axis.grid(alpha=0.3, axis="y")
    figure.savefig(path, format="png", dpi=110)
    plt.close(figure)
