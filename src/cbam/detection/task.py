"""Object detection as a task of the run skeleton: its options, its data, one step and its evaluation.

`DetectionConfig` holds what a detection run adds to `RunConfig`; the paper's recipes are YAML files
(`cbam/recipes/detection/`). Length is `epochs`, or `iterations` (steps of one global batch) when that is
set; the learning rate warms up linearly for `warmup_iterations` and drops by `lr_gamma` at each fraction
of the run in `lr_milestones`. `DetectionTask` trains a torchvision-style detector (`model(images,
targets)` gives a loss dict) and judges it by COCO mAP@[.5:.95] or VOC mAP@.5.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import torch
import torch.distributed as torch_dist
from torch import Tensor, nn
from torch.utils.data import DataLoader

from cbam.data.loading import DataError, data_location
from cbam.detection.detectors import create_detector
from cbam.detection.transforms import (
    SSD_SIZE,
    boxes_to_original,
    rcnn_eval_transforms,
    rcnn_train_transforms,
    ssd_eval_transforms,
    ssd_train_transforms,
)
from cbam.engine.batches import SkipLog
from cbam.engine.config import RunConfig, attention_option, option, task_default
from cbam.engine.distributed import Distributed
from cbam.engine.task import Headline, Task, TaskData
from cbam.errors import CheckpointError
from cbam.networks.attach import attention_param_groups
from cbam.networks.libraries import is_external
from cbam.networks.weights import read_network_weights, recorded_options

if TYPE_CHECKING:
    from cbam.detection.evaluator import DetectionEvaluator

METRICS: tuple[str, ...] = ("coco", "voc07", "voc")
INPUT_SCALES: tuple[str, ...] = ("paper", "small")

# Detectors sized for 64 px digits on a CPU (`input_scale: small`): the images as they are, anchors of the
# digits' sizes, few RoIs, and RoIs of 7 x 7 so that layer4 (the C4 box head, run once per RoI) sees 4 x 4.
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


@dataclass(frozen=True)
class DetectionConfig(RunConfig):
    """A detection run; the defaults train Faster R-CNN C4 for 12 epochs of 8 images."""

    task: ClassVar[str] = "detection"
    dataset_recipes: ClassVar[dict[str, str]] = {"cluttered-digits": "cluttered-digits"}

    data: str = option("cluttered-digits", "cluttered-digits, a VOC folder or a COCO folder (kept absolute)")
    detector: str = option("faster_rcnn_c4", "see `cbam detect models`")
    backbone: str = option("resnet18", "resnet18/50/101, resnext..., vgg16, mobilenet_v1, torchvision:/timm: ResNets")
    attention: Any = attention_option()
    detector_kwargs: dict[str, Any] = option({}, "detector option (min_size=800, size=512, anchor_sizes=[32,64])",
                                             flag="--detector-arg")  # fmt: skip
    input_scale: str = option("paper", "detector sizes: the paper's, or small for 64 px images", choices=INPUT_SCALES)
    backbone_weights: str | None = option(
        None,
        "the backbone's trained weights: a `cbam train` checkpoint or torchvision-layout state dict, or for a "
        "torchvision:/timm: backbone its library's own (IMAGENET1K_V2; pretrained)",
    )
    train_split: str = option("train", "training split")
    val_split: str = option("val", "validation split")
    epochs: int = task_default(RunConfig, "epochs", 12, paper=None)
    iterations: int = option(0, "run length in steps of one global batch (instead of epochs)", resumable=True)
    batch_size: int = task_default(RunConfig, "batch_size", 8, paper=None)
    lr: float = task_default(RunConfig, "lr", 0.02, paper=None)
    lr_batch: int = task_default(RunConfig, "lr_batch", 0, paper=None)  # detection recipes give lr for their batch
    warmup_iterations: int = option(100, "linear warm-up steps")
    lr_milestones: tuple[float, ...] = option((2 / 3, 8 / 9), "fractions of the run where lr drops by lr_gamma")
    lr_gamma: float = option(0.1, "factor of each drop")
    metric: str = option("coco", "coco (mAP@[.5:.95]), voc07 or voc (mAP@.5)", choices=METRICS)

    def __post_init__(self) -> None:
        if self.backbone_weights:
            object.__setattr__(self, "backbone_weights", data_location(self.backbone_weights))
        object.__setattr__(self, "detector_kwargs", self._with_backbone_options(dict(self.detector_kwargs)))
        super().__post_init__()

    def _with_backbone_options(self, kwargs: dict[str, Any]) -> dict[str, Any]:
        """`kwargs` with the builder options the backbone file records (`backbone_kwargs`: `stem`, `width_mult`)
        written in, so the config rebuilds the trained detector (resume, `load_model`) without that file."""
        if not self.backbone_weights or "backbone_kwargs" in kwargs or is_external(self.backbone):
            return kwargs
        options = recorded_backbone_options(self.backbone_weights, self.backbone)
        return {**kwargs, "backbone_kwargs": options} if options else kwargs

    @property
    def start_weights(self) -> str | None:
        return self.backbone_weights

    def checks(self) -> list[tuple[bool, str]]:
        return [
            *super().checks(),
            (
                self.attach_init == "auto" or is_external(self.backbone),
                "attach_init applies to torchvision:/timm: backbones; a zoo backbone's attention keeps its own init "
                "(the paper's, trained with the classification run that gives --backbone-weights)",
            ),
            (self.iterations >= 0, f"iterations must be 0 (use epochs) or more, got {self.iterations}"),
            (all(0 < m < 1 for m in self.lr_milestones), f"lr_milestones are in (0, 1): {self.lr_milestones}"),
        ]


def detector_kwargs(config: DetectionConfig) -> dict[str, Any]:
    """The detector's options: the input scale's sizes, then the config's own."""
    sizes = SMALL_INPUT_KWARGS.get(config.detector, {}) if config.input_scale == "small" else {}
    return {**sizes, **config.detector_kwargs}


