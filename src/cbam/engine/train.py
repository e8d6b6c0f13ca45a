"""Training and evaluation: one `train_one_epoch`, one `evaluate`, one `fit` that ties them together.

The same code runs on one process or many (`torchrun`): each process takes its share of every
global batch, gradients are averaged by DistributedDataParallel, metrics are summed over
processes, and only rank 0 writes files.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import logging
import math
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset, DistributedSampler
from tqdm import tqdm

from cbam.data.loading import (
    AugmentedDataset,
    DataError,
    ShardSampler,
    Skipped,
    class_names,
    collate_skipping,
    open_split,
)
from cbam.data.transforms import eval_transform, train_transform
from cbam.engine.checkpoint import CheckpointError, load_checkpoint, save_checkpoint, save_safetensors
from cbam.engine.config import DATASET_RECIPES, TrainConfig, config_from_dict, resumed_config
from cbam.engine.distributed import Distributed, all_reduce_sum, init_distributed, uneven_steps
from cbam.engine.metrics import error_percent, topk_correct
from cbam.engine.run_folder import BEST, CONFIG_FILE, LAST, METRICS_FILE, SUMMARY_FILE, claimed_run_folder
from cbam.errors import ConfigError, TrainingError
from cbam.outputs import atomic_write
from cbam.profile import measure_arch
from cbam.registry import create_model

log = logging.getLogger(__name__)

CHECKPOINT_FORMAT = "cbam.checkpoint/1"
# What a resumed run may change; everything else comes from the checkpoint's config.
RESUME_OVERRIDABLE: tuple[str, ...] = ("epochs", "workers", "output", "compile", "device", "download")
# A training batch smaller than this (after unreadable images were skipped) is merged into the next one:
# BatchNorm in training mode cannot normalise a single image whose maps are 1 x 1.
MIN_TRAIN_BATCH = 2


@dataclass(frozen=True)
class EvalResult:
    """The paper's metrics over a whole split."""

    loss: float
    top1_error: float
    top5_error: float
    images: int
    skipped: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "top1_error": self.top1_error,
            "top5_error": self.top5_error,
            "loss": self.loss,
            "images": self.images,
            "skipped": self.skipped,
        }


# ---------------------------------------------------------------------------------------------
# Building blocks


def build_model(config: TrainConfig, num_classes: int) -> nn.Module:
    return create_model(config.arch, attention=config.attention, num_classes=num_classes, **config.model_kwargs)


def check_model(config: TrainConfig) -> None:
    """Build the network on the meta device (no memory, no time), so a bad name or option is refused before
    any data is opened."""
    with torch.device("meta"):
        build_model(config, 2)


def lr_factor(config: TrainConfig, epoch: int) -> float:
    """Multiplier of the scaled learning rate in `epoch`: linear warm-up, then step or cosine decay."""
    if epoch < config.warmup_epochs:
        return (epoch + 1) / (config.warmup_epochs + 1)
    if config.lr_schedule == "cosine":
        progress = (epoch - config.warmup_epochs) / max(1, config.epochs - config.warmup_epochs)
        return 0.5 * (1 + math.cos(math.pi * progress))
    return config.lr_gamma ** (epoch // config.lr_step)


def build_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    """SGD with momentum (the paper's), or AdamW for short runs on small data."""
    if config.optimizer == "adamw":
        return torch.optim.AdamW(model.parameters(), lr=config.scaled_lr, weight_decay=config.weight_decay)
    return torch.optim.SGD(
        model.parameters(), lr=config.scaled_lr, momentum=config.momentum, weight_decay=config.weight_decay
    )


def build_scheduler(optimizer: torch.optim.Optimizer, config: TrainConfig) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda epoch: lr_factor(config, epoch))


def autocast_dtype(config: TrainConfig, device: torch.device) -> torch.dtype | None:
    """None without AMP; bf16 on the CPU; fp16 on CUDA unless bf16 is asked for."""
    if not config.amp:
        return None
    if config.amp_dtype == "float16" and device.type == "cpu":
        raise ConfigError("amp_dtype float16 is for CUDA; use bfloat16 (or auto) on the CPU")
    if config.amp_dtype == "auto":
        return torch.bfloat16 if device.type == "cpu" else torch.float16
    return getattr(torch, config.amp_dtype)


