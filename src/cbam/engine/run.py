"""The run skeleton: one training run of any task, from a config to a folder of checkpoints and reports.

`run(task_class, config)` reads top to bottom: join the processes, refuse a bad model before touching
data, claim the run folder, seed, open the data, build the network, optimizer and loss scaler, restore a
checkpoint when resuming, wrap the network (SyncBN, DDP, compile), then for each epoch train, evaluate,
log and checkpoint; at the end write the summary. The same code runs on one process or many (`torchrun`):
each process takes its share of every global batch, DDP averages gradients, metrics are summed over
processes, and only rank 0 writes files. The task (`cbam.engine.task.Task`) supplies the rest.
"""

from __future__ import annotations

import csv
import fnmatch
import functools
import io
import json
import logging
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.optim.lr_scheduler import LambdaLR
from torch.utils.data import DataLoader, DistributedSampler

from cbam.checkpoint import Checkpoint, read_checkpoint, save_checkpoint, save_weights
from cbam.engine.batches import MIN_TRAIN_BATCH, SkipLog, eval_loader, make_loader, merged_batches, progress_bar
from cbam.engine.config import RunConfig, config_yaml, recipe_line
from cbam.engine.distributed import Distributed, all_reduce_sum, init_distributed, uneven_steps
from cbam.engine.run_folder import BEST, CONFIG_FILE, LAST, METRICS_FILE, SUMMARY_FILE, claimed_run_folder
from cbam.engine.task import Task, TaskData, task_of
from cbam.errors import CheckpointError, ConfigError, DataError, TrainingError
from cbam.outputs import atomic_write

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunResult:
    """What a finished run reports and writes to `summary.json`."""

    output: str
    task: str
    epochs: int
    final: dict[str, Any]
    best_metric: str
    best_value: float
    best_epoch: int
    params: int
    gflops: float | None
    wall_seconds: float
    images_per_second: float
    history: list[dict[str, Any]]
    initial: dict[str, float] | None = None  # validation metrics before the first step (`eval_first`)

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)

    @classmethod
    def from_dict(cls, summary: dict[str, Any]) -> RunResult:
        """A summary.json, including one written before tasks shared this skeleton."""
        values = dict(summary)
        if "best_top1_error" in values:
            values.update(task="classification", best_metric="val_top1_error", best_value=values.pop("best_top1_error"))
        if "best_map" in values:
            values.update(task="detection", best_metric="val_map", best_value=values.pop("best_map"))
            values.setdefault("gflops", None)
            values.setdefault("images_per_second", 0.0)
        return cls(**values)


def seed_records(seeds: list[int], results: list[RunResult | None]) -> list[dict[str, Any]]:
    """A comparison row's runs as JSON-ready records: seed, run folder and final metrics (None for a failed run)."""
    return [{"seed": seed, "output": r.output if r else None, "final": r.final if r else None}
            for seed, r in zip(seeds, results, strict=True)]  # fmt: skip


@dataclass
class RunState:
    """What carries over from epoch to epoch, and from a checkpoint into a resumed run."""

    epoch: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    best: dict[str, Any] | None = None


@dataclass
class RunData:
    """A task's data, sampled and loaded for this process."""

    task_data: TaskData
    train_sampler: DistributedSampler
    train_loader: DataLoader
    val_loader: DataLoader


# ---------------------------------------------------------------------------------------------
# The run


def fit(config: RunConfig, resume: Path | None = None, *, exist_ok: bool = False) -> RunResult:
    """Train `config` (a `ClassificationConfig` or `DetectionConfig`) with its task; see `run`."""
    return run(task_of(config), config, resume, exist_ok=exist_ok)


def run(task_class: type[Task], config: RunConfig, resume: Path | None = None, *, exist_ok: bool = False) -> RunResult:
    """Train `config` to the end, checkpointing every epoch; continue from `resume` if given.

    A resumed run restores weights, optimizer, scaler, RNG and history, so it ends with the same
    weights as an uninterrupted one (build its config with `resume_config`). A folder that already
    holds a run is refused unless resuming, or `exist_ok` (which replaces it).
    """
    dist = init_distributed(config.device)
    task = task_class(config, dist)
    task.check_model()
    checkpoint = read_resumed(resume, task.name) if resume is not None else None
    with claimed_run_folder(Path(config.output), resume=checkpoint is not None, exist_ok=exist_ok, main=dist.is_main):
        return _train(task, checkpoint)


