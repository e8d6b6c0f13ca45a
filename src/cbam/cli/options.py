"""Flags and values shared by the command groups: the training commands' (run, recipe, comparison)."""

from __future__ import annotations

from typing import Any

from cbam.engine.config import parse_key_values
from cbam.errors import ConfigError
from cbam.report import comparison_lines

# ---------------------------------------------------------------------------------------------
# Training commands: `cbam train`, `cbam compare`, `cbam detect train`, `cbam detect compare`


def add_run_arguments(parser: Any, cls: Any, *, skip: tuple[str, ...] = (), resume: bool = False) -> None:
    """The flags of a command that trains runs of `cls`: its output, recipe and every config option."""
    from cbam.engine.config import add_config_arguments, recipe_names

    parser.add_argument("--output", help="run folder for checkpoints, metrics and reports")
    parser.add_argument(
        "--recipe",
        help=f"named recipe ({', '.join(recipe_names(cls))}) or a YAML file of config keys, a run's config.yaml "
        "too (default: the dataset's own where it has one, else the defaults)",
    )
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


def run_config(args: Any, cls: Any, *, skip: tuple[str, ...] = (), **fixed: Any) -> tuple[Any, Any]:
    """(config, checkpoint to resume or None) from a training command's flags (the `skip` given to
    `add_run_arguments`) and `fixed` values."""
    from pathlib import Path

    from cbam.engine.config import build_config, config_arguments, requested_values
    from cbam.engine.run import resolve_resume
    from cbam.tasks import resume_config

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
