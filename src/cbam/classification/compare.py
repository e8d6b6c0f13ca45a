"""Train networks under one recipe over several seeds (a paper table's rows, or one network with several
attentions), and say with honest intervals whether each differs from its baseline: tables, verdicts and plots."""

from __future__ import annotations

import dataclasses
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cbam.classification.predictions import PREDICTIONS_FILE, Predictions, image_groups, read_predictions
from cbam.classification.task import ClassificationConfig, ClassificationTask
from cbam.data.loading import DataError
from cbam.engine.distributed import is_main_process
from cbam.engine.run import RunResult, seed_records
from cbam.engine.run_folder import LAST
from cbam.errors import ConfigError, unknown_name
from cbam.extras import import_optional
from cbam.layers.create import AttentionSpec
from cbam.outputs import atomic_write, check_writable_folder
from cbam.paper import paper_rows
from cbam.report import comparison_lines, write_csv
from cbam.stats import Estimate, format_points, mean_error, paired_difference, verdict

COMPARE_TABLES: tuple[str, ...] = ("table1", "table2", "table3", "table4", "table5")


@dataclass(frozen=True)
class CompareRow:
    """One network to train: a paper row, with the paper's ImageNet errors for reference."""

    name: str
    description: str
    arch: str
    attention: AttentionSpec
    model_kwargs: dict[str, Any]
    paper_top1_error: float | None
    paper_top5_error: float | None


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def table_rows(table: str, archs: list[str] | None = None) -> list[CompareRow]:
    """The rows of a paper table (`table1`-`table5`), optionally only those of some architectures.

    Networks are built as trained (stride on the 3x3), not in the paper's FLOP-counting layout.
    """
    if table not in COMPARE_TABLES:
        raise unknown_name("table", table, COMPARE_TABLES)
    rows = paper_rows(int(table.removeprefix("table")))
    if archs:
        available = sorted({r.arch for r in rows})
        unknown = [a for a in archs if a not in available]
        if unknown:
            raise ConfigError(f"{table} has no rows for {unknown}; its architectures: {', '.join(available)}")
        rows = [r for r in rows if r.arch in archs]
    return [
        CompareRow(
            name=_slug(r.description),
            description=r.description,
            arch=r.arch,
            attention=r.attention,
            model_kwargs={k: v for k, v in r.model_kwargs.items() if k != "stride_in_1x1"},
            paper_top1_error=r.top1_err,
            paper_top5_error=r.top5_err,
        )
        for r in rows
    ]


def attention_rows(arch: str, attentions: list[str]) -> list[CompareRow]:
    """One row per attention on one network (`resnet18` with none, se, cbam), in the order given."""
    if not attentions:
        raise ConfigError("--attention names at least one attention (none,se,cbam)")
    if len(set(attentions)) != len(attentions):
        raise ConfigError(f"--attention names an attention twice: {','.join(attentions)}")
    rows = []
    for attention in attentions:
        described = (
            arch if attention == "none" else f"{arch} + {attention.upper() if len(attention) <= 4 else attention}"
        )
        rows.append(CompareRow(_slug(described), described, arch, attention, {}, None, None))
    return rows


def baselines(rows: list[CompareRow], baseline: str | None = None) -> list[int]:
    """For each row, the index of the row it is compared with: the row whose attention is `baseline` (default:
    each network's first row, a paper table's plain network)."""
    if baseline is not None:
        found = [i for i, row in enumerate(rows) if row.attention == baseline]
        if not found:
            raise ConfigError(
                f"the baseline {baseline!r} is not among the rows: {', '.join(str(r.attention) for r in rows)}"
            )
        return [found[0]] * len(rows)
    first: dict[str, int] = {}
    return [first.setdefault(row.arch, i) for i, row in enumerate(rows)]


# ---------------------------------------------------------------------------------------------
# The runs: one per row and seed, each a job


SEED_FOLDER = "seed-{}"


@dataclass(frozen=True)
class RowRuns:
    """A row's runs, one per seed, and what each left: its result and per-image predictions (None where the
    run failed, with why and where its log is)."""

    row: CompareRow
    seeds: list[int]
    results: list[RunResult | None]
    predictions: list[Predictions | None]
    failures: list[str]


