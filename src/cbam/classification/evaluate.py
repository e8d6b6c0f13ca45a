"""`cbam eval`: a saved classifier's single-crop top-1/top-5 error on a data split, as the paper reports it."""

from __future__ import annotations

from pathlib import Path

from cbam.classification.task import EvalResult, evaluate
from cbam.data.loading import AugmentedDataset, DataError, class_names, collate_skipping, default_workers, open_split
from cbam.data.transforms import eval_transform
from cbam.engine.batches import eval_loader
from cbam.engine.distributed import init_distributed
from cbam.tasks import load_model


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
) -> EvalResult:
    """Top-1/top-5 error of a checkpoint on `split` of `data` (default: the data it was trained on), at the
    geometry it was trained for unless `image_size`/`eval_resize` say otherwise."""
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
    num_classes = len(loaded.classes) if loaded.classes else loaded.model.fc.out_features
    if len(data_classes) != num_classes:
        raise DataError(f"{path} has {num_classes} classes but {data} has {len(data_classes)}")
    if loaded.classes is not None and data_classes != list(loaded.classes):
        raise DataError(
            f"{path} names different classes than {data}: {list(loaded.classes)[:5]}... vs {data_classes[:5]}..."
        )
    dataset = AugmentedDataset(base, eval_transform(image_size, eval_resize, config.mean, config.std))
    workers = default_workers() if workers is None else workers
    return evaluate(loaded.model, eval_loader(dataset, batch_size, workers, collate_skipping, dist), dist)
