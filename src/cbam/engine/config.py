"""Run options declared once: each a dataclass field with its type, default, help and the paper's value.

A task's config (`ClassificationConfig`, `DetectionConfig`) is a frozen dataclass deriving from `RunConfig`,
which declares what every run shares. From the same declarations come the command-line flags
(`add_config_arguments`), the YAML recipes (`read_recipe`: unknown keys are refused, naming the valid
ones), the checks, and what a resumed run may change. Precedence, lowest first: the defaults, a recipe
(`cbam/recipes/<task>/<name>.yaml`, or a YAML file; a built-in dataset's own when none is named), then
explicit values. A run's saved `config.yaml` is itself a valid recipe.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import json
import typing
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import yaml

from cbam.data.loading import data_location, default_workers
from cbam.errors import ConfigError, unknown_name
from cbam.networks.request import attention_start

C = TypeVar("C", bound="RunConfig")

ATTACH_INITS: tuple[str, ...] = ("auto", "identity", "paper")


def option(
    default: Any = dataclasses.MISSING,
    help: str = "",
    *,
    paper: Any = None,
    choices: tuple[str, ...] | None = None,
    flag: str | None = None,
    metavar: str | tuple[str, ...] | None = None,
    parse: Callable[[str], Any] | None = None,
    resumable: bool = False,
    cli: bool = True,
    default_factory: Callable[[], Any] | None = None,
) -> Any:
    """A config field: `help` and `paper` (the paper's value) for `--help`, `choices` checked everywhere,
    `flag`/`metavar`/`parse` for its command-line form, `resumable` when a resumed run may change it; `cli=False`
    leaves it out of `add_config_arguments` (a command that takes it adds it with `add_config_argument`)."""
    metadata = {"help": help, "paper": paper, "choices": choices, "flag": flag, "metavar": metavar,
                "parse": parse, "resumable": resumable, "cli": cli}  # fmt: skip
    if default_factory is not None:
        return field(default_factory=default_factory, metadata=metadata)
    if isinstance(default, dict | list):
        return field(default_factory=lambda: type(default)(default), metadata=metadata)
    return field(default=default, metadata=metadata)


def task_default(cls: type, name: str, default: Any, **metadata: Any) -> Any:
    """Option `name` of `cls` as declared there (its help, checks and flag), with a task's own default (and
    `paper` value): the option keeps one declaration and one meaning across tasks."""
    declared = {f.name: f for f in dataclasses.fields(cls)}[name]
    return option(default, **{**declared.metadata, **metadata})


def parse_key_values(pairs: Sequence[str], flag: str) -> dict[str, Any]:
    """`KEY=VALUE` pairs given to `flag`; values are Python literals (`0.7`, `True`, `[32, 64]`) or else strings."""
    values: dict[str, Any] = {}
    for pair in pairs:
        key, sep, text = pair.partition("=")
        if not sep or not key:
            raise ConfigError(f"{flag} expects KEY=VALUE, got {pair!r}")
        try:
            values[key] = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            values[key] = text
    return values


def parse_attention(text: str) -> Any:
    """An attention spec from the command line: a name (`cbam`) or a JSON mapping (`{"name": "cbam", ...}`)."""
    if text.lstrip().startswith("{"):
        try:
            return json.loads(text)
        except json.JSONDecodeError as err:
            raise ConfigError(f"--attention is not valid JSON: {err}") from None
    return text


def attention_option() -> Any:
    """The `attention` option of a task whose network takes one (classification's, detection's backbone's)."""
    from cbam.layers.create import attention_names

    names = ", ".join(attention_names())
    return option("none", f"one of {names}, or a JSON mapping with 'name' and options", parse=parse_attention)


OPTIMIZERS: tuple[str, ...] = ("sgd", "adamw")
AMP_DTYPES: tuple[str, ...] = ("auto", "bfloat16", "float16")


@dataclass(frozen=True)
class RunConfig:
    """What every training run shares, whatever its task: where, how long it is seeded, and how it runs."""

    task: ClassVar[str] = ""
    # Built-in datasets with a recipe of their own, used when no recipe is named.
    dataset_recipes: ClassVar[Mapping[str, str]] = {}

    output: str = option("", "run folder for checkpoints, metrics and reports", cli=False)
    recipe: str = option(
        "",
        "the recipe the values came from: a named recipe or a YAML file of config keys, a run's config.yaml too "
        "(default: the dataset's own where it has one, else the defaults)",
        cli=False,
    )
    epochs: int = option(90, "training epochs", paper=90, resumable=True)
    batch_size: int = option(256, "global batch over all processes", paper=256)
    lr: float = option(
        0.1,
        "learning rate for a global batch of lr_batch images; the optimizer starts at lr x batch_size / lr_batch "
        "(linear scaling, Goyal et al.)",
        paper=0.1,
    )
    lr_batch: int = option(256, "the global batch lr is given for (0: lr as given, whatever the batch)", paper=256)
    optimizer: str = option("sgd", "optimizer", paper="sgd", choices=OPTIMIZERS)
    momentum: float = option(0.9, "SGD momentum", paper=0.9)
    weight_decay: float = option(1e-4, "weight decay", paper=1e-4)
    hflip: bool = option(True, "random horizontal flips", paper=True)
    workers: int = option(
        help="data-loading processes per training process (default: the CPUs available)",
        default_factory=default_workers,
        resumable=True,
    )
    seed: int = option(0, "seed of initialisation, shuffling and augmentation")
    amp: bool = option(False, "mixed precision")
    amp_dtype: str = option("auto", "auto (bf16 on CPU, fp16 on CUDA), bfloat16 or float16", choices=AMP_DTYPES)
    channels_last: bool = option(False, "channels_last memory format", resumable=True)
    compile: bool = option(False, "torch.compile the network", resumable=True)
    sync_bn: bool = option(False, "synchronise BatchNorm statistics across processes (CUDA)")
    freeze_bn_stats: bool = option(False, "normalise with (and keep) the running BatchNorm statistics while training")
    freeze: tuple[str, ...] = option(
        (), "parameter-name patterns kept fixed, e.g. 'conv1.*' 'layer1.*'", metavar="PATTERN"
    )
    freeze_epochs: int = option(0, "epochs the --freeze parameters stay fixed (0: the whole run)")
    eval_first: bool = option(
        False, "evaluate before the first step too (summary.json's `initial`): where a network from --weights starts"
    )
    attention_lr_mult: float = option(
        1.0, "learning-rate multiplier of the attention parameters (new when fine-tuning)"
    )
    attach_init: str = option(
        "auto",
        "attention's start: identity (the network computes what it did until "
        "training moves it; auto when starting from weights) or paper (auto without)",
        choices=ATTACH_INITS,
    )
    device: str = option("auto", "auto, cpu, cuda or cuda:N", resumable=True)

    def __post_init__(self) -> None:
        object.__setattr__(self, "data", data_location(self.data))
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, list):
                object.__setattr__(self, f.name, tuple(value))
            choices = f.metadata.get("choices")
            if choices and value not in choices:
                raise unknown_name(f.name, value, choices)
        for ok, message in self.checks():
            if not ok:
                raise ConfigError(message)

    @classmethod
    def implied_values(cls, values: Mapping[str, Any]) -> dict[str, Any]:
        """Values that follow from others (a task's: the preprocessing of named weights), given the recipe's and
        the explicit values; they rank above the recipe and below explicit values."""
        return {}

    def checks(self) -> list[tuple[bool, str]]:
        """(holds, message) for each constraint on the values; a task adds its own."""
        return [
            (self.epochs >= 1, f"epochs must be at least 1, got {self.epochs}"),
            (self.batch_size >= 1, f"batch_size must be at least 1, got {self.batch_size}"),
            (self.lr > 0, f"lr must be positive, got {self.lr}"),
            (self.lr_batch >= 0, f"lr_batch must be 0 (no scaling) or more, got {self.lr_batch}"),
            (self.workers >= 0, f"workers must be 0 or more, got {self.workers}"),
            (self.freeze_epochs >= 0, f"freeze_epochs must be 0 (the whole run) or more, got {self.freeze_epochs}"),
            (self.attention_lr_mult >= 0, f"attention_lr_mult must be 0 or more, got {self.attention_lr_mult}"),
        ]

    @property
    def start_weights(self) -> str | None:
        """The trained weights the network starts from (a task's `weights` or `backbone_weights`), if any."""
        return None

    @property
    def attention_init(self) -> str:
        """How attention the start weights lack begins: `attach_init`, where `auto` is an exact identity when the
        network starts from weights and the paper's init when it does not."""
        return attention_start(self.attach_init, self.start_weights)

    def attention_start_words(self) -> str:
        """How attention the start weights lack begins, for a run's banner."""
        return "as an exact identity" if self.attention_init == "identity" else "at its own init"

    @property
    def base_lr(self) -> float:
        """The learning rate the optimizer starts from (before warm-up and decay): lr scaled to this global batch."""
        return self.lr * self.batch_size / self.lr_batch if self.lr_batch else self.lr

    def to_dict(self) -> dict[str, Any]:
        """Plain values (tuples as lists): what config.yaml and checkpoints hold, itself a valid recipe."""
        values = dataclasses.asdict(self)
        return {k: list(values[k]) if isinstance(values[k], tuple) else values[k] for k in config_fields(type(self))}


