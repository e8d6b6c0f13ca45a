"""What a detection run needs (`DetectConfig`) and the paper's recipes as presets.

Precedence, lowest first: the dataclass defaults, a preset, then explicit overrides. With no preset named,
a built-in dataset gets its own (`cluttered-digits`); other data gets the defaults.

    cluttered-digits   the CPU-sized default: Faster R-CNN C4 on ResNet-18, 64 px digits seen at 128 px
    coco-faster-rcnn   Table 7: COCO 2014 train + val minus the 5k minival (that is COCO 2017 train; minival is
                       2017 val), 490k iterations of one image, 600 px short side, lr 0.001 then 0.0001 after
                       350k (the single-scale C4 code the paper builds on), from ImageNet-trained weights
    voc-stairnet       Table 8: VOC 07+12, 300 px, 250 epochs, SGD momentum 0.9, weight decay 5e-4
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from cbam.data.loading import data_location, default_workers
from cbam.errors import ConfigError, unknown_name

METRICS: tuple[str, ...] = ("coco", "voc07", "voc")
OPTIMIZERS: tuple[str, ...] = ("sgd", "adamw")


@dataclass(frozen=True)
class DetectConfig:
    """A detection run. Length is `epochs`, or `iterations` (steps of one global batch) when that is set; the
    learning rate warms up linearly for `warmup_iterations` and drops by `lr_gamma` at each fraction of the
    run in `lr_milestones`."""

    data: str = "cluttered-digits"  # a dataset name, or a folder (kept as an absolute path)
    output: str = ""
    recipe: str = ""  # the preset the values came from; "" for the defaults
    detector: str = "faster_rcnn_c4"
    backbone: str = "resnet18"
    attention: Any = "none"
    detector_kwargs: dict[str, Any] = field(default_factory=dict)
    backbone_weights: str | None = None
    train_split: str = "train"
    val_split: str = "val"
    epochs: int = 12
    iterations: int = 0
    batch_size: int = 8  # global, over all processes
    optimizer: str = "sgd"
    lr: float = 0.02  # for this global batch (no scaling)
    momentum: float = 0.9
    weight_decay: float = 1e-4
    warmup_iterations: int = 100
    lr_milestones: tuple[float, ...] = (2 / 3, 8 / 9)
    lr_gamma: float = 0.1
    hflip: bool = True
    metric: str = "coco"
    workers: int = field(default_factory=default_workers)
    seed: int = 0
    amp: bool = False
    device: str = "auto"

    def __post_init__(self) -> None:
        object.__setattr__(self, "data", data_location(self.data))
        if self.backbone_weights:
            object.__setattr__(self, "backbone_weights", data_location(self.backbone_weights))
        object.__setattr__(self, "lr_milestones", tuple(self.lr_milestones))
        object.__setattr__(self, "detector_kwargs", dict(self.detector_kwargs))
        checks = [
            (self.epochs >= 1, f"epochs must be at least 1, got {self.epochs}"),
            (self.iterations >= 0, f"iterations must be 0 (use epochs) or more, got {self.iterations}"),
            (self.batch_size >= 1, f"batch_size must be at least 1, got {self.batch_size}"),
            (self.lr > 0, f"lr must be positive, got {self.lr}"),
            (self.workers >= 0, f"workers must be 0 or more, got {self.workers}"),
            (all(0 < m < 1 for m in self.lr_milestones), f"lr_milestones are in (0, 1): {self.lr_milestones}"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)
        if self.metric not in METRICS:
            raise unknown_name("metric", self.metric, METRICS)
        if self.optimizer not in OPTIMIZERS:
            raise unknown_name("optimizer", self.optimizer, OPTIMIZERS)

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["lr_milestones"] = list(self.lr_milestones)
        return out


# Detectors sized for 64 px digits on a CPU: the images as they are, anchors of the digits' sizes, few RoIs,
# and RoIs of 7 x 7 so that layer4 (the C4 box head, run once per RoI) sees 4 x 4.
SMALL_INPUT_KWARGS: dict[str, dict[str, Any]] = {
    "faster_rcnn_c4": {
        "min_size": 64,
        "max_size": 64,
        "anchor_sizes": [16, 32, 64],
        "roi_size": 7,
        "rpn_pre_nms_top_n_train": 300,
        "rpn_post_nms_top_n_train": 64,
        "rpn_pre_nms_top_n_test": 100,
        "rpn_post_nms_top_n_test": 16,
        "box_batch_size_per_image": 16,
        "trainable_layers": 5,
    },
    "faster_rcnn_fpn": {"min_size": 64, "max_size": 64, "anchor_sizes": [8, 16, 32, 64, 128], "trainable_layers": 5},
    "ssd300": {"size": 128},
    "stairnet300": {"size": 128},
}

PRESETS: dict[str, dict[str, Any]] = {
    "cluttered-digits": {
        "data": "cluttered-digits",
        "detector": "faster_rcnn_c4",
        "backbone": "resnet18",
        "detector_kwargs": SMALL_INPUT_KWARGS["faster_rcnn_c4"],
        "epochs": 1,  # 393 steps of 16: about 7 minutes on 2 CPU cores
        "batch_size": 16,
        "optimizer": "adamw",
        "lr": 1e-3,
        "weight_decay": 1e-4,
        "warmup_iterations": 50,
        "hflip": False,
        "metric": "coco",
    },
    "coco-faster-rcnn": {
        "detector": "faster_rcnn_c4",
        "backbone": "resnet50",
        "train_split": "train",  # COCO 2017 train is 2014's train + val minus the 5k minival, which is 2017 val
        "val_split": "val",
        "iterations": 490_000,
        "batch_size": 1,
        "lr": 0.001,
        "lr_milestones": [350_000 / 490_000],
        "weight_decay": 1e-4,
        "warmup_iterations": 0,
        "metric": "coco",
    },
    "voc-stairnet": {
        "detector": "stairnet300",
        "backbone": "vgg16",
        "train_split": "train",
        "val_split": "test",
        "epochs": 250,
        "batch_size": 32,
        "lr": 1e-3,
        "momentum": 0.9,
        "weight_decay": 5e-4,
        "warmup_iterations": 500,
        "lr_milestones": [0.6, 0.8],
        "metric": "voc07",
    },
}


# Built-in datasets with a preset of their own, used when no preset is named.
DATASET_PRESETS: dict[str, str] = {"cluttered-digits": "cluttered-digits"}


def build_detect_config(preset: str | None = None, **overrides: Any) -> DetectConfig:
    """The defaults, then `preset` (the dataset's own when none is named), then every override that is not None;
    `detector_kwargs` given are added to the preset's."""
    values: dict[str, Any] = {}
    preset = preset or DATASET_PRESETS.get(overrides.get("data") or DetectConfig.data)
    if preset is not None:
        if preset not in PRESETS:
            raise unknown_name("detection preset", preset, PRESETS)
        values.update(PRESETS[preset])
        values["recipe"] = preset
    given = {k: v for k, v in overrides.items() if v is not None}
    if preset == "cluttered-digits" and "detector" in given:
        values["detector_kwargs"] = SMALL_INPUT_KWARGS.get(given["detector"], {})
    given["detector_kwargs"] = {**values.get("detector_kwargs", {}), **given.get("detector_kwargs", {})}
    values.update(given)
    return detect_config_from_dict(values)


def detect_config_from_dict(values: Mapping[str, Any]) -> DetectConfig:
    """A config from a dict (a checkpoint's, or a preset with overrides); unknown keys are an error."""
    known = {f.name for f in dataclasses.fields(DetectConfig)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ConfigError(f"unknown detection config keys: {', '.join(unknown)}; valid: {', '.join(sorted(known))}")
    return DetectConfig(**values)
