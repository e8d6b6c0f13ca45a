"""Training, evaluation and inference of detectors, on one process or many (`torchrun`).

The classification engine's conventions carry over: each process takes its share of every global batch,
only rank 0 writes, checkpoints are atomic and hold everything needed to resume exactly (weights, optimizer,
schedule, scaler, RNG, history) at an epoch's end, unreadable images are skipped and counted, and a loss
that stops being finite ends the run with the last checkpoint kept.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as torch_dist
import yaml
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler
from torchvision import tv_tensors

from cbam.data.loading import DataError, ShardSampler
from cbam.detection.config import DetectConfig, detect_config_from_dict
from cbam.detection.data import collate_detection_skipping, open_detection_data
from cbam.detection.metrics import DetectionEvaluator
from cbam.detection.registry import create_detector
from cbam.detection.transforms import (
    SSD_SIZE,
    boxes_to_original,
    rcnn_eval_transforms,
    rcnn_train_transforms,
    ssd_eval_transforms,
    ssd_train_transforms,
)
from cbam.engine.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from cbam.engine.config import resumed_config
from cbam.engine.distributed import Distributed, all_reduce_sum, init_distributed, uneven_steps
from cbam.engine.run_folder import BEST, CONFIG_FILE, LAST, SUMMARY_FILE, claimed_run_folder
from cbam.engine.train import (
    MIN_TRAIN_BATCH,
    SkipLog,
    TrainingError,
    _autocast,
    _progress,
    _write_metrics,
    merged_batches,
    restore_training_state,
    training_state,
)
from cbam.errors import ConfigError
from cbam.outputs import atomic_write

log = logging.getLogger(__name__)

CHECKPOINT_FORMAT = "cbam.detection-checkpoint/1"
# What a resumed run may change; everything else comes from the checkpoint's config.
RESUME_OVERRIDABLE: tuple[str, ...] = ("epochs", "iterations", "workers", "output", "device")


# ---------------------------------------------------------------------------------------------
# Building blocks


def is_single_shot(detector: str) -> bool:
    """SSD-style detectors take a fixed square input that the data pipeline resizes to; R-CNNs resize inside."""
    return detector.startswith(("ssd", "stairnet"))


def input_size(config: DetectConfig) -> int:
    return int(config.detector_kwargs.get("size", SSD_SIZE))


def train_transforms(config: DetectConfig):
    if is_single_shot(config.detector):
        return ssd_train_transforms(input_size(config), hflip=config.hflip)
    return rcnn_train_transforms(hflip=config.hflip)


def eval_transforms(config: DetectConfig):
    return ssd_eval_transforms(input_size(config)) if is_single_shot(config.detector) else rcnn_eval_transforms()


def build_detector(config: DetectConfig, num_classes: int, *, with_backbone_weights: bool = True) -> nn.Module:
    """The detector of `config` for `num_classes` object classes (the background is added here)."""
    weights = config.backbone_weights if with_backbone_weights else None
    return create_detector(
        config.detector,
        backbone=config.backbone,
        attention=config.attention,
        num_classes=num_classes + 1,
        backbone_weights=weights,
        **config.detector_kwargs,
    )


def lr_factor(config: DetectConfig, step: int, total_steps: int) -> float:
    """Multiplier of the learning rate at optimizer step `step`: linear warm-up, then steps down at milestones."""
    warmup = 1.0
    if step < config.warmup_iterations:
        warmup = 0.001 + (1 - 0.001) * step / config.warmup_iterations
    drops = sum(step >= math.ceil(m * total_steps) for m in config.lr_milestones)
    return warmup * config.lr_gamma**drops


def build_optimizer(model: nn.Module, config: DetectConfig) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    if config.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    return torch.optim.SGD(params, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)


def amp_dtype(config: DetectConfig, device: torch.device) -> torch.dtype | None:
    """None without AMP; bf16 on the CPU, fp16 on CUDA."""
    if not config.amp:
        return None
    return torch.bfloat16 if device.type == "cpu" else torch.float16


def _training_targets(targets: list[dict[str, Any]], device: torch.device) -> list[dict[str, Tensor]]:
    """Boxes and labels on `device`; `difficult` objects are left out of training, as VOC practice does."""
    out = []
    for target in targets:
        keep = ~target["difficult"]
        out.append(
            {
                "boxes": target["boxes"].as_subclass(Tensor)[keep].to(device).float(),
                "labels": target["labels"][keep].to(device),
            }
        )
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


# ---------------------------------------------------------------------------------------------
# Data


@dataclass
class DetectionData:
    """Both splits, sharded over processes."""

    train_set: Any
    val_set: Any
    classes: list[str]
    category_ids: list[int]
    train_sampler: DistributedSampler
    train_loader: DataLoader
    val_loader: DataLoader


def _loader(dataset: Any, sampler: Any, batch_size: int, workers: int, drop_last: bool) -> DataLoader:
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=workers,
        collate_fn=collate_detection_skipping,
        drop_last=drop_last,
        pin_memory=torch.cuda.is_available(),
    )


def eval_loader(dataset: Any, batch_size: int, workers: int, dist: Distributed) -> DataLoader:
    """Every image of `dataset` once over all processes (a DistributedSampler would repeat some)."""
    return _loader(dataset, ShardSampler(len(dataset), dist.rank, dist.world_size), batch_size, workers, False)


def open_data(config: DetectConfig, dist: Distributed) -> DetectionData:
    if config.batch_size % dist.world_size:
        raise ConfigError(f"batch_size {config.batch_size} must divide evenly over {dist.world_size} processes")
    train_set = open_detection_data(config.data, config.train_split, train_transforms(config), config.seed)
    val_set = open_detection_data(config.data, config.val_split, eval_transforms(config), config.seed)
    if list(val_set.class_names) != list(train_set.class_names):
        raise DataError(f"{config.train_split} and {config.val_split} name different classes")
    per_process = config.batch_size // dist.world_size
    sampler = DistributedSampler(
        train_set, num_replicas=dist.world_size, rank=dist.rank, shuffle=True, seed=config.seed, drop_last=True
    )
    if len(sampler) < per_process:
        raise DataError(f"{len(train_set)} training images are fewer than one batch of {config.batch_size}")
    return DetectionData(
        train_set,
        val_set,
        list(train_set.class_names),
        list(train_set.category_ids),
        sampler,
        _loader(train_set, sampler, per_process, config.workers, drop_last=True),
        eval_loader(val_set, per_process, config.workers, dist),
    )


# ---------------------------------------------------------------------------------------------
# One epoch, one evaluation


def train_one_epoch(
    model: nn.Module,
    loader: DataLoader,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LambdaLR,
    scaler: torch.amp.GradScaler,
    config: DetectConfig,
    dist: Distributed,
    skips: SkipLog,
    steps_left: int,
    desc: str = "train",
) -> dict[str, float]:
    """Up to `steps_left` optimizer steps over the training data; returns mean losses and images/s."""
    model.train()
    totals: dict[str, float] = {}
    steps, images_seen = 0, 0
    start = time.perf_counter()
    progress = _progress(min(len(loader), steps_left) * config.batch_size, desc, dist.is_main)
    min_size = min(MIN_TRAIN_BATCH, loader.batch_size or 1)
    batches = merged_batches(loader, skips, min_size, len, lambda a, b: [*a, *b])
    with uneven_steps(model):
        for images, targets in batches:
            if steps >= steps_left:
                break
            images = [image.to(dist.device, non_blocking=True) for image in images]
            with _autocast(dist.device, amp_dtype(config, dist.device)):
                losses = model(images, _training_targets(targets, dist.device))
            loss = sum(losses.values())
            if not torch.isfinite(loss.detach()).item():
                parts = ", ".join(f"{k} {v.item():.4g}" for k, v in losses.items())
                raise TrainingError(f"the loss became {loss.item()} ({parts}); stopping, the last checkpoint is kept")
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
            steps += 1
            images_seen += len(images)
            for key, value in {"loss": loss, **losses}.items():
                totals[key] = totals.get(key, 0.0) + value.item()
            progress.update(len(images) * dist.world_size)
            progress.set_postfix(loss=f"{loss.item():.3f}")
    progress.close()
    elapsed = time.perf_counter() - start
    summed = all_reduce_sum(
        torch.tensor([*totals.values(), steps, images_seen], dtype=torch.float64, device=dist.device)
    )
    summed = summed.cpu().tolist()
    total_steps, total_images = summed[-2], summed[-1]
    stats = {f"train_{key}": value / max(total_steps, 1) for key, value in zip(totals, summed, strict=False)}
    stats.update(
        {"steps": int(total_steps / dist.world_size), "images_per_second": total_images / elapsed if elapsed else 0.0}
    )
    stats["train_seconds"] = elapsed
    return stats


def _gather(items: list[Any], dist: Distributed) -> list[Any]:
    if not dist.enabled:
        return items
    shards: list[list[Any] | None] = [None] * dist.world_size
    torch_dist.all_gather_object(shards, items)
    return [item for shard in shards for item in shard]


@torch.no_grad()
def collect_detections(
    model: nn.Module, loader: DataLoader, config: DetectConfig, dist: Distributed, skips: SkipLog
) -> list[tuple[int, dict[str, Tensor]]]:
    """(image id, detections in original pixels) for every readable image of the loader, from all processes."""
    model.eval()
    found = []
    for images, targets, skipped in loader:
        skips.add(skipped)
        if not images:
            continue
        inputs = [image.to(dist.device, non_blocking=True) for image in images]
        with _autocast(dist.device, amp_dtype(config, dist.device)):
            outputs = model(inputs)
        for target, detection in zip(targets, to_original(outputs, images, targets), strict=True):
            found.append((int(target["image_id"]), detection))
    return _gather(found, dist)


def score(
    found: list[tuple[int, dict[str, Tensor]]], dataset: Any, metric: str, classes: list[str], category_ids: list[int]
) -> tuple[dict[str, Any], DetectionEvaluator]:
    """The metrics of `found` against the dataset's ground truth (its COCO file when there is one)."""
    if not found:
        raise DataError("no readable images to evaluate")
    index_of = {record.image_id: i for i, record in enumerate(dataset.records)}
    evaluator = DetectionEvaluator(classes, category_ids, dataset.annotation_file)
    image_ids = [image_id for image_id, _ in found]
    evaluator.update(image_ids, [d for _, d in found], [dataset.ground_truth(index_of[i]) for i in image_ids])
    return evaluator.compute(metric), evaluator


