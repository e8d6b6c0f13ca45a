"""Batches as a run sees them: loaders sharded over processes, unreadable images skipped and counted, and
batches too small to train on merged into the next."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, Sampler
from tqdm import tqdm

from cbam.data.loading import ShardSampler, Skipped
from cbam.engine.distributed import Distributed

log = logging.getLogger(__name__)

# A training batch smaller than this (after unreadable images were skipped) is merged into the next one:
# BatchNorm in training mode cannot normalise a single image whose maps are 1 x 1.
MIN_TRAIN_BATCH = 2


class SkipLog:
    """Logs each unreadable file once (with its path and why), counts every skip, and counts the readable
    images dropped because skipping left their batch too small to train on."""

    def __init__(self) -> None:
        self.seen: set[str] = set()
        self.count = 0
        self.dropped = 0

    def add(self, skipped: Iterable[Skipped]) -> None:
        for item in skipped:
            self.count += 1
            if item.path not in self.seen:
                self.seen.add(item.path)
                log.warning("skipping unreadable image %s (%s)", item.path, item.reason)


def join_batches(a: Any, b: Any) -> Any:
    """Two batches' inputs (or targets) as one: stacked tensors are concatenated, lists chained."""
    return torch.cat([a, b]) if isinstance(a, torch.Tensor) else [*a, *b]


def merged_batches(
    batches: Iterable[tuple[Any, Any, list[Skipped]]],
    skips: SkipLog,
    min_size: int,
    size: Callable[[Any], int] = len,
    join: Callable[[Any, Any], Any] = join_batches,
) -> Iterator[tuple[Any, Any]]:
    """(inputs, targets) of the loader's readable samples, in batches of at least `min_size`: a batch that
    skipping left smaller is merged into the next; one left over at the end is dropped and counted."""
    held: tuple[Any, Any] | None = None
    for inputs, targets, skipped in batches:
        skips.add(skipped)
        if size(inputs) == 0:
            continue
        if held is not None:
            inputs, targets = join(held[0], inputs), join(held[1], targets)
            held = None
        if size(inputs) < min_size:
            held = (inputs, targets)
            continue
        yield inputs, targets
    if held is not None:
        skips.dropped += size(held[0])
        log.warning("dropped %d image(s) at the end of the epoch: too few readable ones for a batch", size(held[0]))


def make_loader(
    dataset: Dataset, sampler: Sampler, batch_size: int, workers: int, collate: Callable, *, drop_last: bool = False
) -> DataLoader:
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=workers,
        collate_fn=collate,
        pin_memory=torch.cuda.is_available(),
        drop_last=drop_last,
    )


def eval_loader(dataset: Dataset, batch_size: int, workers: int, collate: Callable, dist: Distributed) -> DataLoader:
    """Every item of `dataset` once over all processes (a DistributedSampler would repeat some)."""
    return make_loader(dataset, ShardSampler(len(dataset), dist.rank, dist.world_size), batch_size, workers, collate)


def progress_bar(total: int, desc: str, enabled: bool) -> tqdm:
    """A progress bar on an interactive terminal of the main process; silent elsewhere."""
    return tqdm(total=total, desc=desc, unit="img", disable=not enabled or not sys.stderr.isatty(), leave=False)
