"""A paper detection table's rows trained over seeds under one recipe, each seed from its own backbone run, and
judged with intervals over seeds and test images: `cbam detect compare`.

Each run (`<output>/<row>/seed-<s>/`) is a job of `cbam.engine.jobs` (here, `--jobs N` processes or submitit),
kept when finished and continued when stopped, and writes its final network's detections (`detections.json`, COCO
results format). The figures are computed from those files: per row the mean mAP over seeds, and against the row
without attention the paired difference, each with the interval of `cbam.stats.jackknife_interval` (a
delete-a-group jackknife over folds of whole source digits for the image part).
"""

from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cbam.detection.tables import COLUMNS, PAPER_KEYS, DetectRow, metric_keys, table_rows
from cbam.detection.task import DetectionConfig
from cbam.engine.run import RunResult, seed_records
from cbam.engine.run_folder import LAST
from cbam.outputs import atomic_write, check_writable_folder
from cbam.report import comparison_lines, write_csv
from cbam.stats import Estimate, format_points, jackknife_interval, verdict

log = logging.getLogger(__name__)

DETECTIONS_FILE = "detections.json"
SEED_FOLDER = "seed-{}"
FOLDS = 20
"""Folds of the jackknife over test images (fewer when there are fewer clusters)."""
PAPER_DATA = {"table7": "COCO", "table8": "VOC 2007"}


# ---------------------------------------------------------------------------------------------
# The runs


def backbone_weights(row: DetectRow, seed: int, backbone_runs: Path) -> Path | None:
    """The classification checkpoint seed `seed` of `row` starts from in a `cbam compare` folder
    (`<backbone>[-<attention>]/seed-<seed>/best.pt`, or `<...>/best.pt` of a one-seed folder); None if absent."""
    run = backbone_runs / (row.backbone if row.attention == "none" else f"{row.backbone}-{row.attention}")
    for candidate in (run / SEED_FOLDER.format(seed) / "best.pt", run / "best.pt"):
        if candidate.is_file():
            return candidate
    return None


def row_configs(
    rows: list[DetectRow], base: DetectionConfig, output: Path, seeds: int, backbone_runs: Path | None
) -> tuple[list[list[DetectionConfig]], list[str]]:
    """Every run's config (the recipe with the row's detector and seed `base.seed + k`), and a note for each run
    whose backbone run is missing (it starts from the recipe's `backbone_weights`)."""
    configs, missing = [], []
    for row in rows:
        kwargs = base.detector_kwargs if row.detector == base.detector else {}  # options of another detector
        seed_configs = []
        for seed in range(base.seed, base.seed + seeds):
            weights = base.backbone_weights
            if backbone_runs is not None:
                found = backbone_weights(row, seed, backbone_runs)
                if found is None:
                    missing.append(f"{row.name} seed {seed}")
                weights = str(found) if found is not None else weights
            seed_configs.append(dataclasses.replace(
                base, detector=row.detector, backbone=row.backbone, attention=row.attention, seed=seed,
                detector_kwargs=dict(kwargs), backbone_weights=weights,
                output=str(output / row.name / SEED_FOLDER.format(seed)),
            ))  # fmt: skip
        configs.append(seed_configs)
    notes = []
    if missing:
        default = base.backbone_weights or "none: a random init"
        notes.append(f"no backbone run in {backbone_runs} for {', '.join(missing)}: those start from the recipe's "
                     f"backbone weights ({default})")  # fmt: skip
    return configs, notes


def train_and_detect(payload: tuple[DetectionConfig, bool]) -> RunResult:
    """One job: the run trained (kept if it finished, continued if it stopped), then its final network's
    detections on the validation split written beside it (`detections.json`)."""
    from cbam.detection.predict import evaluate_checkpoint
    from cbam.runs import fit_or_reuse

    config, exist_ok = payload
    result = fit_or_reuse(config, exist_ok=exist_ok)
    folder = Path(config.output)
    detections = folder / DETECTIONS_FILE
    if not detections.is_file() or detections.stat().st_mtime < (folder / LAST).stat().st_mtime:
        scored = evaluate_checkpoint(folder / LAST, workers=config.workers, device=config.device)
        if scored is not None:
            text = json.dumps(scored.evaluator.results())
            atomic_write(detections, lambda tmp: tmp.write_text(text))
    return result


