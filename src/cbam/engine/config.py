"""The training configuration: one frozen dataclass, filled from a recipe, a YAML file and flags.

Precedence, lowest first: the dataclass defaults (the paper's ImageNet recipe), a named recipe
(`cbam/recipes/<name>.yaml`) or a YAML file, then command-line values. A built-in dataset with a
recipe of its own (`cluttered-digits`) gets that recipe when none is named.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from cbam.data.loading import data_location, default_workers
from cbam.errors import ConfigError, unknown_name

LR_SCHEDULES: tuple[str, ...] = ("step", "cosine")
OPTIMIZERS: tuple[str, ...] = ("sgd", "adamw")
AMP_DTYPES: tuple[str, ...] = ("auto", "bfloat16", "float16")
REFERENCE_BATCH = 256  # the learning rate is given for this global batch and scaled linearly
# Built-in datasets with a recipe of their own, used when no recipe is named.
DATASET_RECIPES: dict[str, str] = {"cluttered-digits": "cluttered-digits"}


@dataclass(frozen=True)
class TrainConfig:
    """Everything a run needs; the defaults are the paper's ImageNet recipe (Sect. 4.1)."""

    data: str = ""  # a dataset name, or a folder (kept as an absolute path)
    output: str = ""
    recipe: str = ""  # the recipe the values came from; "" is the paper's ImageNet recipe (these defaults)
    arch: str = "resnet50"
    attention: Any = "none"
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    epochs: int = 90
    batch_size: int = 256  # global, over all processes
    lr: float = 0.1  # for a global batch of 256; scaled linearly with batch_size
    optimizer: str = "sgd"
    momentum: float = 0.9
    weight_decay: float = 1e-4
    lr_schedule: str = "step"
    lr_step: int = 30
    lr_gamma: float = 0.1
    warmup_epochs: int = 0
    label_smoothing: float = 0.0
    image_size: int = 224
    eval_resize: int = 256
    crop_scale: tuple[float, float] = (0.08, 1.0)
    hflip: bool = True
    workers: int = field(default_factory=default_workers)
    seed: int = 0
    amp: bool = False
    amp_dtype: str = "auto"
    channels_last: bool = False
    compile: bool = False
    sync_bn: bool = False
    freeze_bn_stats: bool = False  # normalise with (and keep) the running statistics while training
    download: bool = False
    device: str = "auto"

    def __post_init__(self) -> None:
        object.__setattr__(self, "data", data_location(self.data))
        object.__setattr__(self, "crop_scale", tuple(self.crop_scale))
        checks = [
            (self.epochs >= 1, f"epochs must be at least 1, got {self.epochs}"),
            (self.batch_size >= 1, f"batch_size must be at least 1, got {self.batch_size}"),
            (self.lr > 0, f"lr must be positive, got {self.lr}"),
            (self.lr_step >= 1, f"lr_step must be at least 1, got {self.lr_step}"),
            (self.workers >= 0, f"workers must be 0 or more, got {self.workers}"),
            (self.image_size >= 8, f"image_size must be at least 8, got {self.image_size}"),
            (self.eval_resize >= self.image_size, "eval_resize must be at least image_size"),
            (
                0 < self.crop_scale[0] <= self.crop_scale[1] <= 1,
                f"crop_scale must be 0 < lo <= hi <= 1: {self.crop_scale}",
            ),
            (0 <= self.label_smoothing < 1, f"label_smoothing must be in [0, 1), got {self.label_smoothing}"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)
        if self.optimizer not in OPTIMIZERS:
            raise unknown_name("optimizer", self.optimizer, OPTIMIZERS)
        if self.lr_schedule not in LR_SCHEDULES:
            raise unknown_name("lr_schedule", self.lr_schedule, LR_SCHEDULES)
        if self.amp_dtype not in AMP_DTYPES:
            raise unknown_name("amp_dtype", self.amp_dtype, AMP_DTYPES)

    @property
    def scaled_lr(self) -> float:
        """The learning rate for this global batch: lr x batch_size / 256 (Goyal et al.)."""
        return self.lr * self.batch_size / REFERENCE_BATCH

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["crop_scale"] = list(self.crop_scale)
        return out


def config_fields() -> set[str]:
    return {f.name for f in dataclasses.fields(TrainConfig)}


def recipe_names() -> list[str]:
    folder = resources.files("cbam.recipes")
    return sorted(p.name.removesuffix(".yaml") for p in folder.iterdir() if p.name.endswith(".yaml"))


def read_recipe(recipe: str) -> dict[str, Any]:
    """Values of a named recipe or of a YAML file; unknown keys are refused."""
    path = Path(recipe)
    if recipe.endswith((".yaml", ".yml")) or path.exists():
        if not path.is_file():
            raise ConfigError(f"recipe file {recipe} does not exist")
        text = path.read_text(encoding="utf-8")
    elif recipe in recipe_names():
        text = resources.files("cbam.recipes").joinpath(f"{recipe}.yaml").read_text(encoding="utf-8")
    else:
        raise unknown_name("recipe", recipe, recipe_names())
    try:
        values = yaml.safe_load(text) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"recipe {recipe} is not valid YAML: {err}") from None
    if not isinstance(values, dict):
        raise ConfigError(f"recipe {recipe} must be a mapping of config keys, got {type(values).__name__}")
    unknown = set(values) - config_fields()
    if unknown:
        raise ConfigError(f"recipe {recipe} has unknown keys {sorted(unknown)}; valid keys: {sorted(config_fields())}")
    return values


def recipe_for(recipe: str | None, data: str | None) -> str | None:
    """The recipe named, else the dataset's own (`DATASET_RECIPES`), else None (the paper's defaults)."""
    if recipe:
        return recipe
    return DATASET_RECIPES.get(data or "")


def build_config(recipe: str | None = None, **overrides: Any) -> TrainConfig:
    """Defaults, then the recipe (the dataset's own when none is named), then every override that is not None."""
    recipe = recipe_for(recipe, overrides.get("data"))
    values: dict[str, Any] = read_recipe(recipe) if recipe else {}
    values["recipe"] = recipe or ""
    values.update({k: v for k, v in overrides.items() if v is not None})
    return config_from_dict(values, strict=True)


def config_from_dict(values: Mapping[str, Any], *, strict: bool = False) -> TrainConfig:
    """Rebuild a config saved by `TrainConfig.to_dict` (in a checkpoint or config.yaml); `strict` refuses
    unknown keys, naming the valid ones (a saved config from a newer version keeps loading without it)."""
    unknown = set(values) - config_fields()
    if unknown and strict:
        raise ConfigError(f"unknown config keys {sorted(unknown)}; valid keys: {', '.join(sorted(config_fields()))}")
    return TrainConfig(**{k: v for k, v in values.items() if k in config_fields()})


def resumed_config(saved: Any, requested: Mapping[str, Any], allowed: tuple[str, ...]) -> Any:
    """`saved` (a config dataclass) with the values a resumed run asks for: a value equal to the saved one is
    accepted whatever the key; a real change is refused, naming it, unless its key is in `allowed`."""
    candidate = dataclasses.replace(saved, **requested)
    changed = [key for key in requested if getattr(candidate, key) != getattr(saved, key)]
    refused = [key for key in changed if key not in allowed]
    if refused:
        shown = "; ".join(f"{key} {getattr(saved, key)!r} -> {getattr(candidate, key)!r}" for key in refused)
        raise ConfigError(
            f"a resumed run keeps its checkpoint's config, and this command changes it: {shown}. "
            f"Only {', '.join(allowed)} may change; start a new run (another --output) to change the rest"
        )
    return candidate
