"""A comparison's runs: one per row and seed, each a job (kept if finished, continued if stopped), with its
per-image validation predictions."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from cbam.classification.compare.rows import CompareRow
from cbam.classification.predictions import PREDICTIONS_FILE, Predictions, read_predictions
from cbam.classification.task import ClassificationConfig, ClassificationTask
from cbam.engine.run import RunResult
from cbam.engine.run_folder import LAST
from cbam.errors import ConfigError

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