def is_single_shot(detector: str) -> bool:
    """SSD-style detectors take a fixed square input that the data pipeline resizes to; R-CNNs resize inside."""
    return detector.startswith(("ssd", "stairnet"))


def input_size(config: DetectionConfig) -> int:
    return int(detector_kwargs(config).get("size", SSD_SIZE))


def train_transforms(config: DetectionConfig):
    if is_single_shot(config.detector):
        return ssd_train_transforms(input_size(config), hflip=config.hflip)
    return rcnn_train_transforms(hflip=config.hflip)


def eval_transforms(config: DetectionConfig):
    return ssd_eval_transforms(input_size(config)) if is_single_shot(config.detector) else rcnn_eval_transforms()


def lr_factor(config: DetectionConfig, step: int, total_steps: int) -> float:
    """Multiplier of the learning rate at optimizer step `step`: linear warm-up, then steps down at milestones."""
    warmup = 1.0
    if step < config.warmup_iterations:
        warmup = 0.001 + (1 - 0.001) * step / config.warmup_iterations
    drops = sum(step >= math.ceil(m * total_steps) for m in config.lr_milestones)
    return warmup * config.lr_gamma**drops


def headline_of(metric: str) -> Headline:
    """The one number a run is judged by: COCO mAP@[.5:.95], or VOC mAP@.5."""
    return Headline("map", "mAP@[.5:.95]", True) if metric == "coco" else Headline("map50", "mAP@.5", True)


# ---------------------------------------------------------------------------------------------
# Detections and their scores


def _training_targets(targets: list[dict[str, Any]], device: torch.device) -> list[dict[str, Tensor]]:
    """Boxes and labels on `device`; `difficult` objects are left out of training, as VOC practice does."""
    out = []
    for target in targets:
        keep = ~target["difficult"]
        boxes = target["boxes"].as_subclass(Tensor)[keep].to(device).float()
        out.append({"boxes": boxes, "labels": target["labels"][keep].to(device)})
    return out


def to_original(outputs: list[dict[str, Tensor]], images: list[Tensor], targets: list[dict[str, Any]]):
    """Detections in the original images' pixels (the inputs may have been resized by the data pipeline)."""
    mapped = []
    for output, image, target in zip(outputs, images, targets, strict=True):
        boxes = boxes_to_original(output["boxes"].float(), tuple(image.shape[-2:]), tuple(target["orig_size"]))
        mapped.append(
            {"boxes": boxes.cpu(), "labels": output["labels"].cpu(), "scores": output["scores"].float().cpu()}
        )
    return mapped


def _gather(items: list[Any], dist: Distributed) -> list[Any]:
    if not dist.enabled:
        return items
    shards: list[list[Any] | None] = [None] * dist.world_size
    torch_dist.all_gather_object(shards, items)
    return [item for shard in shards for item in shard]


@torch.no_grad()
def collect_detections(
    model: nn.Module, loader: DataLoader, dist: Distributed, skips: SkipLog, amp: torch.dtype | None = None
) -> list[tuple[int, dict[str, Tensor]]]:
    """(image id, detections in original pixels) for every readable image of the loader, from all processes."""
    model.eval()
    found = []
    for images, targets, skipped in loader:
        skips.add(skipped)
        if not images:
            continue
        inputs = [image.to(dist.device, non_blocking=True) for image in images]
        with torch.autocast(dist.device.type, dtype=amp, enabled=amp is not None):
            outputs = model(inputs)
        for target, detection in zip(targets, to_original(outputs, images, targets), strict=True):
            found.append((int(target["image_id"]), detection))
    return _gather(found, dist)


