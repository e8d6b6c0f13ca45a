"""How well a class activation map points at the object: scores against ground-truth boxes.

Boxes are (x0, y0, x1, y1) in pixels of the map, corners inclusive-exclusive as in COCO's
(x, y, w, h) turned to corners; a pixel (row i, column j) is inside when x0 <= j < x1 and
y0 <= i < y1. Every score takes one map (H, W) and the boxes of the target class.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

DISPLAY_THRESHOLD = 0.6
"""The paper shows the image where the normalised Grad-CAM is at least 0.6 (Fig. 5)."""


def box_mask(boxes: Tensor, height: int, width: int) -> Tensor:
    """(H, W) bool: the union of the boxes (K, 4)."""
    rows = torch.arange(height).view(-1, 1)
    cols = torch.arange(width).view(1, -1)
    mask = torch.zeros(height, width, dtype=torch.bool)
    for x0, y0, x1, y1 in boxes.tolist():
        mask |= (cols >= x0) & (cols < x1) & (rows >= y0) & (rows < y1)
    return mask


def pointing_game(cam: Tensor, boxes: Tensor) -> bool:
    """Whether the map's maximum falls inside a box (a hit); ties count if any maximum is inside."""
    inside = box_mask(boxes, *cam.shape)
    return bool(inside[cam == cam.max()].any())


def energy_in_boxes(cam: Tensor, boxes: Tensor) -> float:
    """The share of the map's mass inside the boxes (0 for an all-zero map)."""
    total = cam.sum()
    if total <= 0:
        return 0.0
    return float(cam[box_mask(boxes, *cam.shape)].sum() / total)


def iou_at_threshold(cam: Tensor, boxes: Tensor, threshold: float = DISPLAY_THRESHOLD) -> float:
    """IoU between the boxes and the region where the map is at least `threshold`."""
    region = cam >= threshold
    inside = box_mask(boxes, *cam.shape)
    union = (region | inside).sum()
    return float((region & inside).sum() / union) if union > 0 else 0.0


@dataclass(frozen=True)
class Interval:
    """A mean and its 95% bootstrap interval."""

    mean: float
    low: float
    high: float


def bootstrap_interval(
    values: Tensor | np.ndarray, resamples: int = 2000, seed: int = 0, groups: np.ndarray | None = None
) -> Interval:
    """Mean of `values` with the percentile bootstrap's 95% interval (seeded, so reproducible). With `groups` (one
    id per value) whole groups are resampled, so renderings of one source image count as one sample."""
    data = np.asarray(values, dtype=np.float64)
    if data.size == 0:
        raise ValueError("bootstrap_interval needs at least one value")
    rng = np.random.default_rng(seed)
    if groups is None:
        means = data[rng.integers(0, data.size, size=(resamples, data.size))].mean(axis=1)
    else:
        labels = np.unique(np.asarray(groups), return_inverse=True)[1].reshape(data.shape)
        clusters = int(labels.max()) + 1
        sums, sizes = np.bincount(labels, weights=data, minlength=clusters), np.bincount(labels, minlength=clusters)
        drawn = rng.integers(0, clusters, size=(resamples, clusters))
        means = sums[drawn].sum(axis=1) / sizes[drawn].sum(axis=1)
    low, high = np.percentile(means, [2.5, 97.5])
    return Interval(float(data.mean()), float(low), float(high))