def _train(task: Task, checkpoint: Checkpoint | None) -> RunResult:
    config, dist = task.config, task.dist
    torch.manual_seed(config.seed)
    data = open_run_data(task, dist)
    classes = data.task_data.classes
    if checkpoint is not None and checkpoint.classes != classes:
        raise CheckpointError(
            f"the checkpoint was trained on {len(checkpoint.classes or [])} classes "
            f"({', '.join((checkpoint.classes or [])[:5])}); the data has {len(classes)}"
        )
    model = task.build_model(config, len(classes), fresh=checkpoint is None).to(dist.device)
    if config.channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = build_optimizer(task.parameter_groups(model, config), config)
    frozen = frozen_parameters(model, config.freeze)
    scaler = torch.amp.GradScaler(dist.device.type, enabled=task.amp == torch.float16)
    state = RunState()
    if checkpoint is not None:
        state = restore(checkpoint, model, optimizer, scaler)
    training_model = wrap_model(model, config, dist)
    steps_per_epoch = len(data.train_loader)
    total_steps = task.total_steps(steps_per_epoch)
    epochs = math.ceil(total_steps / steps_per_epoch)
    scheduler = lr_schedule(task, optimizer, state.epoch * steps_per_epoch, steps_per_epoch, total_steps)
    params, gflops = task.complexity(model, len(classes))
    if dist.is_main:
        log.info(
            "%s; %d train / %d val images, %d classes; %d steps of %d; %d process(es) on %s; %s",
            task.describe(params, gflops), len(data.task_data.train_set), len(data.task_data.val_set), len(classes),
            total_steps, config.batch_size, dist.world_size, dist.device, recipe_line(config),
        )  # fmt: skip
    initial = None
    if config.eval_first and checkpoint is None:
        initial = task.evaluate(training_model, data.val_loader, data.task_data, SkipLog())
        if dist.is_main:
            log.info("before the first step: val %s", task.epoch_summary(initial))
    board = None
    skips = SkipLog()
    for epoch in range(state.epoch, epochs):
        epoch_start = time.perf_counter()
        data.train_sampler.set_epoch(epoch)
        data.task_data.train_set.set_epoch(epoch)
        desc = f"epoch {epoch + 1}/{epochs}"
        first, last = epoch * steps_per_epoch, min(total_steps, (epoch + 1) * steps_per_epoch)
        fixed = frozen if config.freeze_epochs == 0 or epoch < config.freeze_epochs else []
        stats = train_epoch(task, training_model, data.train_loader, optimizer, scheduler, scaler, skips,
                            (first, last), desc, fixed)  # fmt: skip
        metrics = task.evaluate(training_model, data.val_loader, data.task_data, skips)
        skipped, dropped = all_reduce_sum(torch.tensor([float(skips.count), float(skips.dropped)], device=dist.device))
        row = {
            "epoch": epoch + 1,
            **stats,
            **{f"val_{key}": value for key, value in metrics.items()},
            "skipped_images": int(skipped.item()),
            "dropped_images": int(dropped.item()),
            "epoch_seconds": time.perf_counter() - epoch_start,
        }
        state.history.append(row)
        state.epoch = epoch + 1
        value = metrics[task.headline.metric]
        is_best = task.headline.better(value, state.best["value"] if state.best else None)
        if is_best:
            state.best = {"metric": task.headline.history_key, "value": value, "epoch": epoch + 1}
        if dist.is_main:
            log.info(
                "%s  lr %.4g  train loss %.4f  val %s  %.0f img/s",
                desc, stats["lr"], stats.get("train_loss", float("nan")), task.epoch_summary(metrics),
                stats["images_per_second"],
            )  # fmt: skip
            checkpoint = Checkpoint(task.name, config.to_dict(), classes, epoch + 1, model.state_dict(),
                                    data.task_data.metadata, state.best, state.history,
                                    training_state(optimizer, scaler))  # fmt: skip
            save_epoch(Path(config.output), checkpoint, is_best)
            board = board or _tensorboard(Path(config.output))
            if board is not None:
                for key, number in row.items():
                    board.add_scalar(key, number, epoch + 1)
    result = _result(task, state, params, gflops, epochs, initial)
    if dist.is_main:
        text = json.dumps(result.to_dict(), indent=2)
        atomic_write(Path(config.output) / SUMMARY_FILE, lambda tmp: tmp.write_text(text))
        if board is not None:
            board.close()
    return result


# ---------------------------------------------------------------------------------------------
# Data, model, optimizer