def _autocast(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def _loader(dataset: Dataset, sampler: Any, batch_size: int, config: TrainConfig, drop_last: bool) -> DataLoader:
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=config.workers,
        collate_fn=collate_skipping,
        pin_memory=torch.cuda.is_available(),
        drop_last=drop_last,
    )


class SkipLog:
    """Logs each unreadable file once (with its path and why), counts every skip, and counts the readable
    images dropped because skipping left their batch too small to train on."""

    def __init__(self) -> None:
        self.seen: set[str] = set()
        self.count = 0
        self.dropped = 0

    def add(self, skipped: Iterable[Skipped]) -> None:
        for item in skipped:
            self.count += 1
            if item.path not in self.seen:
                self.seen.add(item.path)
                log.warning("skipping unreadable image %s (%s)", item.path, item.reason)


def merged_batches(
    batches: Iterable[tuple[Any, Any, list[Skipped]]],
    skips: SkipLog,
    min_size: int,
    size: Callable[[Any], int],
    join: Callable[[Any, Any], Any],
) -> Iterator[tuple[Any, Any]]:
    """(inputs, targets) of the loader's readable samples, in batches of at least `min_size`: a batch that
    skipping left smaller is merged into the next; one left over at the end is dropped and counted."""
    held: tuple[Any, Any] | None = None
    for inputs, targets, skipped in batches:
        skips.add(skipped)
        if size(inputs) == 0:
            continue
        if held is not None:
            inputs, targets = join(held[0], inputs), join(held[1], targets)
            held = None
        if size(inputs) < min_size:
            held = (inputs, targets)
            continue
        yield inputs, targets
    if held is not None:
        skips.dropped += size(held[0])
        log.warning("dropped %d image(s) at the end of the epoch: too few readable ones for a batch", size(held[0]))


