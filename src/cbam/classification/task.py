"""Image classification as the paper trains it (Sect. 4.1): its options, and what the run skeleton needs from it.

`ClassificationConfig`'s defaults are the paper's ImageNet recipe; `ClassificationTask` builds a zoo network,
opens an ImageNet-layout folder (or a built-in dataset), takes one cross-entropy step and evaluates the
single-crop top-1 and top-5 error. `evaluate` is also what `cbam eval` runs on a saved network.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader

from cbam.classification.accuracy import error_percent, topk_correct
from cbam.data.loading import AugmentedDataset, DataError, class_names, collate_skipping, data_location, open_split
from cbam.data.transforms import IMAGENET_MEAN, IMAGENET_STD, eval_transform, train_transform
from cbam.engine.batches import SkipLog, merged_batches
from cbam.engine.config import RunConfig, attention_option, option
from cbam.engine.distributed import Distributed, all_reduce_sum
from cbam.engine.task import Headline, Task, TaskData
from cbam.networks.attach import attention_param_groups
from cbam.networks.build import build_network
from cbam.networks.complexity import measure_arch
from cbam.networks.counting import count_macs, count_parameters
from cbam.networks.libraries import is_external, library_versions, weights_preprocessing
from cbam.networks.request import NetworkRequest

LR_SCHEDULES: tuple[str, ...] = ("step", "cosine")


@dataclass(frozen=True)
class ClassificationConfig(RunConfig):
    """A classification run; the defaults are the paper's ImageNet recipe (Sect. 4.1)."""

    task: ClassVar[str] = "classification"
    dataset_recipes: ClassVar[dict[str, str]] = {"cluttered-digits": "cluttered-digits"}

    data: str = option(
        "", "an ImageNet-layout folder, cifar10, cifar100 or cluttered-digits (kept as an absolute path)"
    )
    arch: str = option("resnet50", "model name (see `cbam models`)", paper="resnet50")
    attention: Any = attention_option()
    model_kwargs: dict[str, Any] = option({}, "builder option, e.g. width_mult=0.7", flag="--model-arg")
    lr_schedule: str = option("step", "learning-rate decay", paper="step", choices=LR_SCHEDULES)
    lr_step: int = option(30, "epochs between x lr_gamma steps", paper=30)
    lr_gamma: float = option(0.1, "factor of each step", paper=0.1)
    warmup_epochs: int = option(0, "linear warm-up epochs")
    label_smoothing: float = option(0.0, "label smoothing")
    image_size: int = option(224, "training crop and evaluation crop", paper=224)
    eval_resize: int = option(256, "short side before the evaluation centre crop", paper=256)
    mean: tuple[float, float, float] = option(
        IMAGENET_MEAN,
        "per-channel mean the images are normalised with (default: the weights' own, else ImageNet's)",
        metavar=("R", "G", "B"),
    )
    std: tuple[float, float, float] = option(
        IMAGENET_STD, "per-channel standard deviation, likewise", metavar=("R", "G", "B")
    )
    crop_scale: tuple[float, float] = option((0.08, 1.0), "random-resized crop area range", paper="0.08 1",
                                             metavar=("LO", "HI"))  # fmt: skip
    download: bool = option(False, "download CIFAR when missing (needs a network)", resumable=True)
    weights: str | None = option(
        None,
        "start from trained weights: a file (ours, torchvision's, timm's), or for a "
        "torchvision:/timm: network its library's own (IMAGENET1K_V2, DEFAULT; pretrained)",
    )
    partial_weights: bool = option(False, "load the weights that fit the network and report the rest (else refused)")

    def __post_init__(self) -> None:
        if self.weights:
            object.__setattr__(self, "weights", data_location(self.weights))
        super().__post_init__()

    @classmethod
    def implied_values(cls, values: Mapping[str, Any]) -> dict[str, Any]:
        return implied_by_weights(values)

    @property
    def start_weights(self) -> str | None:
        return self.weights

    def checks(self) -> list[tuple[bool, str]]:
        return [
            *super().checks(),
            (self.lr_step >= 1, f"lr_step must be at least 1, got {self.lr_step}"),
            (self.image_size >= 8, f"image_size must be at least 8, got {self.image_size}"),
            (self.eval_resize >= self.image_size, "eval_resize must be at least image_size"),
            (
                len(self.crop_scale) == 2 and 0 < self.crop_scale[0] <= self.crop_scale[1] <= 1,
                f"crop_scale must be 0 < lo <= hi <= 1: {self.crop_scale}",
            ),
            (0 <= self.label_smoothing < 1, f"label_smoothing must be in [0, 1), got {self.label_smoothing}"),
        ]


