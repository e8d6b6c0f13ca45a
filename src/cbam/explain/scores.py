"""Localisation scores of trained networks over a split: `cbam localize`."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from PIL import Image

from cbam.classification.predictions import image_groups, split_files
from cbam.data.loading import DataError, class_names, data_root, open_split
from cbam.data.transforms import eval_transform
from cbam.engine.distributed import resolve_device
from cbam.explain.boxes import NoBoxes, boxes_after_eval_transform, split_boxes
from cbam.explain.cam import grad_cam
from cbam.explain.localize import (
    DISPLAY_THRESHOLD,
    Interval,
    bootstrap_interval,
    energy_in_boxes,
    iou_at_threshold,
    pointing_game,
)


@dataclass(frozen=True)
class LocalizationScores:
    """One network's scores over the images that have a box of their own class; intervals resample source images
    (renderings of one digit together). `files` and `hits` are the per-image pointing game, for statistics over
    seeds."""

    name: str
    images: int
    pointing_game: Interval
    energy: Interval
    iou: Interval
    files: tuple[str, ...] = field(default=(), repr=False)
    hits: tuple[float, ...] = field(default=(), repr=False)

    def to_dict(self) -> dict[str, object]:
        return {key: value for key, value in asdict(self).items() if key not in ("files", "hits")}


def localize_checkpoint(
    path: Path,
    data: str | None = None,
    *,
    split: str = "val",
    boxes: Path | None = None,
    method: str = "gradcam",
    layer: str | None = None,
    threshold: float = DISPLAY_THRESHOLD,
    batch_size: int = 32,
    limit: int | None = None,
    device: str = "auto",
) -> LocalizationScores:
    """Grad-CAM of the ground-truth class for every image with a box of that class, scored against it."""
    from cbam.runs import load_model

    loaded = load_model(Path(path), task="classification")
    model, config = loaded.model, loaded.config
    data = data or config.data
    if not data:
        raise DataError("give --data: this weights file does not record its dataset")
    image_size, resize = config.image_size, config.eval_resize
    base = open_split(data, split)
    names = class_names(base)
    files = split_files(base, data, split)
    truth = split_boxes(data_root(data), split, files, boxes)
    transform = eval_transform(image_size, resize, config.mean, config.std)
    device = resolve_device(device)
    model = model.to(device).eval()
    hits: list[float] = []
    energies: list[float] = []
    ious: list[float] = []
    chosen = [i for i, f in enumerate(files) if any(n == names[base.samples[i][1]] for n, _ in truth.get(f, []))]
    if limit is not None:
        chosen = chosen[:limit]
    if not chosen:
        raise NoBoxes(f"no image of {data}/{split} has a box of its own class")
    for start in range(0, len(chosen), batch_size):
        batch = chosen[start : start + batch_size]
        images, labels, targets = [], [], []
        for i in batch:
            file, label = files[i], base.samples[i][1]
            with Image.open(base.samples[i][0]) as image:
                rgb = image.convert("RGB")
            own = [box for n, box in truth[file] if n == names[label]]
            targets.append(boxes_after_eval_transform(own, rgb.width, rgb.height, image_size, resize))
            images.append(transform(rgb))
            labels.append(label)
        cams, _ = grad_cam(model, torch.stack(images).to(device), targets=labels, layer=layer, method=method)
        for cam, target in zip(cams, targets, strict=True):
            hits.append(float(pointing_game(cam, target)))
            energies.append(energy_in_boxes(cam, target))
            ious.append(iou_at_threshold(cam, target, threshold))
    scored = tuple(files[i] for i in chosen)
    groups = image_groups(data, split, scored)
    return LocalizationScores(
        name=str(path),
        images=len(hits),
        pointing_game=bootstrap_interval(torch.tensor(hits), groups=groups),
        energy=bootstrap_interval(torch.tensor(energies), groups=groups),
        iou=bootstrap_interval(torch.tensor(ious), groups=groups),
        files=scored,
        hits=tuple(hits),
    )


def format_interval(interval: Interval, percent: bool = True) -> str:
    scale = 100.0 if percent else 1.0
    return f"{interval.mean * scale:.1f} [{interval.low * scale:.1f}, {interval.high * scale:.1f}]"