def row_configs(
    rows: list[CompareRow], base: ClassificationConfig, output: Path, seeds: int
) -> list[list[ClassificationConfig]]:
    """Every run's config: the base recipe with the row's network and one of `seeds` seeds (from the base seed),
    in `<output>/<row>/seed-<seed>/`. The same seed gives every network the same initial draws and data order."""
    if seeds < 1:
        raise ConfigError(f"--seeds must be at least 1, got {seeds}")
    return [
        [
            dataclasses.replace(
                base,
                arch=row.arch,
                attention=row.attention,
                model_kwargs={**base.model_kwargs, **row.model_kwargs},
                seed=base.seed + k,
                output=str(output / row.name / SEED_FOLDER.format(base.seed + k)),
            )
            for k in range(seeds)
        ]
        for row in rows
    ]


def check_networks(rows: list[CompareRow], base: ClassificationConfig) -> None:
    """Build each row's network on the meta device (no memory, no time): a bad name or option is refused in one
    line before anything trains."""
    for row in rows:
        config = dataclasses.replace(base, arch=row.arch, attention=row.attention,
                                     model_kwargs={**base.model_kwargs, **row.model_kwargs})  # fmt: skip
        with torch.device("meta"):
            ClassificationTask.build_model(config, 2, fresh=False)


def train_and_predict(payload: tuple[ClassificationConfig, bool]) -> RunResult:
    """One job: the run trained (kept if it finished, continued if it stopped), then its final network's
    per-image validation predictions written beside it (`predictions.csv`)."""
    from cbam.classification.evaluate import evaluate_checkpoint
    from cbam.runs import fit_or_reuse

    config, exist_ok = payload
    result = fit_or_reuse(config, exist_ok=exist_ok)
    folder = Path(config.output)
    predictions = folder / PREDICTIONS_FILE
    if not predictions.is_file() or predictions.stat().st_mtime < (folder / LAST).stat().st_mtime:
        evaluate_checkpoint(folder / LAST, predictions=predictions, workers=config.workers, device=config.device)
    return result


def run_rows(
    rows: list[CompareRow],
    base: ClassificationConfig,
    output: Path,
    *,
    seeds: int = 1,
    jobs: int = 1,
    scheduler: str | None = None,
    scheduler_options: dict[str, Any] | None = None,
    exist_ok: bool = False,
) -> list[RowRuns]:
    """Train every row over `seeds` seeds, `jobs` at a time (or as jobs of `scheduler`), and read back each
    run's predictions; a run that failed is reported with its log, the rest are kept."""
    from cbam.engine.jobs import run_by_seed
    from cbam.engine.run_folder import folder_plan

    configs = row_configs(rows, base, output, seeds)
    check_networks(rows, base)  # a bad network or a folder of another config stops it all before any training
    for config in (c for seed_configs in configs for c in seed_configs):
        folder_plan(config, exist_ok=exist_ok)
    done = run_by_seed(train_and_predict, configs, [row.description for row in rows], lambda c: (c, exist_ok),
                       output, processes=jobs, scheduler=scheduler, scheduler_options=scheduler_options)  # fmt: skip
    runs = []
    for row, seed_configs, found in zip(rows, configs, done, strict=True):
        predictions = [read_predictions(Path(c.output) / PREDICTIONS_FILE) if r is not None else None
                       for c, r in zip(seed_configs, found.results, strict=True)]  # fmt: skip
        runs.append(RowRuns(row, [c.seed for c in seed_configs], found.results, predictions, found.failures))
    return runs


# ---------------------------------------------------------------------------------------------
# Statistics over seeds and validation images


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


def _same_images(all_runs: list[RowRuns]) -> tuple[str, ...]:
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


# ---------------------------------------------------------------------------------------------
# The whole comparison


@dataclass(frozen=True)
class Comparison:
    """The rows' statistics, the table written from them, the verdicts and the failed runs."""

    stats: list[RowStats]
    header: list[str]
    rows: list[list[str]]
    verdicts: list[str]
    failures: list[str]
    notes: list[str]


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
    files = _same_images(all_runs)
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