def headline(metrics: dict[str, Any], metric: str) -> float:
    """The one number a run is judged by: COCO mAP@[.5:.95], or VOC mAP@.5."""
    return float(metrics["map"] if metric == "coco" else metrics["map50"])


# ---------------------------------------------------------------------------------------------
# The run


@dataclass(frozen=True)
class DetectRunResult:
    """What a finished run reports and writes to `summary.json`."""

    output: str
    epochs: int
    final: dict[str, Any]
    best_map: float
    best_epoch: int
    params: int
    wall_seconds: float
    history: list[dict[str, Any]]

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def resume_detect_config(checkpoint: Path, **requested: Any) -> DetectConfig:
    """The config saved in `checkpoint`, with what a resumed run asks for: values equal to the saved ones are
    accepted, real changes only to `RESUME_OVERRIDABLE`."""
    saved = detect_config_from_dict(read_detection_checkpoint(checkpoint)["config"])
    return resumed_config(saved, {k: v for k, v in requested.items() if v is not None}, RESUME_OVERRIDABLE)


def read_detection_checkpoint(path: Path) -> dict[str, Any]:
    """A checkpoint of `cbam detect train` (weights only, never code); another kind of file is a clear error."""
    state = load_checkpoint(Path(path))
    if state.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path} is not a detection checkpoint of `cbam detect train`")
    return state