def config_fields(cls: type[RunConfig]) -> dict[str, dataclasses.Field]:
    """The options of `cls` in reading order: where the run goes, then the task's own, then the shared ones."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    shared = [f.name for f in dataclasses.fields(RunConfig)]
    order = [
        "output",
        "recipe",
        *(k for k in fields if k not in shared),
        *(k for k in shared if k not in ("output", "recipe")),
    ]
    return {name: fields[name] for name in order}


def resumable_keys(cls: type[RunConfig]) -> tuple[str, ...]:
    """What a resumed run may change (everything else comes from its checkpoint)."""
    return (*(name for name, f in config_fields(cls).items() if f.metadata.get("resumable")), "output")


# ---------------------------------------------------------------------------------------------
# Recipes


def _recipe_folder(cls: type[RunConfig]) -> Any:
    return resources.files("cbam.recipes").joinpath(cls.task)


def recipe_names(cls: type[RunConfig]) -> list[str]:
    folder = _recipe_folder(cls)
    return sorted(p.name.removesuffix(".yaml") for p in folder.iterdir() if p.name.endswith(".yaml"))


def read_recipe(cls: type[RunConfig], recipe: str) -> dict[str, Any]:
    """Values of a named recipe or of a YAML file (a run's config.yaml too); unknown keys are refused."""
    path = Path(recipe)
    if recipe.endswith((".yaml", ".yml")) or path.exists():
        if not path.is_file():
            raise ConfigError(f"recipe file {recipe} does not exist")
        text = path.read_text(encoding="utf-8")
    elif recipe in recipe_names(cls):
        text = _recipe_folder(cls).joinpath(f"{recipe}.yaml").read_text(encoding="utf-8")
    else:
        raise unknown_name(f"{cls.task} recipe", recipe, recipe_names(cls))
    try:
        values = yaml.safe_load(text) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"recipe {recipe} is not valid YAML: {err}") from None
    if not isinstance(values, dict):
        raise ConfigError(f"recipe {recipe} must be a mapping of config keys, got {type(values).__name__}")
    _refuse_unknown(cls, values, f"recipe {recipe} has")
    return values


