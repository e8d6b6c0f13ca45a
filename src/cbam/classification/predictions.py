"""Per-image validation predictions: what a run got right, image by image, so every figure of a comparison can be
recomputed from files (`predictions.csv`: file, label, the five best classes).

Images are grouped where they are not independent: the renderings of one source digit in cluttered-digits share a
group (its annotations' `source_index`), so statistics resample digits, not renderings; elsewhere each image is
its own group.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from torch import Tensor
from torch.utils.data import Dataset

from cbam.data.loading import DataError, data_root
from cbam.outputs import atomic_write

PREDICTIONS_FILE = "predictions.csv"
TOP = 5


@dataclass(frozen=True)
class Predictions:
    """Each image's file (relative to its split), true class and best classes (names, best first)."""

    files: tuple[str, ...]
    labels: tuple[str, ...]
    top: tuple[tuple[str, ...], ...]

    def errors(self, k: int = 1) -> np.ndarray:
        """1.0 where the label is not among the `k` best classes, else 0.0, per image."""
        return np.array([label not in best[:k] for label, best in zip(self.labels, self.top, strict=True)], float)

    def error_percent(self, k: int = 1) -> float:
        return 100.0 * float(self.errors(k).mean())


def collected(
    files: Sequence[str], classes: Sequence[str], kept: Iterable[tuple[Tensor, Tensor]], skipped: Iterable[str] = ()
) -> Predictions:
    """Predictions from `evaluate(..., keep=...)` batches over `files` in loader order, less the unreadable ones
    (`skipped`, as paths ending in the file)."""
    unreadable = set(skipped)
    readable = [f for f in files if not any(path.endswith(f) for path in unreadable)]
    labels, top = [], []
    for targets, best in kept:
        labels += [classes[i] for i in targets.tolist()]
        top += [tuple(classes[i] for i in row) for row in best.tolist()]
    if len(labels) != len(readable):
        raise DataError(f"{len(labels)} predictions for {len(readable)} readable images")
    return Predictions(tuple(readable), tuple(labels), tuple(top))


def write_predictions(path: Path, predictions: Predictions) -> None:
    """`path` as CSV (file, label, top1..top5), written atomically."""
    width = max((len(best) for best in predictions.top), default=TOP)

    def write(tmp: Path) -> None:
        with tmp.open("w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["file", "label", *(f"top{i + 1}" for i in range(width))])
            for file, label, best in zip(predictions.files, predictions.labels, predictions.top, strict=True):
                writer.writerow([file, label, *best])

    atomic_write(Path(path), write)


def read_predictions(path: Path) -> Predictions:
    """A `predictions.csv`; a missing or malformed file is one `DataError` naming it."""
    try:
        with Path(path).open(newline="") as handle:
            rows = list(csv.reader(handle))
    except OSError as err:
        raise DataError(f"cannot read predictions {path}: {err.strerror or err}") from None
    if not rows or rows[0][:2] != ["file", "label"] or any(len(row) < 3 for row in rows[1:]):
        raise DataError(f"{path} is not a predictions file (file, label, top1...)")
    body = rows[1:]
    return Predictions(tuple(r[0] for r in body), tuple(r[1] for r in body), tuple(tuple(r[2:]) for r in body))


def split_files(base: Dataset, data: str, split: str) -> list[str]:
    """Each image of a split as its path below the split's folder (`3/000006.png`), in dataset order; by index
    for datasets without files (CIFAR)."""
    samples = getattr(base, "samples", None)
    if not samples:
        return [str(i) for i in range(len(base))]
    root = data_root(data) / split
    return [Path(path).relative_to(root).as_posix() for path, _ in samples]


def image_groups(data: str, split: str, files: Sequence[str]) -> np.ndarray:
    """A group id per file: its source image where `annotations/<split>.json` names one (`source_index`), so
    renderings of one digit count as one sample; otherwise each image is its own group."""
    annotations = data_root(data) / "annotations" / f"{split}.json"
    sources: dict[str, int] = {}
    if annotations.is_file():
        try:
            images = json.loads(annotations.read_text()).get("images", [])
        except (OSError, ValueError, AttributeError):
            images = []
        sources = {i["file_name"]: i["source_index"] for i in images if isinstance(i, dict) and "source_index" in i}
    ids: dict[object, int] = {}
    return np.array([ids.setdefault(sources.get(f, ("image", f)), len(ids)) for f in files], dtype=np.int64)
