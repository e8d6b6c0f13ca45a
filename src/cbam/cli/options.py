"""Flags several commands take, each declared once, and the training commands' shared flags and values.

A flag that is a run option comes from the config's own declaration (`engine.config.option`, through
`add_config_argument`): `--attention`, `--model-arg`, `--detector-arg`, `--image-size`, `--eval-resize`,
`--device`, and a training command's `--output` and `--recipe`. The others are declared in the table below.
Each is added with `FLAG.add(parser, **overrides)`: a command gives its own default, or says in `help` what the
flag means for it (`--force`: which file it replaces), and keeps the declared type, action, metavar and choices.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from cbam.classification.task import ClassificationConfig
from cbam.engine.config import RunConfig, add_config_argument, config_fields, parse_key_values
from cbam.errors import ConfigError
from cbam.explain import CAM_METHODS
from cbam.report import comparison_lines


@dataclass(frozen=True)
class Flag:
    """A flag declared here: its name and argparse keywords; the default, when there is one, is named in the help
    (as the config's flags do)."""

    name: str
    options: Mapping[str, Any] = field(default_factory=dict)
    default_help: str | None = None  # what the default is where it is no value (`--data`: the checkpoint's)

    @property
    def text(self) -> str:
        """The declared help."""
        return self.options.get("help", "")

    def add(self, parser: Any, *, default_help: str | None = None, **overrides: Any) -> None:
        """The flag on `parser`; `default_help` says what the default is where the command gives none."""
        default_help = self.default_help if default_help is None else default_help
        if default_help is not None:
            overrides.setdefault("help", f"{self.text} (default: {default_help})")
        options = {**self.options, **overrides}
        default, text = options.get("default"), options.get("help", "")
        if default not in (None, False, []) and text and "default" not in text:
            options["help"] = f"{text} (default: {default})"
        parser.add_argument(self.name, **options)


@dataclass(frozen=True)
class ConfigFlag:
    """A flag that is option `name` of the config `cls`: generated from its declaration (see
    `engine.config.add_config_argument`, whose keywords `add` takes)."""

    cls: type[RunConfig]
    name: str

    @property
    def text(self) -> str:
        """The option's declared help."""
        return config_fields(self.cls)[self.name].metadata.get("help", "")

    def add(self, parser: Any, *, default_help: str | None = None, **overrides: Any) -> None:
        """The flag on `parser`; `default_help` says what the default is where the command gives none."""
        if default_help is not None:
            overrides.setdefault("help", f"{self.text} (default: {default_help})")
        add_config_argument(parser, self.cls, self.name, **overrides)


def flag(name: str, *, default_help: str | None = None, **options: Any) -> Flag:
    return Flag(name, options, default_help)


# Run options several commands take outside a training run.
ATTENTION = ConfigFlag(ClassificationConfig, "attention")
MODEL_ARG = ConfigFlag(ClassificationConfig, "model_kwargs")
IMAGE_SIZE = ConfigFlag(ClassificationConfig, "image_size")
EVAL_RESIZE = ConfigFlag(ClassificationConfig, "eval_resize")
DEVICE = ConfigFlag(RunConfig, "device")  # with_default=True: the evaluating commands' default, auto

# What the evaluating commands read (`cbam eval`, `cbam detect eval`, `cbam localize`, `cbam cam`, `cbam survey`).
CHECKPOINT = flag(
    "--checkpoint", help="a .pt checkpoint or .safetensors weights from cbam train, or its run folder (its best.pt)"
)
DATA = flag("--data", help="dataset", default_help="the one the checkpoint was trained on")
SPLIT = flag("--split", default="val", help="the split to read: val or test")
BATCH_SIZE = flag("--batch-size", type=int, help="images per batch")
WORKERS = flag("--workers", type=int, help="data-loading processes (default: the CPUs available)")
SEED = flag("--seed", type=int, default=0, help="seed of the random choice of images")
METHOD = flag("--method", default="gradcam", choices=CAM_METHODS, help="the class activation map")
LAYER = flag("--layer", help="the module to explain, by dotted name (default: the last block)")
INPUT_SIZE = flag("--input-size", type=int, default=224, help="image side in pixels")

# What the commands write.
JSON = flag("--json", action="store_true", help="print the result as JSON (machine-readable)")
CSV = flag("--csv", help="also write the table to this CSV file")
SAVE_PREDICTIONS = flag("--save-predictions", metavar="FILE", help="also write the predictions to FILE")
FORCE = flag("--force", action="store_true", help="replace an existing output file")


# ---------------------------------------------------------------------------------------------
# Training commands: `cbam train`, `cbam compare`, `cbam detect train`, `cbam detect compare`


def add_run_arguments(parser: Any, cls: Any, *, skip: tuple[str, ...] = (), resume: bool = False) -> None:
    """The flags of a command that trains runs of `cls`: its output, recipe and every config option."""
    from cbam.engine.config import add_config_arguments, config_help, recipe_names

    add_config_argument(parser, cls, "output")
    recipes = config_help(cls, "recipe").removeprefix("the recipe the values came from: ")
    add_config_argument(parser, cls, "recipe", help=f"{recipes}; named: {', '.join(recipe_names(cls))}")
    parser.add_argument(
        "--exist-ok", action="store_true", help="replace a run already in --output (else refused; see --resume)"
    )
    parser.add_argument(
        "--print-config", action="store_true", help="print the resolved config (a valid recipe) and stop"
    )
    if resume:
        parser.add_argument(
            "--resume",
            nargs="?",
            const="last",
            metavar="CHECKPOINT",
            help="continue from the last checkpoint in --output, or from CHECKPOINT; flags equal to the run's "
            "are accepted",
        )
    add_config_arguments(parser, cls, skip)


def add_comparison_arguments(parser: Any) -> None:
    """The flags of a comparison over seeds (`cbam compare`, `cbam detect compare`): seeds, parallel runs and the
    verdict's resolution."""
    from cbam.engine.jobs import SCHEDULERS

    parser.add_argument("--seeds", type=int, default=1, help="runs per network, seeds from --seed on (5 for intervals)")
    parser.add_argument("--jobs", type=int, default=1, help="runs at a time on this machine, each in its own process "
                        "with its share of the CPU threads (and one GPU each where there are GPUs)")  # fmt: skip
    parser.add_argument("--scheduler", choices=SCHEDULERS, help="run each run as a job of this scheduler through "
                        "submitit (slurm; local: processes on this machine)")  # fmt: skip
    parser.add_argument("--scheduler-arg", action="append", default=[], metavar="KEY=VALUE", help="a submitit "
                        "option: slurm_partition=gpu, timeout_min=600, gpus_per_node=1, ...")  # fmt: skip
    parser.add_argument("--resolve", type=float, default=0.5,
                        help="the difference (points) a verdict plans seeds and images for (default: 0.5)")  # fmt: skip


def require_comparison_extras(args: Any, command: str) -> None:
    """The extras a comparison needs, the scheduler's first (the more specific one to name): one line if missing."""
    from cbam.extras import require_extra

    if args.scheduler:
        require_extra("cluster", f"--scheduler {args.scheduler}")
    require_extra("compare", command)


def comparison_options(args: Any) -> dict[str, Any]:
    """The keywords `add_comparison_arguments`' flags give a comparison (`seeds`, `jobs`, `scheduler`, ...), with
    what is wrong with them said in one line before anything trains."""
    if args.seeds < 1:
        raise ConfigError(f"--seeds must be at least 1, got {args.seeds}")
    if args.seeds == 1:
        print("one seed per network: intervals need at least 2 seeds (--seeds 5); training one run each")
    scheduler_options = parse_key_values(args.scheduler_arg, "--scheduler-arg")
    return {"seeds": args.seeds, "jobs": args.jobs, "scheduler": args.scheduler,
            "scheduler_options": scheduler_options, "resolve": args.resolve}  # fmt: skip


def config_from_flags(args: Any, cls: Any, *, skip: tuple[str, ...] = (), **fixed: Any) -> tuple[Any, Any]:
    """(config, checkpoint to resume or None) from a training command's flags (the `skip` given to
    `add_run_arguments`) and `fixed` values."""
    from pathlib import Path

    from cbam.engine.config import build_config, config_arguments, requested_values
    from cbam.engine.run import resolve_resume
    from cbam.runs import resume_config

    given = {**config_arguments(args, cls, skip), **fixed, "output": args.output}
    if getattr(args, "resume", None) is None:
        return build_config(cls, args.recipe, **given), None
    if args.exist_ok:
        raise ConfigError("--resume continues the run in --output and --exist-ok replaces it; give one")
    if not args.output:
        raise ConfigError("give --output: the run folder to continue")
    checkpoint = resolve_resume(args.resume, Path(args.output))
    requested = requested_values(cls, args.recipe, given, dataset_recipe=False)
    return resume_config(checkpoint, **requested), checkpoint


def printed_or_checked(args: Any, config: Any) -> bool:
    """With --print-config, print the config and say so (the command stops); else insist on --output."""
    from cbam.engine.config import config_yaml

    if args.print_config:
        print(config_yaml(config), end="")
        return True
    if not args.output:
        raise ConfigError("give --output: the folder the run writes its checkpoints and reports to")
    return False


def print_comparison(title: str, comparison: Any, written: str) -> int:
    """A comparison's table, verdicts, failures and notes as both compare commands print them, then the files
    `written`; the exit code is 1 when a run failed."""
    print(f"\n## {title}\n")
    print("\n".join(comparison_lines(comparison.header, comparison.rows, comparison.verdicts, comparison.failures,
                                    comparison.notes)))  # fmt: skip
    print(f"\nwritten: {written}")
    return 1 if comparison.failures else 0