def recipe_for(cls: type[RunConfig], recipe: str | None, data: str | None) -> str | None:
    """The recipe named, else the dataset's own, else None (the defaults)."""
    return recipe or cls.dataset_recipes.get(data or "")


def recipe_line(config: RunConfig) -> str:
    """How the banner names the recipe a run trains with."""
    if not config.recipe:
        return "recipe: the defaults"
    own = type(config).dataset_recipes.get(config.data) == config.recipe
    return f"recipe: {config.recipe}" + (" (the dataset's own)" if own else "")


def _refuse_unknown(cls: type[RunConfig], values: Mapping[str, Any], what: str) -> None:
    unknown = sorted(set(values) - set(config_fields(cls)))
    if unknown:
        raise ConfigError(
            f"{what} unknown {cls.task} config keys {unknown}; valid keys: {', '.join(config_fields(cls))}"
        )


def config_from_dict(cls: type[C], values: Mapping[str, Any]) -> C:
    """A config from plain values (a recipe, config.yaml, a checkpoint's); unknown keys are refused."""
    _refuse_unknown(cls, values, "got")
    return cls(**values)


def requested_values(
    cls: type[RunConfig], recipe: str | None, given: Mapping[str, Any], *, dataset_recipe: bool = True
) -> dict[str, Any]:
    """The recipe's values (with `dataset_recipe`, the dataset's own when none is named), then those implied by
    them (`implied_values`), then every given value that is not None; mappings (builder options) given are added
    to the recipe's."""
    if dataset_recipe:
        recipe = recipe_for(cls, recipe, given.get("data") or getattr(cls, "data", None))
    values: dict[str, Any] = read_recipe(cls, recipe) if recipe else {}
    if recipe:
        # a run's config.yaml names the recipe it came from: keep that, so the config it gives is the one it holds
        values["recipe"] = values.get("recipe") or recipe
    given = {key: value for key, value in given.items() if value is not None}
    values.update(cls.implied_values({**values, **given}))
    for key, value in given.items():
        values[key] = {**values.get(key, {}), **value} if isinstance(value, Mapping) else value
    return values


