"""Train the rows of a paper table under one recipe and seed, and tabulate and plot the results."""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cbam.classification.task import ClassificationConfig
from cbam.engine.distributed import is_main_process
from cbam.engine.run import RunResult
from cbam.engine.run_folder import BEST
from cbam.errors import ConfigError, unknown_name
from cbam.extras import import_optional
from cbam.layers.create import AttentionSpec
from cbam.outputs import atomic_write, check_writable_folder
from cbam.paper import paper_rows
from cbam.report import format_markdown_table, write_csv

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


def _row_config(base: ClassificationConfig, row: CompareRow, output: Path) -> ClassificationConfig:
    return dataclasses.replace(
        base,
        arch=row.arch,
        attention=row.attention,
        model_kwargs={**base.model_kwargs, **row.model_kwargs},
        output=str(output / row.name),
    )


@dataclass(frozen=True)
class Comparison:
    """The trained rows and the table written from them."""

    results: list[tuple[CompareRow, RunResult]]
    header: list[str]
    rows: list[list[str]]


def run_compare(
    table: str, base: ClassificationConfig, output: Path, archs: list[str] | None = None, *, exist_ok: bool = False
) -> Comparison:
    """Train every row (keeping finished runs, continuing interrupted ones) and write the reports; where
    the data has boxes, the table gains each network's Grad-CAM pointing game."""
    from cbam.tasks import fit_or_reuse

    output = Path(output)
    check_writable_folder(output)
    results = [
        (row, fit_or_reuse(_row_config(base, row, output), exist_ok=exist_ok)) for row in table_rows(table, archs)
    ]
    header, rows = comparison_table(results, pointing_scores(results, base.data))
    if is_main_process():
        write_reports(output, results, header, rows)
    return Comparison(results, header, rows)


POINTING_COLUMN = "Pointing game (%)"


def pointing_scores(results: list[tuple[CompareRow, RunResult]], data: str) -> list[str] | None:
    """Each best checkpoint's Grad-CAM pointing game on the validation boxes; None where the data has none."""
    from cbam.data.loading import DataError
    from cbam.explain.scores import format_interval, localize_checkpoint

    try:
        return [format_interval(localize_checkpoint(Path(run.output) / BEST, data).pointing_game) for _, run in results]
    except DataError:
        return None


COLUMNS = [
    "Row",
    "Params (M)",
    "GFLOPs",
    "Top-1 err (%)",
    "Top-5 err (%)",
    "paper Top-1",
    "paper Top-5",
    "Wall (s)",
    "img/s",
]


def comparison_table(
    results: list[tuple[CompareRow, RunResult]], pointing: list[str] | None = None
) -> tuple[list[str], list[list[str]]]:
    """The header and rows of the comparison; with the pointing-game column where it was measured."""
    rows = comparison_rows(results)
    if pointing is None:
        return list(COLUMNS), rows
    return [*COLUMNS, POINTING_COLUMN], [[*row, score] for row, score in zip(rows, pointing, strict=True)]


def comparison_rows(results: list[tuple[CompareRow, RunResult]]) -> list[list[str]]:
    def fmt(value: float | None, spec: str) -> str:
        return "" if value is None else format(value, spec)

    return [
        [
            row.description,
            f"{run.params / 1e6:.2f}",
            f"{run.gflops:.3f}",
            f"{run.final['val_top1_error']:.2f}",
            f"{run.final['val_top5_error']:.2f}",
            fmt(row.paper_top1_error, ".2f"),
            fmt(row.paper_top5_error, ".2f"),
            f"{run.wall_seconds:.0f}",
            f"{run.images_per_second:.0f}",
        ]
        for row, run in results
    ]


def write_reports(
    output: Path, results: list[tuple[CompareRow, RunResult]], header: list[str], rows: list[list[str]]
) -> None:
    """comparison.md, comparison.csv and curves.png (validation error per epoch) in `output`."""
    table = format_markdown_table(header, rows)
    atomic_write(output / "comparison.md", lambda tmp: tmp.write_text(table + "\n"))
    write_csv(output / "comparison.csv", header, rows)
    atomic_write(output / "curves.png", lambda tmp: plot_curves(results, tmp))


def plot_curves(results: list[tuple[CompareRow, RunResult]], path: Path) -> None:
    matplotlib = import_optional("matplotlib", "explain", "curves.png")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    figure, axes = plt.subplots(1, 2, figsize=(11, 4), constrained_layout=True)
    for row, run in results:
        epochs = [h["epoch"] for h in run.history]
        axes[0].plot(epochs, [h["val_top1_error"] for h in run.history], marker="o", label=row.description)
        axes[1].plot(epochs, [h["val_top5_error"] for h in run.history], marker="o", label=row.description)
    for axis, title in zip(axes, ("top-1", "top-5"), strict=True):
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))
        axis.set_title(f"validation {title} error")
        axis.set_xlabel("epoch")
        axis.set_ylabel("error (%)")
        axis.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    figure.savefig(path, format="png", dpi=110)
    plt.close(figure)
