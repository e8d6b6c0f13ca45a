"""Evaluate a saved network on a data split: the paper's single-crop top-1/top-5 error."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn
from torch.utils.data import DataLoader

from cbam.data.loading import (
    AugmentedDataset,
    DataError,
    ShardSampler,
    class_names,
    collate_skipping,
    default_workers,
    open_split,
)
from cbam.data.transforms import eval_transform
from cbam.engine.checkpoint import load_checkpoint, load_safetensors
from cbam.engine.config import config_from_dict
from cbam.engine.distributed import init_distributed
from cbam.engine.train import EvalResult, build_model, evaluate


def load_network(path: Path) -> tuple[nn.Module, list[str] | None, dict[str, Any]]:
    """(model, class names if known, how it was trained) from a checkpoint or a `.safetensors` file."""
    if path.suffix == ".safetensors":
        from cbam.convert import load_pretrained

        _, meta = load_safetensors(path)
        return load_pretrained(path, verbose=False), meta.get("classes"), meta
    state = load_checkpoint(path)
    config = config_from_dict(state["config"])
    model = build_model(config, len(state["classes"]))
    model.load_state_dict(state["model"])
    return model, state["classes"], config.to_dict()


def eval_geometry(trained: dict[str, Any]) -> tuple[int, int]:
    """(image_size, eval_resize) a network was trained for: its single-crop evaluation input."""
    image_size = trained.get("image_size") or 224
    return image_size, trained.get("eval_resize") or round(image_size * 256 / 224)


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
    """Top-1/top-5 error of a checkpoint on `split` of `data` (default: the data it was trained on)."""
    path = Path(path)
    model, classes, trained = load_network(path)
    data = data or trained.get("data")
    if not data:
        raise DataError("give --data: this weights file does not record its dataset")
    if image_size is None:
        image_size, trained_resize = eval_geometry(trained)
        eval_resize = eval_resize or trained_resize
    eval_resize = eval_resize or trained.get("eval_resize") or round(image_size * 256 / 224)
    base = open_split(data, split, download=bool(trained.get("download")))
    data_classes = class_names(base)
    num_classes = len(classes) if classes is not None else model.fc.out_features
    if len(data_classes) != num_classes:
        raise DataError(f"{path} has {num_classes} classes but {data} has {len(data_classes)}")
    if classes is not None and data_classes != list(classes):
        raise DataError(f"{path} names different classes than {data}: {list(classes)[:5]}... vs {data_classes[:5]}...")
    dist = init_distributed(device)
    model = model.to(dist.device)
    dataset = AugmentedDataset(base, eval_transform(image_size, eval_resize))
    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=ShardSampler(len(dataset), dist.rank, dist.world_size),
        num_workers=default_workers() if workers is None else workers,
        collate_fn=collate_skipping,
    )
    return evaluate(model, loader, dist)