def fit_detector(config: DetectConfig, resume: Path | None = None, *, exist_ok: bool = False) -> DetectRunResult:
    """Train `config` to the end, checkpointing every epoch; continue from `resume` if given (exactly: the
    resumed run ends with the weights an uninterrupted one would have). A folder that already holds a run is
    refused unless resuming, or `exist_ok` (which replaces it)."""
    dist = init_distributed(config.device)
    with torch.device("meta"):  # a bad detector, backbone or option is refused before any data is read
        build_detector(config, 2, with_backbone_weights=False)
    state = read_detection_checkpoint(resume) if resume is not None else None
    with claimed_run_folder(Path(config.output), resume=state is not None, exist_ok=exist_ok, main=dist.is_main):
        return _train_detector(config, state, dist)


def _train_detector(config: DetectConfig, state: dict[str, Any] | None, dist: Distributed) -> DetectRunResult:
    output = Path(config.output)
    torch.manual_seed(config.seed)
    data = open_data(config, dist)
    if state is not None and state.get("classes") != data.classes:
        raise CheckpointError(
            f"the checkpoint was trained on {len(state.get('classes') or [])} classes "
            f"({', '.join(state.get('classes') or [])}); the data has {len(data.classes)}"
        )
    model = build_detector(config, len(data.classes), with_backbone_weights=state is None).to(dist.device)
    steps_per_epoch = len(data.train_loader)
    total_steps = config.iterations or config.epochs * steps_per_epoch
    epochs = math.ceil(total_steps / steps_per_epoch)
    optimizer = build_optimizer(model, config)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(config, step, total_steps))
    scaler = torch.amp.GradScaler(dist.device.type, enabled=config.amp and dist.device.type == "cuda")
    history: list[dict[str, Any]] = []
    best_map, best_epoch, start_epoch = -1.0, 0, 0
    if state is not None:
        restore_training_state(state, model, optimizer, scheduler, scaler)
        history = list(state["history"])
        best_map, best_epoch, start_epoch = state["best_map"], state["best_epoch"], state["epoch"]
    raw_model = model
    if dist.enabled:
        model = DistributedDataParallel(model, device_ids=[dist.device.index] if dist.device.type == "cuda" else None)
    params = sum(p.numel() for p in raw_model.parameters())
    if dist.is_main:
        log.info(
            "%s on %s attention=%s: %s params; %d train / %d val images, %d classes; %d steps of %d; "
            "%d process(es) on %s; recipe: %s",
            config.detector, config.backbone, json.dumps(config.attention), f"{params:,}", len(data.train_set),
            len(data.val_set), len(data.classes), total_steps, config.batch_size, dist.world_size, dist.device,
            config.recipe or "the defaults",
        )  # fmt: skip
    skips = SkipLog()
    for epoch in range(start_epoch, epochs):
        epoch_start = time.perf_counter()
        data.train_sampler.set_epoch(epoch)
        data.train_set.set_epoch(epoch)
        desc = f"epoch {epoch + 1}/{epochs}"
        steps_left = total_steps - epoch * steps_per_epoch
        stats = train_one_epoch(
            model, data.train_loader, optimizer, scheduler, scaler, config, dist, skips, steps_left, desc
        )
        lr = optimizer.param_groups[0]["lr"]  # where the epoch's steps left it
        found = collect_detections(raw_model, data.val_loader, config, dist, skips)
        metrics, _ = score(found, data.val_set, config.metric, data.classes, data.category_ids)
        value = headline(metrics, config.metric)
        skipped, dropped = all_reduce_sum(torch.tensor([float(skips.count), float(skips.dropped)], device=dist.device))
        row = {
            "epoch": epoch + 1,
            "lr": lr,
            **stats,
            **{f"val_{k}": v for k, v in metrics.items() if isinstance(v, float)},
            "skipped_images": int(skipped.item()),
            "dropped_images": int(dropped.item()),
            "epoch_seconds": time.perf_counter() - epoch_start,
        }
        history.append(row)
        if value > best_map:
            best_map, best_epoch = value, epoch + 1
        if dist.is_main:
            name = "mAP@[.5:.95]" if config.metric == "coco" else "mAP@.5"
            log.info(
                "%s  lr %.4g  train loss %.4f  val %s %.2f  %.1f img/s",
                desc, lr, stats.get("train_loss", float("nan")), name, 100 * value, stats["images_per_second"],
            )  # fmt: skip
            checkpoint = {
                "format": CHECKPOINT_FORMAT,
                "config": config.to_dict(),
                "classes": data.classes,
                "category_ids": data.category_ids,
                "epoch": epoch + 1,
                **training_state(raw_model, optimizer, scheduler, scaler),
                "history": history,
                "best_map": best_map,
                "best_epoch": best_epoch,
            }
            save_checkpoint(output / LAST, checkpoint)
            if best_epoch == epoch + 1:
                save_checkpoint(output / BEST, checkpoint)
            _write_metrics(output, history)
            config_text = yaml.safe_dump(config.to_dict(), sort_keys=False)
            atomic_write(output / CONFIG_FILE, lambda tmp, text=config_text: tmp.write_text(text))
    run = DetectRunResult(
        output=str(output),
        epochs=epochs,
        final=history[-1] if history else {},
        best_map=best_map,
        best_epoch=best_epoch,
        params=params,
        wall_seconds=sum(r["epoch_seconds"] for r in history),
        history=history,
    )
    if dist.is_main:
        atomic_write(output / SUMMARY_FILE, lambda tmp: tmp.write_text(json.dumps(run.to_dict(), indent=2)))
    return run