@dataclass(frozen=True)
class RowRuns:
    """A row's runs, one per seed: their results (None where a run failed, with why and where its log is)."""

    row: DetectRow
    seeds: list[int]
    results: list[RunResult | None]
    failures: list[str]


def run_rows(rows: list[DetectRow], configs: list[list[DetectionConfig]], output: Path, *, jobs: int = 1,
             scheduler: str | None = None, scheduler_options: dict[str, Any] | None = None,
             exist_ok: bool = False) -> list[RowRuns]:  # fmt: skip
    """Every run, seed by seed (a comparison stopped early holds whole seeds of every row), `jobs` at a time."""
    from cbam.engine.jobs import run_by_seed
    from cbam.engine.run_folder import folder_plan

    for config in (c for seed_configs in configs for c in seed_configs):
        folder_plan(config, exist_ok=exist_ok)  # a folder of another recipe is refused before anything trains
    done = run_by_seed(train_and_detect, configs, [row.name for row in rows], lambda c: (c, exist_ok), output,
                       processes=jobs, scheduler=scheduler, scheduler_options=scheduler_options)  # fmt: skip
    return [RowRuns(row, [c.seed for c in seed_configs], found.results, found.failures)
            for row, seed_configs, found in zip(rows, configs, done, strict=True)]  # fmt: skip


# ---------------------------------------------------------------------------------------------
# Scores of the saved detections: every image, and each fold left out


@dataclass(frozen=True)
class TestImages:
    """The validation split the runs were scored on, and the folds of whole clusters the jackknife leaves out."""

    dataset: Any
    classes: list[str]
    category_ids: list[int]
    folds: list[list[int]]
    clusters: int


def source_clusters(dataset: Any) -> list[int]:
    """A cluster per image of `dataset`: its source digit where the COCO file names one (`source_index`), so
    renderings of one digit count as one sample; otherwise each image is its own."""
    sources: dict[int, Any] = {}
    if getattr(dataset, "annotation_file", None):
        images = json.loads(Path(dataset.annotation_file).read_text()).get("images", [])
        sources = {int(i["id"]): i["source_index"] for i in images if isinstance(i, dict) and "source_index" in i}
    ids: dict[Any, int] = {}
    return [ids.setdefault(sources.get(r.image_id, ("image", r.image_id)), len(ids)) for r in dataset.records]


def validation_images(config: DetectionConfig) -> TestImages:
    """The validation split of `config`'s data, with FOLDS folds of its clusters (a seeded shuffle, so every run
    and every rerun leaves out the same images)."""
    from cbam.detection.data import open_detection_data
    from cbam.detection.task import eval_transforms

    dataset = open_detection_data(config.data, config.val_split, eval_transforms(config), config.seed)
    clusters = source_clusters(dataset)
    count = max(clusters) + 1
    folds_of_clusters = np.random.default_rng(0).permutation(count) % min(FOLDS, count)
    folds: list[list[int]] = [[] for _ in range(min(FOLDS, count))]
    for record, cluster in zip(dataset.records, clusters, strict=True):
        folds[folds_of_clusters[cluster]].append(record.image_id)
    category_ids = list(getattr(dataset, "category_ids", range(1, len(dataset.class_names) + 1)))
    return TestImages(dataset, list(dataset.class_names), category_ids, folds, count)


def run_scores(folder: Path, images: TestImages, metric: str) -> tuple[dict[str, float], list[dict[str, float]]]:
    """A run's metrics on every test image and with each fold left out, from its `detections.json`."""
    from cbam.detection.evaluator import DetectionEvaluator, detections_from_results

    results = json.loads((folder / DETECTIONS_FILE).read_text())
    dataset = images.dataset
    image_ids = [r.image_id for r in dataset.records]
    evaluator = DetectionEvaluator(images.classes, images.category_ids, dataset.annotation_file)
    truths = [dataset.ground_truth(k) for k in range(len(image_ids))]
    evaluator.update(image_ids, detections_from_results(results, image_ids, images.category_ids), truths)
    full, *leaving_out = evaluator.compute_leaving_out(metric, [[], *images.folds])
    return full, leaving_out