def open_run_data(task: Task, dist: Distributed) -> RunData:
    """The task's splits, sharded over processes; each process loads batch_size / world_size per step."""
    config = task.config
    if config.batch_size % dist.world_size:
        raise ConfigError(f"batch_size {config.batch_size} must divide evenly over {dist.world_size} processes")
    task_data = task.datasets()
    per_process = config.batch_size // dist.world_size
    sampler = DistributedSampler(task_data.train_set, num_replicas=dist.world_size, rank=dist.rank, shuffle=True,
                                 seed=config.seed, drop_last=True)  # fmt: skip
    if len(sampler) < per_process:
        raise DataError(f"{len(task_data.train_set)} training images are fewer than one batch of {config.batch_size}")
    train_loader = make_loader(task_data.train_set, sampler, per_process, config.workers, task.collate, drop_last=True)
    val_loader = eval_loader(task_data.val_set, per_process, config.workers, task.collate, dist)
    return RunData(task_data, sampler, train_loader, val_loader)


def build_optimizer(groups: Sequence[Mapping[str, Any]], config: RunConfig) -> torch.optim.Optimizer:
    """SGD with momentum (the paper's), or AdamW for short runs on small data, over the task's parameter groups
    (`Task.parameter_groups`), each at its `lr_mult` times `base_lr`."""
    groups = [{**group, "lr": config.base_lr * group.get("lr_mult", 1.0)} for group in groups]
    if config.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=config.base_lr, weight_decay=config.weight_decay)
    return torch.optim.SGD(groups, lr=config.base_lr, momentum=config.momentum, weight_decay=config.weight_decay)


def frozen_parameters(model: nn.Module, patterns: tuple[str, ...]) -> list[nn.Parameter]:
    """The parameters whose names match a `--freeze` pattern; a pattern that matches none is refused."""
    named = dict(model.named_parameters())
    for pattern in patterns:
        if not any(fnmatch.fnmatchcase(name, pattern) for name in named):
            raise ConfigError(f"--freeze {pattern!r} matches no parameter; the network's start with: "
                              f"{', '.join(list(named)[:6])}")  # fmt: skip
    return [p for name, p in named.items() if any(fnmatch.fnmatchcase(name, pattern) for pattern in patterns)]


def wrap_model(model: nn.Module, config: RunConfig, dist: Distributed) -> nn.Module:
    """The network as it trains: BatchNorm synchronised across GPUs, DDP over processes, compiled."""
    if config.sync_bn and dist.enabled:
        if dist.device.type != "cuda":
            raise ConfigError(
                "sync_bn needs CUDA (SyncBatchNorm is GPU-only); on the CPU each process normalises its share"
            )
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    if dist.enabled:
        model = DistributedDataParallel(model, device_ids=[dist.device.index] if dist.device.type == "cuda" else None)
    if config.compile:
        model = torch.compile(model)
    return model


def lr_schedule(task: Task, optimizer: torch.optim.Optimizer, first_step: int, steps_per_epoch: int,
                total_steps: int) -> LambdaLR:  # fmt: skip
    """The task's schedule (`Task.lr_factor` of each group's initial lr) at optimizer step `first_step`. A
    function of the step alone, so a resumed run rebuilds it from its checkpoint's step (the optimizer state
    holds each group's `initial_lr`), files of every format alike."""
    factor = functools.partial(task.lr_factor, steps_per_epoch=steps_per_epoch, total_steps=total_steps)
    return LambdaLR(optimizer, factor, last_epoch=first_step - 1)


# ---------------------------------------------------------------------------------------------
# One epoch


def train_epoch(
    task: Task,
    model: nn.Module,
    loader: DataLoader,
    optimizer: torch.optim.Optimizer,
    scheduler: LambdaLR,
    scaler: torch.amp.GradScaler,
    skips: SkipLog,
    steps: tuple[int, int],
    desc: str = "train",
    fixed: list[nn.Parameter] | None = None,
) -> dict[str, float]:
    """Optimizer steps `steps[0]` to `steps[1]` (exclusive) over the training data, leaving the `fixed`
    parameters as they are; returns the lr at the first, the task's per-batch values averaged over all images of
    all processes, the steps taken and images/s."""
    model.train()
    if task.config.freeze_bn_stats:
        for module in model.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.eval()
    step, last = steps
    first_lr = scheduler.get_last_lr()[0]
    sums: dict[str, float] = {}
    images = 0
    start = time.perf_counter()
    progress = progress_bar((last - step) * task.config.batch_size, desc, task.dist.is_main)
    batches = merged_batches(loader, skips, min(MIN_TRAIN_BATCH, loader.batch_size or 1))
    with uneven_steps(model):
        for inputs, targets in batches:
            if step >= last:
                break
            with task.autocast():
                loss, logs = task.train_step(model, inputs, targets)
            if not torch.isfinite(loss.detach()).item():
                parts = "".join(f", {k} {v.item():.4g}" for k, v in logs.items() if k != "loss")
                raise TrainingError(
                    f"the loss became {loss.item()} at step {step}{parts}; stopping, the last checkpoint is kept"
                )
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            for parameter in fixed or ():
                parameter.grad = None  # the optimizer skips a parameter without a gradient (decay included)
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
            n = len(inputs)
            for key, value in {"loss": loss, **logs}.items():
                sums[key] = sums.get(key, 0.0) + float(value.detach()) * n
            images += n
            step += 1
            progress.update(n * task.dist.world_size)
            progress.set_postfix(loss=f"{loss.item():.3f}")
    progress.close()
    elapsed = time.perf_counter() - start
    totals = all_reduce_sum(torch.tensor([*sums.values(), images, step - steps[0]], dtype=torch.float64,
                                         device=task.dist.device)).cpu().tolist()  # fmt: skip
    seen = totals[-2]
    return {
        "lr": first_lr,
        **{f"train_{key}": total / max(seen, 1) for key, total in zip(sums, totals, strict=False)},
        "steps": int(totals[-1] / task.dist.world_size),
        "images_per_second": seen / elapsed if elapsed > 0 else 0.0,
        "train_seconds": elapsed,
    }


