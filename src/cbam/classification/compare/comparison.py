"""The whole comparison: train every row over seeds, judge each against its baseline, write the reports."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from cbam.classification.compare.report import write_reports
from cbam.classification.compare.rows import CompareRow, baselines
from cbam.classification.compare.statistics import (
    COLUMNS,
    POINTING_COLUMN,
    Comparison,
    comparison_rows,
    pointing_scores,
    row_statistics,
    same_images,
)
from cbam.classification.compare.training import run_rows
from cbam.classification.predictions import image_groups
from cbam.classification.task import ClassificationConfig
from cbam.engine.distributed import is_main_process
from cbam.outputs import check_writable_folder
from cbam.stats import format_points


def run_compare(
    rows: list[CompareRow],
    base: ClassificationConfig,
    output: Path,
    *,
    seeds: int = 1,
    baseline: str | None = None,
    jobs: int = 1,
    scheduler: str | None = None,
    scheduler_options: dict[str, Any] | None = None,
    resolve: float = 0.5,
    exist_ok: bool = False,
) -> Comparison:
    """Train every row over `seeds` seeds (keeping finished runs, continuing interrupted ones), compare each with
    its baseline over seeds and validation images, and write comparison.md/.csv/.json, curves.png and errors.png;
    where the data has boxes, the table gains each network's Grad-CAM pointing game."""
    output = Path(output)
    check_writable_folder(output)
    base_index = baselines(rows, baseline)
    all_runs = run_rows(rows, base, output, seeds=seeds, jobs=jobs, scheduler=scheduler,
                        scheduler_options=scheduler_options, exist_ok=exist_ok)  # fmt: skip
    files = same_images(all_runs)
    groups = image_groups(base.data, "val", files) if files else None
    stats = row_statistics(all_runs, base_index, groups, resolve)
    header, table = list(COLUMNS), comparison_rows(stats)
    pointing = pointing_scores(stats, base.data, lambda scored: image_groups(base.data, "val", scored))
    if pointing is not None:
        header = [*header, POINTING_COLUMN]
        table = [[*r, format_points(s)] for r, s in zip(table, pointing, strict=True)]
    notes = _notes(seeds, files, groups)
    if pointing is not None:
        notes.append(f"{POINTING_COLUMN}: how often Grad-CAM's maximum falls inside the box, mean over seeds with the "
                     "same 95% interval over seeds and source images as the errors.")  # fmt: skip
    comparison = Comparison(stats, header, table, [s.verdict for s in stats if s.verdict],
                            [f for runs in all_runs for f in runs.failures], notes)  # fmt: skip
    if is_main_process():
        write_reports(output, comparison)
    return comparison


def _notes(seeds: int, files: tuple[str, ...], groups: np.ndarray | None) -> list[str]:
    clusters = len(set(groups.tolist())) if groups is not None else 0
    notes = [
        f"Errors are means over seeds of the final epoch's validation error, on {len(files)} images"
        + (f" from {clusters} independent sources" if clusters and clusters < len(files) else "")
        + "; [low, high] is a 95% interval over seeds and validation images (cbam.stats).",
        "Top-1 vs baseline is the paired difference in top-1 error, in points (negative: fewer errors); p is the "
        "two-sided p-value of no difference, not adjusted for the number of rows compared.",
    ]
    if seeds < 2:
        notes.append("One seed per network: intervals need at least 2 seeds (--seeds 5 gives them).")
    return notes