def build_config(cls: type[C], recipe: str | None = None, **given: Any) -> C:
    """Defaults, then the recipe (the dataset's own when none is named), then every given value not None."""
    return config_from_dict(cls, requested_values(cls, recipe, given))


def with_resume_changes(saved: C, requested: Mapping[str, Any]) -> C:
    """`saved` with the values a resumed run asks for: a value equal to the saved one is accepted whatever the
    key (the command that started the run can be repeated); a real change only where the option is resumable."""
    allowed = resumable_keys(type(saved))
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


def config_yaml(config: RunConfig | Mapping[str, Any]) -> str:
    """A config as YAML: what `--print-config` shows and config.yaml holds (a valid recipe)."""
    values = config.to_dict() if isinstance(config, RunConfig) else dict(config)
    return yaml.safe_dump(values, sort_keys=False)


# ---------------------------------------------------------------------------------------------
# Command-line flags, generated from the declarations


def _flag(f: dataclasses.Field) -> str:
    return f.metadata.get("flag") or "--" + f.name.replace("_", "-")


def _help(f: dataclasses.Field) -> str:
    text = f.metadata.get("help", "")
    if f.metadata.get("paper") is not None:
        return f"{text} (paper: {f.metadata['paper']})"
    if f.default is not dataclasses.MISSING and f.default not in ("", None) and "default" not in text:
        return f"{text} (default: {f.default})"
    return text


def config_help(cls: type[RunConfig], name: str) -> str:
    """The `--help` text of option `name` of `cls`: its help, then the paper's value or the default."""
    return _help(config_fields(cls)[name])


def add_config_argument(
    parser: argparse.ArgumentParser, cls: type[RunConfig], name: str, *, with_default: bool = False, **overrides: Any
) -> None:
    """The flag of option `name` of `cls`, from its declaration: its type, metavar and help. It defaults to None
    (what the user did not give comes from the recipe), or with `with_default` to the option's own default;
    `overrides` are argparse's keywords for a command that takes the flag in its own sense (`help`, `default`)."""
    f = config_fields(cls)[name]
    kind, options = typing.get_type_hints(cls)[name], {"help": _help(f), "default": None}
    if with_default:
        options["default"] = f.default if f.default is not dataclasses.MISSING else f.default_factory()
    if f.metadata.get("choices"):  # shown, and checked by the config: one line naming the close ones
        options["metavar"] = "{" + ",".join(f.metadata["choices"]) + "}"
    if f.metadata.get("metavar"):
        options["metavar"] = f.metadata["metavar"]
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    if kind is bool:
        options["action"] = argparse.BooleanOptionalAction
    elif f.metadata.get("parse") is not None or kind is Any:
        options["type"] = str
    elif origin is dict:
        options.update(action="append", metavar=f.metadata.get("metavar") or "KEY=VALUE")
    elif origin is tuple:
        options.update(type=args[0], nargs="+" if args[-1] is Ellipsis else len(args))
    elif kind in (int, float, str):
        options["type"] = kind
    else:  # `str | None` and the like
        options["type"] = next(a for a in args if a is not type(None))
    parser.add_argument(_flag(f), dest=name, **{**options, **overrides})


def add_config_arguments(parser: argparse.ArgumentParser, cls: type[RunConfig], skip: tuple[str, ...] = ()) -> None:
    """One flag per option of `cls` (left out: `skip` and options not meant for the command line); every flag
    defaults to None, so that what the user did not give comes from the recipe."""
    for name, f in config_fields(cls).items():
        if name in skip or not f.metadata.get("cli", True):
            continue
        add_config_argument(parser, cls, name)


def config_arguments(args: argparse.Namespace, cls: type[RunConfig], skip: tuple[str, ...] = ()) -> dict[str, Any]:
    """The options of `cls` given through the flags `add_config_arguments` made (same `skip`), parsed; those
    left out are not returned."""
    hints = typing.get_type_hints(cls)
    values: dict[str, Any] = {}
    for name, f in config_fields(cls).items():
        if name in skip or not f.metadata.get("cli", True):
            continue
        value = getattr(args, name, None)
        if value is None:
            continue
        if f.metadata.get("parse") is not None:
            value = f.metadata["parse"](value)
        elif typing.get_origin(hints[name]) is dict:
            value = parse_key_values(value, _flag(f))
        values[name] = value
    return values
