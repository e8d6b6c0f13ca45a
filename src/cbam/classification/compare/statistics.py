"""A comparison's figures over seeds and validation images: each row's errors and its paired difference against
the baseline with intervals (`cbam.stats`), the table's cells, and the Grad-CAM pointing game."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cbam.classification.compare.training import RowRuns
from cbam.classification.predictions import Predictions
from cbam.data.loading import DataError
from cbam.engine.run import RunResult
from cbam.engine.run_folder import LAST
from cbam.stats import Estimate, format_points, mean_error, paired_difference, verdict


@dataclass(frozen=True)
class RowStats:
    """A row's figures over its finished seeds: mean errors with intervals and, against its baseline, the paired
    difference in top-1 error with its interval, p-value and verdict."""

    runs: RowRuns
    baseline: str
    top1: Estimate | None
    top5: Estimate | None
    difference: Estimate | None
    verdict: str | None

    @property
    def finished(self) -> list[RunResult]:
        return [r for r in self.runs.results if r is not None]


def _error_matrix(predictions: list[Predictions], k: int) -> np.ndarray:
    return np.stack([p.errors(k) for p in predictions])


def same_images(all_runs: list[RowRuns]) -> tuple[str, ...]:
    """The validation files every finished run predicted; runs on other images are refused by name."""
    files = None
    for runs in all_runs:
        for seed, predictions in zip(runs.seeds, runs.predictions, strict=True):
            if predictions is None:
                continue
            if files is None:
                files = predictions.files
            elif predictions.files != files:
                raise DataError(f"{runs.row.description} seed {seed} was evaluated on other validation images than "
                                "the first run: the runs of one comparison must share their data")  # fmt: skip
    return files or ()


def row_statistics(all_runs: list[RowRuns], base_index: list[int], groups: np.ndarray | None,
                   resolve: float = 0.5) -> list[RowStats]:  # fmt: skip
    """Each row's mean top-1/top-5 error and, paired by seed and image with its baseline, the difference in top-1
    error (`cbam.stats`); `resolve` (points) is the difference the verdict plans for."""
    stats = []
    for runs, b in zip(all_runs, base_index, strict=True):
        done = [p for p in runs.predictions if p is not None]
        top1 = mean_error(_error_matrix(done, 1), groups) if done else None
        top5 = mean_error(_error_matrix(done, 5), groups) if done else None
        baseline = all_runs[b]
        difference = sentence = None
        paired = [(mine, theirs) for mine, theirs in zip(runs.predictions, baseline.predictions, strict=True)
                  if mine is not None and theirs is not None]  # fmt: skip
        if baseline is not runs and paired:
            difference = paired_difference(_error_matrix([m for m, _ in paired], 1),
                                           _error_matrix([t for _, t in paired], 1), groups)  # fmt: skip
            sentence = verdict(runs.row.description, baseline.row.description, difference, resolve=resolve / 100)
        stats.append(RowStats(runs, baseline.row.description, top1, top5, difference, sentence))
    return stats


COLUMNS = [
    "Row",
    "Seeds",
    "Params (M)",
    "GFLOPs",
    "Top-1 err (%)",
    "Top-5 err (%)",
    "Top-1 vs baseline",
    "p",
    "paper Top-1",
    "paper Top-5",
    "Wall (s)",
    "img/s",
]
POINTING_COLUMN = "Pointing game (%)"


def comparison_rows(stats: list[RowStats]) -> list[list[str]]:
    """The table's cells: errors as means over seeds with 95% intervals, the paired difference against the
    baseline (points; negative: fewer errors) and its p-value."""

    def fmt(value: float | None, spec: str) -> str:
        return "" if value is None else format(value, spec)

    rows = []
    for stat in stats:
        row, finished = stat.runs.row, stat.finished
        first = finished[0] if finished else None
        p_value = stat.difference.p_value if stat.difference is not None else None
        rows.append([
            row.description,
            f"{len(finished)}/{len(stat.runs.seeds)}",
            fmt(first.params / 1e6 if first else None, ".2f"),
            fmt(first.gflops if first else None, ".3f"),
            format_points(stat.top1),
            format_points(stat.top5),
            format_points(stat.difference, sign=True) if stat.difference is not None else "baseline",
            fmt(p_value, ".3g"),
            fmt(row.paper_top1_error, ".2f"),
            fmt(row.paper_top5_error, ".2f"),
            fmt(float(np.mean([r.wall_seconds for r in finished])) if finished else None, ".0f"),
            fmt(float(np.mean([r.images_per_second for r in finished])) if finished else None, ".0f"),
        ])  # fmt: skip
    return rows


def pointing_scores(stats: list[RowStats], data: str, groups_of: Any) -> list[Estimate | None] | None:
    """Each row's Grad-CAM pointing game on the validation boxes over its finished seeds (each seed's final
    network, the one its errors are of), with the interval over seeds and source images that errors get; None
    where the data has no boxes. `groups_of(files)` gives the images' clusters."""
    from cbam.explain.boxes import NoBoxes
    from cbam.explain.scores import localize_checkpoint

    scores: list[Estimate | None] = []
    try:
        for stat in stats:
            found = [localize_checkpoint(Path(run.output) / LAST, data) for run in stat.finished]
            if not found:
                scores.append(None)
                continue
            files = found[0].files
            if any(f.files != files for f in found):
                raise DataError(f"{stat.runs.row.description}: its seeds scored other images in the pointing game")
            scores.append(mean_error(np.array([f.hits for f in found]), groups_of(files)))
    except NoBoxes:
        return None
    return scores


@dataclass(frozen=True)
class Comparison:
    """The rows' statistics, the table written from them, the verdicts and the failed runs."""

    stats: list[RowStats]
    header: list[str]
    rows: list[list[str]]
    verdicts: list[str]
    failures: list[str]
    notes: list[str]