def implied_by_weights(values: Mapping[str, Any]) -> dict[str, Any]:
    """The preprocessing that named weights were trained with (crop, resize, mean, std): below the flags, above
    the recipe, so that a network starts from the inputs it knows unless the user says otherwise."""
    arch, weights = values.get("arch", ""), values.get("weights")
    if not (isinstance(arch, str) and is_external(arch) and weights):
        return {}
    return dict(weights_preprocessing(arch, weights))


def network_request(config: ClassificationConfig, fresh: bool = True) -> NetworkRequest:
    """The network a run trains: a fresh one starts from `config.weights`, one to load trained weights into
    skips them (its attention shaped as the run's started)."""
    options = dict(config.model_kwargs)
    impl = options.pop("impl", "auto")  # how attention runs, not a builder option
    request = NetworkRequest(config.arch, config.attention, options, config.weights, config.attention_init,
                             strict=not config.partial_weights, impl=impl)  # fmt: skip
    return request if fresh else request.without_weights()


def config_eval_transform(config: ClassificationConfig) -> Any:
    """The evaluation transform of a run: its crop, resize and normalisation."""
    return eval_transform(config.image_size, config.eval_resize, config.mean, config.std)


def lr_factor(config: ClassificationConfig, epoch: int) -> float:
    """Multiplier of the scaled learning rate in `epoch`: linear warm-up, then step or cosine decay."""
    if epoch < config.warmup_epochs:
        return (epoch + 1) / (config.warmup_epochs + 1)
    if config.lr_schedule == "cosine":
        progress = (epoch - config.warmup_epochs) / max(1, config.epochs - config.warmup_epochs)
        return 0.5 * (1 + math.cos(math.pi * progress))
    return config.lr_gamma ** (epoch // config.lr_step)


# ---------------------------------------------------------------------------------------------
# Evaluation


@dataclass(frozen=True)
class EvalResult:
    """The paper's metrics over a whole split."""

    loss: float
    top1_error: float
    top5_error: float
    images: int
    skipped: int = 0

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def _on_device(images: Tensor, device: torch.device, channels_last: bool) -> Tensor:
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    return images.to(device, non_blocking=True).contiguous(memory_format=memory_format)


@torch.no_grad()
def evaluate(
    model: nn.Module,
    loader: DataLoader,
    dist: Distributed,
    amp: torch.dtype | None = None,
    channels_last: bool = False,
    skips: SkipLog | None = None,
    keep: list[tuple[Tensor, Tensor]] | None = None,
) -> EvalResult:
    """Loss, top-1 and top-5 error (%) over every image of the loader, summed over processes; `keep` gathers
    each batch's targets and five best classes (this process's share, in loader order)."""
    model.eval()
    skips = skips if skips is not None else SkipLog()
    skipped_before = skips.count
    criterion = nn.CrossEntropyLoss(reduction="sum")
    totals = torch.zeros(5, dtype=torch.float64)  # loss sum, top-1, top-5, n, skipped
    for images, targets in merged_batches(loader, skips, 1):
        targets = targets.to(dist.device, non_blocking=True)
        with torch.autocast(dist.device.type, dtype=amp, enabled=amp is not None):
            logits = model(_on_device(images, dist.device, channels_last))
        logits = logits.float()
        correct = topk_correct(logits, targets, (1, 5)).double().cpu()
        if keep is not None:
            keep.append((targets.cpu(), logits.topk(min(5, logits.shape[1]), dim=1).indices.cpu()))
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
# The task


class ClassificationTask(Task):
    """Cross-entropy training of a zoo network; judged by validation top-1 error."""

    name = "classification"
    config_class = ClassificationConfig
    headline = Headline("top1_error", "top-1 error", higher_is_better=False)
    collate = staticmethod(collate_skipping)
    config: ClassificationConfig

    def __init__(self, config: ClassificationConfig, dist: Distributed) -> None:
        super().__init__(config, dist)
        self.criterion = nn.CrossEntropyLoss(label_smoothing=config.label_smoothing)

    @classmethod
    def build_model(cls, config: ClassificationConfig, num_classes: int, *, fresh: bool = True) -> nn.Module:
        """The network; a fresh one starts from `config.weights`, one to load trained weights into skips them."""
        return build_network(network_request(config, fresh), num_classes)

    @classmethod
    def parameter_groups(cls, model: nn.Module, config: RunConfig) -> list[dict[str, Any]]:
        """Attention in a group of its own at `attention_lr_mult` (see `attention_param_groups`)."""
        return attention_param_groups(model, config.attention_lr_mult)

    def datasets(self) -> TaskData:
        config = self.config
        train_base = open_split(config.data, "train", download=config.download)
        val_base = open_split(config.data, "val", download=config.download)
        classes = class_names(train_base)
        if class_names(val_base) != classes:
            raise DataError(f"train and val name different classes: {classes} vs {class_names(val_base)}")
        augment = train_transform(config.image_size, config.crop_scale, config.hflip, config.mean, config.std)
        train_set = AugmentedDataset(train_base, augment, config.seed)
        val_set = AugmentedDataset(val_base, config_eval_transform(config), config.seed)
        source = {"library_versions": library_versions(config.arch)} if is_external(config.arch) else {}
        return TaskData(train_set, val_set, classes, source)

    def train_step(self, model: nn.Module, inputs: Tensor, targets: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        targets = targets.to(self.device, non_blocking=True)
        logits = model(_on_device(inputs, self.device, self.config.channels_last))
        loss = self.criterion(logits, targets)
        correct = topk_correct(logits.detach().float(), targets, (1,))[0]
        return loss, {"top1_error": 100.0 * (1.0 - correct / targets.shape[0])}

    def evaluate(self, model: nn.Module, loader: DataLoader, data: TaskData, skips: SkipLog) -> dict[str, float]:
        result = evaluate(model, loader, self.dist, self.amp, self.config.channels_last, skips)
        return {"loss": result.loss, "top1_error": result.top1_error, "top5_error": result.top5_error}

    def lr_factor(self, step: int, steps_per_epoch: int, total_steps: int) -> float:
        return lr_factor(self.config, step // steps_per_epoch)

    def complexity(self, model: nn.Module, num_classes: int) -> tuple[int, float | None]:
        config = self.config
        size = (3, config.image_size, config.image_size)
        if is_external(config.arch):
            return count_parameters(model), count_macs(model, size) / 1e9
        measured = measure_arch(config.arch, config.attention, input_size=size, num_classes=num_classes,
                                **config.model_kwargs)  # fmt: skip
        return measured.params, measured.gflops

    def describe(self, params: int, gflops: float | None) -> str:
        config = self.config
        start = ""
        if config.weights:
            init = config.attention_start_words()
            attention = "" if config.attention == "none" else f"; attention the weights lack starts {init}"
            start = f" from weights {config.weights} (a new classifier where the classes differ{attention})"
        return (f"{config.arch} attention={json.dumps(config.attention)}{start}: {params:,} params, "
                f"{gflops:.3f} GFLOPs at {config.image_size}px")  # fmt: skip

    def epoch_summary(self, metrics: dict[str, float]) -> str:
        return f"top-1 {metrics['top1_error']:.2f}%  top-5 {metrics['top5_error']:.2f}%"
