"""Where a network looks: Grad-CAM (paper Fig. 4), attention maps, localisation scores."""

from cbam.explain.cam import CAM_METHODS, default_cam_layer, grad_cam, resolve_layer
from cbam.explain.localize import (
    DISPLAY_THRESHOLD,
    Interval,
    bootstrap_interval,
    box_mask,
    energy_in_boxes,
    iou_at_threshold,
    pointing_game,
)
from cbam.explain.maps import AttentionMaps, attention_maps

__all__ = [
    "CAM_METHODS",
    "DISPLAY_THRESHOLD",
    "AttentionMaps",
    "Interval",
    "attention_maps",
    "bootstrap_interval",
    "box_mask",
    "default_cam_layer",
    "energy_in_boxes",
    "grad_cam",
    "iou_at_threshold",
    "pointing_game",
    "resolve_layer",
]