def _device_batches(
    loader: DataLoader, device: torch.device, channels_last: bool, skips: SkipLog, min_size: int = 1
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """The loader's readable batches on `device`, each of at least `min_size` images; unreadable samples go to
    `skips`."""
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    for images, targets in merged_batches(loader, skips, min_size, len, lambda a, b: torch.cat([a, b])):
        yield (
            images.to(device, non_blocking=True).contiguous(memory_format=memory_format),
            targets.to(device, non_blocking=True),
        )


def _progress(total: int, desc: str, enabled: bool) -> tqdm:
    return tqdm(total=total, desc=desc, unit="img", disable=not enabled or not sys.stderr.isatty(), leave=False)


# ---------------------------------------------------------------------------------------------
# One epoch, one evaluation


def train_one_epoch(
    model: nn.Module,
    loader: DataLoader,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    criterion: nn.Module,
    dist: Distributed,
    amp: torch.dtype | None,
    channels_last: bool,
    skips: SkipLog,
    desc: str = "train",
    freeze_bn_stats: bool = False,
) -> dict[str, float]:
    """One pass over the training data; returns summed-over-processes loss, top-1 error, images/s.

    `freeze_bn_stats` keeps BatchNorm in inference mode (running statistics, not updated), as
    fine-tuning with small per-process batches does; its scale and shift still learn.
    """
    model.train()
    if freeze_bn_stats:
        for module in model.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.eval()
    totals = torch.zeros(3, dtype=torch.float64)  # loss * n, correct top-1, n
    start = time.perf_counter()
    progress = _progress(len(loader.sampler) * dist.world_size, desc, dist.is_main)
    batches = _device_batches(loader, dist.device, channels_last, skips, min(MIN_TRAIN_BATCH, loader.batch_size or 1))
    with uneven_steps(model):
        for step, (images, targets) in enumerate(batches):
            with _autocast(dist.device, amp):
                logits = model(images)
                loss = criterion(logits, targets)
            if not torch.isfinite(loss.detach()).item():
                raise TrainingError(
                    f"the loss became {loss.item()} at step {step}; stopping, the last checkpoint is kept"
                )
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            n = targets.shape[0]
            correct = topk_correct(logits.detach().float(), targets, (1,))[0].item()
            totals += torch.tensor([loss.item() * n, correct, n])
            progress.update(n * dist.world_size)
            progress.set_postfix(loss=f"{loss.item():.3f}")
    progress.close()
    elapsed = time.perf_counter() - start
    totals = all_reduce_sum(totals.to(dist.device)).cpu()
    images_seen = totals[2].item()
    return {
        "train_loss": totals[0].item() / max(images_seen, 1),
        "train_top1_error": error_percent(totals[1].item(), images_seen) if images_seen else float("nan"),
        "images_per_second": images_seen / elapsed if elapsed > 0 else 0.0,
        "train_seconds": elapsed,
    }


@torch.no_grad()
def evaluate(
    model: nn.Module,
    loader: DataLoader,
    dist: Distributed,
    amp: torch.dtype | None = None,
    channels_last: bool = False,
    skips: SkipLog | None = None,
) -> EvalResult:
    """Loss, top-1 and top-5 error (%) over every image of the loader, summed over processes."""
    model.eval()
    skips = skips if skips is not None else SkipLog()
    skipped_before = skips.count
    criterion = nn.CrossEntropyLoss(reduction="sum")
    totals = torch.zeros(5, dtype=torch.float64)  # loss sum, top-1, top-5, n, skipped
    for images, targets in _device_batches(loader, dist.device, channels_last, skips):
        with _autocast(dist.device, amp):
            logits = model(images)
        logits = logits.float()
        correct = topk_correct(logits, targets, (1, 5)).double().cpu()
        totals += torch.tensor([criterion(logits, targets).item(), correct[0], correct[1], targets.shape[0], 0.0])
    totals[4] = skips.count - skipped_before
    totals = all_reduce_sum(totals.to(dist.device)).cpu()
    n = int(totals[3].item())
    if n == 0:
        raise DataError("no readable images to evaluate")
    return EvalResult(
        loss=totals[0].item() / n,
        top1_error=error_percent(totals[1].item(), n),
        top5_error=error_percent(totals[2].item(), n),
        images=n,
        skipped=int(totals[4].item()),
    )


# ---------------------------------------------------------------------------------------------
# The run


def _rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def training_state(
    model: nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any, scaler: torch.amp.GradScaler
) -> dict[str, Any]:
    """What a checkpoint needs, beyond config and history, to resume exactly: weights, optimizer, schedule,
    loss scaler and RNG."""
    return {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "scaler": scaler.state_dict(),
        "rng": _rng_state(),
    }


def restore_training_state(
    state: dict[str, Any], model: nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any,
    scaler: torch.amp.GradScaler,
) -> None:  # fmt: skip
    """Put back what `training_state` saved."""
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    scaler.load_state_dict(state["scaler"])
    _set_rng_state(state["rng"])


def _write_metrics(output: Path, history: list[dict[str, Any]]) -> None:
    if not history:
        return
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(history[0]))
    writer.writeheader()
    writer.writerows(history)
    atomic_write(output / METRICS_FILE, lambda tmp: tmp.write_text(buffer.getvalue()))


def _tensorboard(output: Path) -> Any | None:
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter(str(output / "tensorboard"))


def resolve_resume(resume: str | None, output: Path) -> Path | None:
    """`--resume` with no value (or `last`) means the last checkpoint in the output folder."""
    if resume is None:
        return None
    path = output / LAST if resume in ("", "last") else Path(resume)
    if not path.is_file():
        raise CheckpointError(f"nothing to resume: {path} does not exist")
    return path


def resume_config(checkpoint: Path, **requested: Any) -> TrainConfig:
    """The config saved in `checkpoint`, with what a resumed run asks for: values equal to the saved ones are
    accepted (the command that started the run can be repeated), real changes only to `RESUME_OVERRIDABLE`."""
    saved = config_from_dict(load_checkpoint(checkpoint)["config"])
    return resumed_config(saved, {k: v for k, v in requested.items() if v is not None}, RESUME_OVERRIDABLE)


@dataclass(frozen=True)
class RunResult:
    """What a finished run reports and writes to `summary.json`."""

    output: str
    epochs: int
    final: dict[str, Any]
    best_top1_error: float
    best_epoch: int
    params: int
    gflops: float
    wall_seconds: float
    images_per_second: float
    history: list[dict[str, Any]]

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class _Data:
    train_set: AugmentedDataset
    val_set: AugmentedDataset
    classes: list[str]
    train_sampler: DistributedSampler
    train_loader: DataLoader
    val_loader: DataLoader