# ---------------------------------------------------------------------------------------------
# Statistics and the table


@dataclass(frozen=True)
class RowStats:
    """A row's mean metrics over its finished seeds and, against its baseline, the paired difference in the
    headline metric with its verdict."""

    runs: RowRuns
    baseline: str
    metrics: dict[str, Estimate]
    difference: Estimate | None
    verdict: str | None

    @property
    def finished(self) -> list[RunResult]:
        return [r for r in self.runs.results if r is not None]


def baseline_index(rows: list[DetectRow]) -> list[int]:
    """Each row's baseline: the first row of its detector and backbone without attention (else its first row)."""
    indices = []
    for row in rows:
        same = [i for i, r in enumerate(rows) if (r.detector, r.backbone) == (row.detector, row.backbone)]
        plain = [i for i in same if rows[i].attention == "none"]
        indices.append((plain or same)[0])
    return indices


def _jackknife(scores: list[tuple[dict[str, float], list[dict[str, float]]]], key: str, images: int,
               baseline: list[tuple[dict[str, float], list[dict[str, float]]]] | None = None) -> Estimate:  # fmt: skip
    """The interval of `key` over seeds (minus the baseline's, seed by seed, when given)."""
    per_seed = np.array([full[key] for full, _ in scores])
    folds = np.array([[f[key] for f in left] for _, left in scores])
    if baseline is not None:
        per_seed = per_seed - np.array([full[key] for full, _ in baseline])
        folds = folds - np.array([[f[key] for f in left] for _, left in baseline])
    return jackknife_interval(per_seed, folds, images=images, test_zero=baseline is not None)


def row_statistics(all_runs: list[RowRuns], images: TestImages, metric: str, resolve: float) -> list[RowStats]:
    """Each row's metrics over seeds and its paired difference in the first metric against its baseline."""
    keys = metric_keys(metric)
    scores = [
        [run_scores(Path(r.output), images, metric) if r is not None else None for r in runs.results]
        for runs in all_runs
    ]
    count = len(images.dataset.records)
    stats = []
    for index, (runs, base) in enumerate(zip(all_runs, baseline_index([r.row for r in all_runs]), strict=True)):
        mine = [s for s in scores[index] if s is not None]
        metrics = {key: _jackknife(mine, key, count) for key in keys} if mine else {}
        difference = sentence = None
        paired = [(a, b) for a, b in zip(scores[index], scores[base], strict=True) if a is not None and b is not None]
        if base != index and paired:
            difference = _jackknife([a for a, _ in paired], keys[0], count, baseline=[b for _, b in paired])
            sentence = verdict(runs.row.name, all_runs[base].row.name, difference, metric=COLUMNS[keys[0]],
                               resolve=resolve / 100, unit="test image")  # fmt: skip
        stats.append(RowStats(runs, all_runs[base].row.name, metrics, difference, sentence))
    return stats


@dataclass(frozen=True)
class DetectComparison:
    """The table, the verdicts, the failed runs and the notes, as written to comparison.md/.csv/.json."""

    table: str
    stats: list[RowStats]
    header: list[str]
    rows: list[list[str]]
    verdicts: list[str]
    failures: list[str]
    notes: list[str]


def comparison_table(table: str, stats: list[RowStats], metric: str) -> tuple[list[str], list[list[str]]]:
    """Our figures (means over seeds with 95% intervals, the difference against the baseline and its p-value),
    then the paper's row and figures in columns of their own, named for the paper's dataset."""
    keys, paper_keys, where = metric_keys(metric), PAPER_KEYS[table], PAPER_DATA[table]
    ours = [*(f"{COLUMNS[k]} (%)" for k in keys), f"{COLUMNS[keys[0]]} vs baseline", "p"]
    paper = [f"Paper row ({where})", *(f"Paper {COLUMNS[k]} ({where})" for k in paper_keys)]
    header = ["Detector", "Seeds", "Params (M)", *ours, *paper]
    rows = []
    for stat in stats:
        row, finished = stat.runs.row, stat.finished
        p_value = stat.difference.p_value if stat.difference is not None else None
        rows.append([
            row.name, f"{len(finished)}/{len(stat.runs.seeds)}",
            f"{finished[0].params / 1e6:.2f}" if finished else "",
            *(format_points(stat.metrics.get(k)) for k in keys),
            format_points(stat.difference, sign=True) if stat.baseline != row.name else "baseline",
            "" if p_value is None else f"{p_value:.3g}",
            row.description, *(f"{row.paper[k]:.1f}" for k in paper_keys),
        ])  # fmt: skip
    return header, rows