def score(
    found: list[tuple[int, dict[str, Tensor]]], dataset: Any, metric: str, classes: list[str], category_ids: list[int]
) -> tuple[dict[str, Any], DetectionEvaluator]:
    """The metrics of `found` against the dataset's ground truth (its COCO file when there is one)."""
    from cbam.detection.evaluator import DetectionEvaluator

    if not found:
        raise DataError("no readable images to evaluate")
    index_of = {record.image_id: i for i, record in enumerate(dataset.records)}
    evaluator = DetectionEvaluator(classes, category_ids, dataset.annotation_file)
    image_ids = [image_id for image_id, _ in found]
    evaluator.update(image_ids, [d for _, d in found], [dataset.ground_truth(index_of[i]) for i in image_ids])
    return evaluator.compute(metric), evaluator


def collate(batch: list[Any]) -> tuple[list[Tensor], list[dict[str, Any]], list[Any]]:
    """Images and targets as lists (detection images differ in size), unreadable samples beside them."""
    from cbam.detection.data import collate_detection_skipping

    return collate_detection_skipping(batch)


# ---------------------------------------------------------------------------------------------
# The task


class DetectionTask(Task):
    """A detector trained on the sum of its losses; judged by mAP on the validation split."""

    name = "detection"
    config_class = DetectionConfig
    collate = staticmethod(collate)
    config: DetectionConfig

    def __init__(self, config: DetectionConfig, dist: Distributed) -> None:
        super().__init__(config, dist)
        self.headline = headline_of(config.metric)

    @classmethod
    def build_model(cls, config: DetectionConfig, num_classes: int, *, fresh: bool = True) -> nn.Module:
        """The detector for `num_classes` object classes (the background is added here); its backbone's
        pretrained weights are read only for a fresh network."""
        return create_detector(
            config.detector,
            backbone=config.backbone,
            attention=config.attention,
            num_classes=num_classes + 1,
            backbone_weights=config.backbone_weights if fresh else None,
            **({"attach_init": config.attention_init} if is_external(config.backbone) else {}),
            **detector_kwargs(config),
        )

    @classmethod
    def parameter_groups(cls, model: nn.Module, config: RunConfig) -> list[dict[str, Any]]:
        """Attention in a group of its own at `attention_lr_mult` (see `attention_param_groups`)."""
        return attention_param_groups(model, config.attention_lr_mult)

    def datasets(self) -> TaskData:
        from cbam.detection.data import open_detection_data

        config = self.config
        train_set = open_detection_data(config.data, config.train_split, train_transforms(config), config.seed)
        val_set = open_detection_data(config.data, config.val_split, eval_transforms(config), config.seed)
        if list(val_set.class_names) != list(train_set.class_names):
            raise DataError(f"{config.train_split} and {config.val_split} name different classes")
        return TaskData(train_set, val_set, list(train_set.class_names),
                        {"category_ids": list(train_set.category_ids)})  # fmt: skip

    def train_step(
        self, model: nn.Module, inputs: list[Tensor], targets: list[dict]
    ) -> tuple[Tensor, dict[str, Tensor]]:
        images = [image.to(self.device, non_blocking=True) for image in inputs]
        losses = model(images, _training_targets(targets, self.device))
        return sum(losses.values()), losses

    def evaluate(self, model: nn.Module, loader: DataLoader, data: TaskData, skips: SkipLog) -> dict[str, float]:
        found = collect_detections(model, loader, self.dist, skips, self.amp)
        metrics, _ = score(found, data.val_set, self.config.metric, data.classes, data.metadata["category_ids"])
        return {key: value for key, value in metrics.items() if isinstance(value, float)}

    def lr_factor(self, step: int, steps_per_epoch: int, total_steps: int) -> float:
        return lr_factor(self.config, step, total_steps)

    def total_steps(self, steps_per_epoch: int) -> int:
        return self.config.iterations or self.config.epochs * steps_per_epoch

    def describe(self, params: int, gflops: float | None) -> str:
        config = self.config
        start = ""
        if config.backbone_weights:
            attached = config.attention != "none" and is_external(config.backbone)
            init = f"; attention the weights lack starts {config.attention_start_words()}" if attached else ""
            start = f" (backbone from weights {config.backbone_weights}{init})"
        return (f"{config.detector} on {config.backbone} attention={json.dumps(config.attention)}{start}: "
                f"{params:,} params")  # fmt: skip

    def epoch_summary(self, metrics: dict[str, float]) -> str:
        return f"{self.headline.label} {100 * metrics[self.headline.metric]:.2f}"


def recorded_backbone_options(path: str | Path, backbone: str) -> dict[str, Any]:
    """The builder options the backbone file at `path` records, `{}` where it records none or cannot be read
    (building the detector then says what is wrong with it)."""
    if not Path(path).is_file():
        return {}
    try:
        return recorded_options(read_network_weights(path, backbone, "backbone "))
    except CheckpointError:
        return {}
