"""`cbam eval`: a saved classifier's single-crop top-1/top-5 error on a data split, as the paper reports it."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor

from cbam.classification.predictions import collected, split_files, write_predictions
from cbam.classification.task import EvalResult, evaluate
from cbam.data.loading import (
    AugmentedDataset,
    DataError,
    class_names,
    collate_skipping,
    default_workers,
    open_split,
)
from cbam.data.transforms import eval_transform
from cbam.engine.batches import SkipLog, eval_loader
from cbam.engine.distributed import init_distributed
from cbam.networks.classifier import classifier
from cbam.runs import load_model


def evaluate_checkpoint(
    path: Path,
    data: str | None = None,
    *,
    split: str = "val",
    batch_size: int = 64,
    workers: int | None = None,
    image_size: int | None = None,
    eval_resize: int | None = None,
    device: str = "auto",
    predictions: Path | None = None,
) -> EvalResult:
    """Top-1/top-5 error of a checkpoint on `split` of `data` (default: the data it was trained on), at the
    geometry it was trained for unless `image_size`/`eval_resize` say otherwise; with `predictions`, each
    image's five best classes are written there too (`cbam.classification.predictions`)."""
    path = Path(path)
    dist = init_distributed(device)
    loaded = load_model(path, dist.device, task="classification")
    config = loaded.config
    data = data or config.data
    if not data:
        raise DataError("give --data: this weights file does not record its dataset")
    image_size = image_size or config.image_size
    eval_resize = eval_resize or (config.eval_resize if image_size == config.image_size else round(image_size * 8 / 7))
    base = open_split(data, split, download=config.download)
    data_classes = class_names(base)
    num_classes = len(loaded.classes) if loaded.classes else classifier(loaded.model).out_features
    if len(data_classes) != num_classes:
        raise DataError(f"{path} has {num_classes} classes but {data} has {len(data_classes)}")
    if loaded.classes is not None and data_classes != list(loaded.classes):
        raise DataError(
            f"{path} names different classes than {data}: {list(loaded.classes)[:5]}... vs {data_classes[:5]}..."
        )
    dataset = AugmentedDataset(base, eval_transform(image_size, eval_resize, config.mean, config.std))
    workers = default_workers() if workers is None else workers
    loader = eval_loader(dataset, batch_size, workers, collate_skipping, dist)
    if predictions is None:
        return evaluate(loaded.model, loader, dist)
    kept: list = []
    skips = SkipLog()
    result = evaluate(loaded.model, loader, dist, skips=skips, keep=kept)
    if dist.enabled:
        if result.skipped:
            raise DataError(f"{result.skipped} unreadable images: per-image predictions need one process (no torchrun)")
        kept = in_dataset_order(kept, dist.world_size)
    if dist.is_main:
        files = split_files(base, data, split)
        write_predictions(Path(predictions), collected(files, data_classes, kept, skips.seen))
    return result


def in_dataset_order(kept: list[tuple[Tensor, Tensor]], world_size: int) -> list[tuple[Tensor, Tensor]]:
    """Every process's share of `evaluate(..., keep=...)` gathered back into dataset order (process r evaluated
    images r, r + world_size, ...)."""
    shares: list = [None] * world_size
    torch.distributed.all_gather_object(shares, [(t, b) for t, b in kept])
    flat = [(torch.cat([t for t, _ in share]), torch.cat([b for _, b in share])) if share else None for share in shares]
    order = []
    for position in range(max(len(f[0]) if f else 0 for f in flat)):
        order += [
            (f[0][position : position + 1], f[1][position : position + 1]) for f in flat if f and position < len(f[0])
        ]
    return order