# ---------------------------------------------------------------------------------------------
# Checkpoints and reports


def _rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def training_state(optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler) -> dict[str, Any]:
    """What a checkpoint needs, beyond weights and history, to resume exactly: optimizer, loss scaler, RNG."""
    return {"optimizer": optimizer.state_dict(), "scaler": scaler.state_dict(), "rng": _rng_state()}


def restore(
    checkpoint: Checkpoint, model: nn.Module, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler
) -> RunState:
    """Put back what a checkpoint saved; the run goes on from its epoch."""
    model.load_state_dict(checkpoint.model)
    training = checkpoint.training or {}
    if "optimizer" not in training:
        raise CheckpointError(
            "the checkpoint holds weights only (no optimizer state): it can start a run, not resume one"
        )
    optimizer.load_state_dict(training["optimizer"])
    scaler.load_state_dict(training["scaler"])
    torch.set_rng_state(training["rng"]["torch"])
    if "cuda" in training["rng"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(training["rng"]["cuda"])
    return RunState(checkpoint.epoch, list(checkpoint.history), checkpoint.best)


def read_resumed(path: Path, task: str) -> Checkpoint:
    """The checkpoint a run resumes from, which must be of this task."""
    checkpoint = read_checkpoint(path)
    if checkpoint.task != task:
        raise CheckpointError(f"{path} is a {checkpoint.task} checkpoint; this is a {task} run")
    return checkpoint


def resolve_resume(resume: str | None, output: Path) -> Path | None:
    """`--resume` with no value (or `last`) means the last checkpoint in the output folder."""
    if resume is None:
        return None
    path = output / LAST if resume in ("", "last") else Path(resume)
    if not path.is_file():
        raise CheckpointError(f"nothing to resume: {path} does not exist")
    return path


def save_epoch(output: Path, checkpoint: Checkpoint, is_best: bool) -> None:
    """best.* (when this epoch is the best), metrics.csv, config.yaml, last.safetensors, then last.pt: last.pt is
    written last, so a run killed at any point resumes from a last.pt whose companions are all on disk (a folder
    holds a run from its first last.pt on, never before)."""
    if is_best:
        save_checkpoint(output / BEST, checkpoint)
        save_weights(output / BEST.replace(".pt", ".safetensors"), checkpoint)
    write_metrics(output, checkpoint.history)
    text = config_yaml(checkpoint.config)
    atomic_write(output / CONFIG_FILE, lambda tmp: tmp.write_text(text))
    save_weights(output / LAST.replace(".pt", ".safetensors"), checkpoint)
    save_checkpoint(output / LAST, checkpoint)


def write_metrics(output: Path, history: list[dict[str, Any]]) -> None:
    """metrics.csv: one row per epoch."""
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


def _result(
    task: Task, state: RunState, params: int, gflops: float | None, epochs: int, initial: dict[str, float] | None
) -> RunResult:
    history = state.history
    train_seconds = sum(r["train_seconds"] for r in history)
    best = state.best or {"metric": task.headline.history_key, "value": float("nan"), "epoch": 0}
    return RunResult(
        output=str(task.config.output),
        task=task.name,
        epochs=epochs,
        final=history[-1] if history else {},
        best_metric=best["metric"],
        best_value=best["value"],
        best_epoch=best["epoch"],
        params=params,
        gflops=gflops,
        wall_seconds=sum(r["epoch_seconds"] for r in history),
        images_per_second=sum(r["images_per_second"] * r["train_seconds"] for r in history) / train_seconds
        if train_seconds
        else 0.0,
        history=history,
        initial=initial,
    )
