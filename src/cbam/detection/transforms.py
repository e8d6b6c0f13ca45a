"""Detection augmentation with `torchvision.transforms.v2`: the SSD recipe (paper Sect. 4.6, Table 8) and
the flip-only Faster R-CNN recipe (Sect. 4.5, Table 7).

Every transform takes and returns `(image, target)` with a uint8 `tv_tensors.Image` going in and a float32 one
in [0, 1] coming out; the target's `boxes` move with the image, and `labels` and `difficult` stay aligned with
them when boxes are dropped. Randomness comes from torch's global generator, which the datasets seed from
(seed, epoch, index), so a resumed run draws the same augmentation.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torchvision import tv_tensors
from torchvision.transforms import v2

from cbam.data.transforms import IMAGENET_MEAN

SSD_SIZE = 300  # the paper's fixed input size for the VOC detectors (Sect. 4.6)
MEAN_COLOUR = tuple(round(255 * m) for m in IMAGENET_MEAN)  # uint8 RGB: zoom-out fills the new border with it, as SSD


def _labels_and_difficult(inputs: Any) -> tuple[Tensor, ...]:
    """The per-box tensors of `(image, target)` that SanitizeBoundingBoxes must filter with the boxes."""
    target = inputs[1]
    return tuple(target[key] for key in ("labels", "difficult") if key in target)


class _IoUCrop(v2.RandomIoUCrop):
    """SSD's IoU-constrained random crop; an image without boxes is left as it is (there is nothing to keep)."""

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        boxes = next(item for item in flat_inputs if isinstance(item, tv_tensors.BoundingBoxes))
        if boxes.shape[0] == 0:
            return {}
        return super().make_params(flat_inputs)


def _sanitize() -> v2.SanitizeBoundingBoxes:
    """Drop boxes under one pixel (cropped away or squeezed), with their labels and difficult flags."""
    return v2.SanitizeBoundingBoxes(min_size=1.0, labels_getter=_labels_and_difficult)


def _to_float() -> v2.ToDtype:
    return v2.ToDtype(torch.float32, scale=True)  # images only; boxes and labels keep their dtypes


def ssd_train_transforms(size: int = SSD_SIZE, hflip: bool = True) -> v2.Compose:
    """SSD's augmentation: photometric distortion, zoom-out onto the mean colour, IoU-constrained crop,
    horizontal flip (unless `hflip` is False: mirrored digits are other digits), resize to `size` x `size`,
    drop degenerate boxes, to float."""
    return v2.Compose(
        [
            v2.RandomPhotometricDistort(p=0.5),
            v2.RandomZoomOut(fill={tv_tensors.Image: MEAN_COLOUR, "others": 0}, side_range=(1.0, 4.0), p=0.5),
            _IoUCrop(),
            v2.RandomHorizontalFlip(p=0.5 if hflip else 0.0),
            v2.Resize((size, size), antialias=True),
            _sanitize(),
            _to_float(),
        ]
    )


def ssd_eval_transforms(size: int = SSD_SIZE) -> v2.Compose:
    """Resize to `size` x `size` and to float; map predictions back with `boxes_to_original`."""
    return v2.Compose([v2.Resize((size, size), antialias=True), _to_float()])


def rcnn_train_transforms(hflip: bool = True) -> v2.Compose:
    """Faster R-CNN's augmentation: horizontal flip only (if `hflip`); the model's GeneralizedRCNNTransform
    resizes."""
    return v2.Compose([v2.RandomHorizontalFlip(p=0.5 if hflip else 0.0), _to_float()])


def rcnn_eval_transforms() -> v2.Compose:
    """To float only: torchvision's Faster R-CNN resizes internally and returns boxes in input coordinates."""
    return v2.Compose([_to_float()])


def boxes_to_original(boxes: Tensor, resized_size: tuple[int, int], orig_size: tuple[int, int]) -> Tensor:
    """Scale xyxy `boxes` (N, 4) predicted on an image resized to `resized_size` (h, w) back to `orig_size` (h, w)."""
    (resized_h, resized_w), (orig_h, orig_w) = resized_size, orig_size
    scale = torch.tensor(
        [orig_w / resized_w, orig_h / resized_h, orig_w / resized_w, orig_h / resized_h],
        dtype=boxes.dtype if boxes.is_floating_point() else torch.float32,
        device=boxes.device,
    )
    return boxes.as_subclass(Tensor) * scale
