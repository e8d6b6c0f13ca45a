"""The paper's ImageNet pre-processing, sized by the config (ResNet-style, Sect. 4.1)."""

from __future__ import annotations

import torch
from torchvision.transforms import v2

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


Triple = tuple[float, float, float]


def _to_normalized_tensor(mean: Triple, std: Triple) -> list[v2.Transform]:
    return [v2.ToImage(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean, std)]


def train_transform(
    image_size: int,
    crop_scale: tuple[float, float] = (0.08, 1.0),
    hflip: bool = True,
    mean: Triple = IMAGENET_MEAN,
    std: Triple = IMAGENET_STD,
) -> v2.Compose:
    """Random-resized crop to `image_size` (scale `crop_scale`), optional horizontal flip, normalised."""
    steps: list[v2.Transform] = [v2.RandomResizedCrop(image_size, scale=crop_scale, antialias=True)]
    if hflip:
        steps.append(v2.RandomHorizontalFlip())
    return v2.Compose(steps + _to_normalized_tensor(mean, std))


def eval_transform(
    image_size: int, resize: int, mean: Triple = IMAGENET_MEAN, std: Triple = IMAGENET_STD
) -> v2.Compose:
    """Resize the short side to `resize`, then one centre crop of `image_size` (256 -> 224 for ImageNet)."""
    return v2.Compose([v2.Resize(resize, antialias=True), v2.CenterCrop(image_size), *_to_normalized_tensor(mean, std)])