def compare_detectors(
    table: str,
    base: DetectionConfig,
    output: Path,
    *,
    backbones: list[str] | None = None,
    backbone_runs: Path | None = None,
    seeds: int = 1,
    jobs: int = 1,
    scheduler: str | None = None,
    scheduler_options: dict[str, Any] | None = None,
    resolve: float = 0.5,
    exist_ok: bool = False,
) -> DetectComparison:
    """Train every row of `table` over `seeds` seeds (keeping finished runs, continuing stopped ones; a folder of
    another recipe is refused unless `exist_ok`), score each run's detections and write comparison.md, .csv and
    .json with intervals and verdicts beside the paper's figures."""
    output = Path(output)
    check_writable_folder(output)
    rows = table_rows(table, backbones)
    configs, notes = row_configs(rows, base, output, seeds, backbone_runs)
    all_runs = run_rows(rows, configs, output, jobs=jobs, scheduler=scheduler, scheduler_options=scheduler_options,
                        exist_ok=exist_ok)  # fmt: skip
    images = validation_images(base)
    stats = row_statistics(all_runs, images, base.metric, resolve)
    header, body = comparison_table(table, stats, base.metric)
    count = len(images.dataset.records)
    notes = [
        f"Means over seeds of each run's final network on {count} test images"
        + (f" from {images.clusters} independent sources" if images.clusters < count else "")
        + f"; [low, high] is a 95% interval over seeds and test images (cbam.stats.jackknife_interval, the images' "
        f"part from {len(images.folds)} folds of whole sources left out in turn).",
        f"vs baseline: the paired difference in {COLUMNS[metric_keys(base.metric)[0]]} against the same detector "
        "without attention, seed by seed, in points (positive: better); p is two-sided, not adjusted for the rows.",
        f"The paper's columns are its figures on {PAPER_DATA[table]}: another dataset and scale, not comparable with "
        "ours; they name the row each of ours stands for.",
        *notes,
    ]
    if seeds < 2:
        notes.append("One seed per row: intervals need at least 2 seeds (--seeds 3 gives them).")
    comparison = DetectComparison(table, stats, header, body, [s.verdict for s in stats if s.verdict],
                                  [f for runs in all_runs for f in runs.failures], notes)  # fmt: skip
    write_reports(output, comparison, base.data)
    return comparison


def comparison_json(comparison: DetectComparison) -> dict[str, Any]:
    """Everything the table shows, with every run's own final metrics."""
    return {
        "table": comparison.table,
        "rows": [
            {
                "name": s.runs.row.name,
                "detector": s.runs.row.detector,
                "backbone": s.runs.row.backbone,
                "attention": s.runs.row.attention,
                "baseline": s.baseline,
                "metrics": {k: v.to_dict() for k, v in s.metrics.items()},
                "difference": s.difference.to_dict() if s.difference else None,
                "verdict": s.verdict,
                "paper": s.runs.row.paper,
                "runs": seed_records(s.runs.seeds, s.runs.results),
            }
            for s in comparison.stats
        ],
        "failures": comparison.failures,
        "notes": comparison.notes,
    }


def write_reports(output: Path, comparison: DetectComparison, data: str) -> None:
    """comparison.md (title, table, verdicts, failures, notes), .csv and .json in `output`."""
    lines = [f"## {comparison.table} on {data}", "", *comparison_lines(comparison.header, comparison.rows,
             comparison.verdicts, comparison.failures, comparison.notes)]  # fmt: skip
    atomic_write(output / "comparison.md", lambda tmp: tmp.write_text("\n".join(lines) + "\n"))
    write_csv(output / "comparison.csv", comparison.header, comparison.rows)
    payload = json.dumps(comparison_json(comparison), indent=2, default=float)
    atomic_write(output / "comparison.json", lambda tmp: tmp.write_text(payload + "\n"))