def _open_data(config: TrainConfig, dist: Distributed) -> _Data:
    """Both splits, augmented and sharded over processes; each process loads batch_size / world_size."""
    if config.batch_size % dist.world_size:
        raise ConfigError(f"batch_size {config.batch_size} must divide evenly over {dist.world_size} processes")
    train_base = open_split(config.data, "train", download=config.download)
    val_base = open_split(config.data, "val", download=config.download)
    classes = class_names(train_base)
    if class_names(val_base) != classes:
        raise DataError(f"train and val name different classes: {classes} vs {class_names(val_base)}")
    augment = train_transform(config.image_size, config.crop_scale, config.hflip)
    train_set = AugmentedDataset(train_base, augment, config.seed)
    val_set = AugmentedDataset(val_base, eval_transform(config.image_size, config.eval_resize), config.seed)
    per_process = config.batch_size // dist.world_size
    sampler = DistributedSampler(
        train_set, num_replicas=dist.world_size, rank=dist.rank, shuffle=True, seed=config.seed, drop_last=True
    )
    if len(sampler) < per_process:
        raise DataError(f"{len(train_set)} training images are fewer than one batch of {config.batch_size}")
    val_sampler = ShardSampler(len(val_set), dist.rank, dist.world_size)
    return _Data(
        train_set,
        val_set,
        classes,
        sampler,
        _loader(train_set, sampler, per_process, config, drop_last=True),
        _loader(val_set, val_sampler, per_process, config, drop_last=False),
    )


def _save_epoch(output: Path, checkpoint: dict[str, Any], model: nn.Module, is_best: bool) -> None:
    """last.pt and last.safetensors (and best.* when this epoch is the best), then metrics.csv and
    config.yaml (a folder holds a run from its first checkpoint on, never before)."""
    config = checkpoint["config"]
    metadata = {
        "arch": config["arch"],
        "attention": config["attention"],
        "model_kwargs": config["model_kwargs"],
        "classes": checkpoint["classes"],
        "epoch": checkpoint["epoch"],
        "image_size": config["image_size"],
        "eval_resize": config["eval_resize"],
        "data": config["data"],
    }
    for name, wanted in ((LAST, True), (BEST, is_best)):
        if wanted:
            save_checkpoint(output / name, checkpoint)
            save_safetensors(output / name.replace(".pt", ".safetensors"), model, metadata)
    _write_metrics(output, checkpoint["history"])
    text = yaml.safe_dump(config, sort_keys=False)
    atomic_write(output / CONFIG_FILE, lambda tmp: tmp.write_text(text))


def _recipe_line(config: TrainConfig) -> str:
    if not config.recipe:
        return "recipe: the paper's ImageNet recipe"
    own = DATASET_RECIPES.get(config.data) == config.recipe
    return f"recipe: {config.recipe}" + (" (the dataset's own; --recipe imagenet for the paper's)" if own else "")


def fit(config: TrainConfig, resume: Path | None = None, *, exist_ok: bool = False) -> RunResult:
    """Train `config` to the end, checkpointing every epoch; continue from `resume` if given.

    A resumed run restores weights, optimizer, schedule, scaler, RNG and history, so it ends
    with the same weights as an uninterrupted one (build its config with `resume_config`). A folder
    that already holds a run is refused unless resuming, or `exist_ok` (which replaces it).
    """
    dist = init_distributed(config.device)
    check_model(config)
    state = load_checkpoint(resume) if resume is not None else None
    with claimed_run_folder(Path(config.output), resume=state is not None, exist_ok=exist_ok, main=dist.is_main):
        return _train(config, state, dist)