# ---------------------------------------------------------------------------------------------
# A trained detector


@dataclass
class LoadedDetector:
    """A checkpoint's detector in eval mode, with what it was trained on."""

    model: nn.Module
    config: DetectConfig
    classes: list[str]
    category_ids: list[int]
    epoch: int


def load_detector(path: Path, device: torch.device | str = "cpu") -> LoadedDetector:
    """The detector saved by `cbam detect train` (its backbone file is not needed: the weights are all here)."""
    state = read_detection_checkpoint(Path(path))
    config = detect_config_from_dict(state["config"])
    classes = list(state["classes"])
    model = build_detector(config, len(classes), with_backbone_weights=False)
    model.load_state_dict(state["model"])
    return LoadedDetector(model.to(device).eval(), config, classes, list(state["category_ids"]), state["epoch"])


@torch.no_grad()
def detect(loaded: LoadedDetector, images: list[Tensor], device: torch.device | str = "cpu") -> list[dict[str, Tensor]]:
    """Detections for uint8 or [0, 1] float (3, H, W) images, in each image's own pixels."""
    transform = eval_transforms(loaded.config)
    inputs, targets = [], []
    for image in images:
        prepared = transform(tv_tensors.Image(image))
        inputs.append(prepared.as_subclass(Tensor).to(device))
        targets.append({"orig_size": tuple(image.shape[-2:])})
    outputs = loaded.model(inputs)
    return to_original(outputs, inputs, targets)
