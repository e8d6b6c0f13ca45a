"""Datasets by name or path, per-sample seeded augmentation, and corrupt-image tolerance.

`DATA` is an ImageNet-layout folder (`train/`, `val/` of class folders), `cifar10`/`cifar100`
(torchvision; downloaded only with `download=True`), or `cluttered-digits` (generated locally).
Augmentation of sample i in epoch e is seeded from (seed, e, i), so a run draws the same crops
whatever its number of processes or workers, and a resumed run the same as an uninterrupted one.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch.utils.data import Dataset, Sampler, default_collate
from torchvision import datasets

from cbam.data.cluttered_digits import default_cache_dir, ensure_cluttered_digits
from cbam.errors import DataError, unknown_name

NAMED_DATASETS: tuple[str, ...] = ("cluttered-digits", "cifar10", "cifar100")
SPLITS: tuple[str, ...] = ("train", "val", "test")
# Exceptions PIL raises for a truncated, corrupt or non-image file.
IMAGE_ERRORS: tuple[type[BaseException], ...] = (OSError, SyntaxError, ValueError, Image.DecompressionBombError)


@dataclass(frozen=True)
class Skipped:
    """A sample that could not be read, and why."""

    path: str
    reason: str


def _image_folder(root: Path, split: str) -> datasets.ImageFolder:
    folder = root / split
    if not root.is_dir():
        raise DataError(f"data folder {root} does not exist")
    if not folder.is_dir():
        raise DataError(f"data folder {root} has no {split}/ folder; expected {root}/{split}/<class>/<image>")
    try:
        return datasets.ImageFolder(str(folder))
    except FileNotFoundError as err:
        raise DataError(f"{folder} holds no class folders with images ({err})") from None


def _cifar(name: str, split: str, download: bool) -> Dataset:
    if split == "test":
        raise DataError(f"{name} has train and val (its test set) splits only")
    cls = datasets.CIFAR10 if name == "cifar10" else datasets.CIFAR100
    root = default_cache_dir() / name
    try:
        return cls(str(root), train=split == "train", download=download)
    except RuntimeError:
        raise DataError(f"{name} is not in {root}; pass --download to fetch it (needs a network)") from None


def open_split(data: str, split: str, *, download: bool = False) -> Dataset:
    """The un-augmented dataset (PIL image, class index) of one split of `data`."""
    if split not in SPLITS:
        raise unknown_name("split", split, SPLITS)
    if data == "cluttered-digits":
        return _image_folder(ensure_cluttered_digits(), split)
    if data in ("cifar10", "cifar100"):
        return _cifar(data, split, download)
    if os.sep not in data and not Path(data).exists() and data.replace("-", "").isalnum():
        raise unknown_name("dataset", data, NAMED_DATASETS, [*NAMED_DATASETS, "or a folder path"])
    return _image_folder(Path(data), split)


def data_location(data: str) -> str:
    """A dataset name as it is; an existing folder as an absolute path, so a run's record of its data still
    holds when read from another folder."""
    if not data or data in NAMED_DATASETS or not Path(data).expanduser().exists():
        return data
    return str(Path(data).expanduser().resolve())


def default_workers() -> int:
    """Data-loading processes per training process: the CPUs this process may use, shared among the processes
    of this machine (torchrun's LOCAL_WORLD_SIZE), at most 8."""
    local_processes = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    return max(1, min(8, available_cpus() // max(1, local_processes)))


def available_cpus() -> int:
    """The CPUs this process may use (its affinity mask on Linux)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def data_root(data: str) -> Path:
    """The folder that holds `data`'s splits and annotations (the generated one for cluttered-digits)."""
    return ensure_cluttered_digits() if data == "cluttered-digits" else Path(data)


def class_names(dataset: Dataset) -> list[str]:
    classes = getattr(dataset, "classes", None)
    if not classes:
        raise DataError("the dataset does not name its classes")
    return list(classes)


def _sample_path(dataset: Dataset, index: int) -> str:
    samples = getattr(dataset, "samples", None)
    return str(samples[index][0]) if samples is not None else f"sample {index}"


def sample_seed(seed: int, epoch: int, index: int) -> int:
    return (seed * 1_000_003 + epoch) * 2_147_483_647 + index & 0x7FFF_FFFF_FFFF_FFFF


class AugmentedDataset(Dataset):
    """Applies `transform` with a seed fixed by (seed, epoch, index); unreadable samples become `Skipped`."""

    def __init__(self, base: Dataset, transform: Callable[[Any], torch.Tensor], seed: int = 0) -> None:
        self.base = base
        self.transform = transform
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int] | Skipped:
        try:
            image, target = self.base[index]
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(sample_seed(self.seed, self.epoch, index))
                return self.transform(image), target
        except IMAGE_ERRORS as err:
            return Skipped(_sample_path(self.base, index), f"{type(err).__name__}: {err}")


def collate_skipping(
    batch: Sequence[tuple[torch.Tensor, int] | Skipped],
) -> tuple[torch.Tensor, torch.Tensor, list[Skipped]]:
    """Stack the readable samples; return the unreadable ones beside them."""
    good = [item for item in batch if not isinstance(item, Skipped)]
    skipped = [item for item in batch if isinstance(item, Skipped)]
    if not good:
        return torch.empty(0), torch.empty(0, dtype=torch.long), skipped
    images, targets = default_collate(good)
    return images, targets, skipped


class ShardSampler(Sampler[int]):
    """Every `world_size`-th index from `rank`, in order, without padding: exact distributed evaluation."""

    def __init__(self, length: int, rank: int = 0, world_size: int = 1) -> None:
        self.length, self.rank, self.world_size = length, rank, world_size

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.rank, self.length, self.world_size))

    def __len__(self) -> int:
        return len(range(self.rank, self.length, self.world_size))