def _train(config: TrainConfig, state: dict[str, Any] | None, dist: Distributed) -> RunResult:
    output = Path(config.output)
    torch.manual_seed(config.seed)
    data = _open_data(config, dist)
    classes = data.classes

    model = build_model(config, len(classes)).to(dist.device)
    if config.channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = build_optimizer(model, config)
    scheduler = build_scheduler(optimizer, config)
    amp = autocast_dtype(config, dist.device)
    scaler = torch.amp.GradScaler(dist.device.type, enabled=amp == torch.float16)
    history: list[dict[str, Any]] = []
    best_error, best_epoch, start_epoch = float("inf"), 0, 0
    if state is not None:
        if state.get("classes") != classes:
            raise CheckpointError(
                f"the checkpoint was trained on {len(state.get('classes') or [])} classes, the data has {len(classes)}"
            )
        restore_training_state(state, model, optimizer, scheduler, scaler)
        history = list(state["history"])
        best_error, best_epoch, start_epoch = state["best_top1_error"], state["best_epoch"], state["epoch"]

    if config.sync_bn and dist.enabled:
        if dist.device.type != "cuda":
            raise ConfigError(
                "sync_bn needs CUDA (SyncBatchNorm is GPU-only); on the CPU each process normalises its share"
            )
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    raw_model = model
    if dist.enabled:
        model = DistributedDataParallel(model, device_ids=[dist.device.index] if dist.device.type == "cuda" else None)
    if config.compile:
        model = torch.compile(model)
    criterion = nn.CrossEntropyLoss(label_smoothing=config.label_smoothing)
    size = (3, config.image_size, config.image_size)
    complexity = measure_arch(
        config.arch, config.attention, input_size=size, num_classes=len(classes), **config.model_kwargs
    )
    if dist.is_main:
        log.info(
            "%s attention=%s: %s params, %.3f GFLOPs at %dpx; %d train / %d val images, %d classes; "
            "%d process(es) on %s; %s",
            config.arch, json.dumps(config.attention), f"{complexity.params:,}", complexity.gflops, config.image_size,
            len(data.train_set), len(data.val_set), len(classes), dist.world_size, dist.device, _recipe_line(config),
        )  # fmt: skip
    board = None
    skips = SkipLog()
    for epoch in range(start_epoch, config.epochs):
        epoch_start = time.perf_counter()
        data.train_sampler.set_epoch(epoch)
        data.train_set.set_epoch(epoch)
        lr = optimizer.param_groups[0]["lr"]
        desc = f"epoch {epoch + 1}/{config.epochs}"
        stats = train_one_epoch(
            model,
            data.train_loader,
            optimizer,
            scaler,
            criterion,
            dist,
            amp,
            config.channels_last,
            skips,
            desc,
            config.freeze_bn_stats,
        )
        scheduler.step()
        result = evaluate(model, data.val_loader, dist, amp, config.channels_last, skips)
        skipped, dropped = all_reduce_sum(torch.tensor([float(skips.count), float(skips.dropped)], device=dist.device))
        row = {
            "epoch": epoch + 1,
            "lr": lr,
            **stats,
            "val_loss": result.loss,
            "val_top1_error": result.top1_error,
            "val_top5_error": result.top5_error,
            "skipped_images": int(skipped.item()),
            "dropped_images": int(dropped.item()),
            "epoch_seconds": time.perf_counter() - epoch_start,
        }
        history.append(row)
        if result.top1_error < best_error:
            best_error, best_epoch = result.top1_error, epoch + 1
        if dist.is_main:
            log.info(
                "%s  lr %.4g  train loss %.4f  val top-1 %.2f%%  top-5 %.2f%%  %.0f img/s",
                desc, lr, stats["train_loss"], result.top1_error, result.top5_error, stats["images_per_second"],
            )  # fmt: skip
            checkpoint = {
                "format": CHECKPOINT_FORMAT,
                "config": config.to_dict(),
                "classes": classes,
                "epoch": epoch + 1,
                **training_state(raw_model, optimizer, scheduler, scaler),
                "history": history,
                "best_top1_error": best_error,
                "best_epoch": best_epoch,
            }
            _save_epoch(output, checkpoint, raw_model, is_best=best_epoch == epoch + 1)
            board = board or _tensorboard(output)
            if board is not None:
                for key, value in row.items():
                    board.add_scalar(key, value, epoch + 1)
    train_seconds = sum(r["train_seconds"] for r in history)
    run = RunResult(
        output=str(output),
        epochs=config.epochs,
        final=history[-1] if history else {},
        best_top1_error=best_error,
        best_epoch=best_epoch,
        params=complexity.params,
        gflops=complexity.gflops,
        wall_seconds=sum(r["epoch_seconds"] for r in history),
        images_per_second=sum(r["images_per_second"] * r["train_seconds"] for r in history) / train_seconds
        if train_seconds
        else 0.0,
        history=history,
    )
    if dist.is_main:
        atomic_write(output / SUMMARY_FILE, lambda tmp: tmp.write_text(json.dumps(run.to_dict(), indent=2)))
        if board is not None:
            board.close()
    return run
