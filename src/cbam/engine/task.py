"""What a task supplies to the run skeleton (`cbam.engine.run`): its model, its data, one training step,
one evaluation and its headline metric. Everything else (processes, seeding, the run folder, resume,
AMP/compile/channels_last/SyncBN, the epoch loop, checkpoints, metrics files, the summary) is the
skeleton's. A new task (segmentation, say) subclasses `Task` and its config subclasses `RunConfig`.
"""

from __future__ import annotations

import contextlib
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from cbam.engine.batches import SkipLog
from cbam.engine.config import RunConfig
from cbam.engine.distributed import Distributed
from cbam.errors import ConfigError


@dataclass(frozen=True)
class Headline:
    """The one number a run is judged by: its key among the evaluation's metrics and which way is better."""

    metric: str
    label: str
    higher_is_better: bool

    @property
    def history_key(self) -> str:
        return f"val_{self.metric}"

    def better(self, value: float, than: float | None) -> bool:
        if than is None:
            return True
        return value > than if self.higher_is_better else value < than


@dataclass
class TaskData:
    """A task's two splits, its class names (the network's outputs, in order) and what else a checkpoint
    should record about the data (detection: the datasets' category ids)."""

    train_set: Dataset
    val_set: Dataset
    classes: list[str]
    metadata: dict[str, Any] = field(default_factory=dict)


def autocast_dtype(config: RunConfig, device: torch.device) -> torch.dtype | None:
    """None without AMP; bf16 on the CPU; fp16 on CUDA unless bf16 is asked for."""
    if not config.amp:
        return None
    if config.amp_dtype == "float16" and device.type == "cpu":
        raise ConfigError("amp_dtype float16 is for CUDA; use bfloat16 (or auto) on the CPU")
    if config.amp_dtype == "auto":
        return torch.bfloat16 if device.type == "cpu" else torch.float16
    return getattr(torch, config.amp_dtype)


# Each task by its config's class: a task registers itself when its module is imported, which any config of it
# has already made happen.
TASK_OF_CONFIG: dict[type[RunConfig], type[Task]] = {}


def task_of(config: RunConfig) -> type[Task]:
    """The task that trains `config`."""
    return TASK_OF_CONFIG[type(config)]


class Task(ABC):
    """One kind of training run. Subclasses set the class attributes and implement the abstract methods."""

    name: ClassVar[str]
    config_class: ClassVar[type[RunConfig]]
    headline: Headline  # a class attribute, or set per run where the config chooses it
    # Stacks a list of samples (unreadable ones are `Skipped`) into (inputs, targets, skipped).
    collate: ClassVar[Callable[[list[Any]], tuple[Any, Any, list[Any]]]]

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "config_class" in cls.__dict__:
            TASK_OF_CONFIG[cls.config_class] = cls

    def __init__(self, config: RunConfig, dist: Distributed) -> None:
        self.config = config
        self.dist = dist
        self.device = dist.device
        self.amp = autocast_dtype(config, dist.device)

    def autocast(self) -> contextlib.AbstractContextManager:
        """Mixed precision around a forward pass when the config asks for it."""
        if self.amp is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp)

    @classmethod
    @abstractmethod
    def build_model(cls, config: RunConfig, num_classes: int, *, fresh: bool = True) -> nn.Module:
        """The network for `num_classes` classes. `fresh=False` when trained weights will be loaded over it
        (a detector then skips reading its backbone's pretrained weights)."""

    @abstractmethod
    def datasets(self) -> TaskData:
        """Both splits of the config's data, with their transforms."""

    @abstractmethod
    def train_step(self, model: nn.Module, inputs: Any, targets: Any) -> tuple[Tensor, dict[str, Tensor]]:
        """The loss of one batch (on the CPU as loaded), and per-batch means to log as `train_<key>`."""

    @abstractmethod
    def evaluate(self, model: nn.Module, loader: DataLoader, data: TaskData, skips: SkipLog) -> dict[str, float]:
        """The metrics over the whole validation split, the same on every process (logged as `val_<key>`)."""

    @abstractmethod
    def lr_factor(self, step: int, steps_per_epoch: int, total_steps: int) -> float:
        """The learning-rate multiplier at optimizer step `step` (counted from 0 over the whole run)."""

    @classmethod
    def parameter_groups(cls, model: nn.Module, config: RunConfig) -> list[dict[str, Any]]:
        """The parameters that train, as optimizer groups each with its `lr_mult` (of the run's base learning
        rate); by default one group."""
        return [{"params": [p for p in model.parameters() if p.requires_grad], "lr_mult": 1.0}]

    def total_steps(self, steps_per_epoch: int) -> int:
        """How many optimizer steps the run takes."""
        return self.config.epochs * steps_per_epoch

    def complexity(self, model: nn.Module, num_classes: int) -> tuple[int, float | None]:
        """(parameters, GFLOPs or None) of the network, for the banner and the summary."""
        return sum(p.numel() for p in model.parameters()), None

    def describe(self, params: int, gflops: float | None) -> str:
        """The network, as the run's first log line names it."""
        return f"{self.name} network: {params:,} params"

    def epoch_summary(self, metrics: dict[str, float]) -> str:
        """The validation metrics as the per-epoch log line shows them."""
        return f"{self.headline.label} {metrics[self.headline.metric]:.4g}"

    def check_model(self) -> None:
        """Build the network on the meta device (no memory, no time): a bad name or option is refused before
        any data is opened."""
        with torch.device("meta"):
            self.build_model(self.config, 2, fresh=False)
