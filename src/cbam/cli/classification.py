"""`cbam train`, `cbam eval` and `cbam compare`: classification runs, a checkpoint's error, comparisons over seeds."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from cbam.classification.compare import COMPARE_TABLES
from cbam.classification.task import ClassificationConfig
from cbam.cli.options import (
    ATTENTION,
    BATCH_SIZE,
    CHECKPOINT,
    DATA,
    DEVICE,
    EVAL_RESIZE,
    FORCE,
    IMAGE_SIZE,
    JSON,
    SAVE_PREDICTIONS,
    SPLIT,
    WORKERS,
    add_comparison_arguments,
    add_run_arguments,
    comparison_options,
    config_from_flags,
    print_comparison,
    printed_or_checked,
    require_comparison_extras,
)
from cbam.errors import ConfigError
from cbam.outputs import check_output_file

COMPARE_SKIP = ("arch", "attention")  # options each compare row sets itself, so not flags


def cmd_train(args: argparse.Namespace) -> int:
    from cbam.classification.task import ClassificationConfig
    from cbam.engine.run import fit

    config, checkpoint = config_from_flags(args, ClassificationConfig)
    if printed_or_checked(args, config):
        return 0
    if not config.data:
        raise ConfigError("give --data (an ImageNet-layout folder, cifar10, cifar100 or cluttered-digits)")
    result = fit(config, resume=checkpoint, exist_ok=args.exist_ok)
    final = result.final
    top5 = _top5_text(final["val_top5_error"], Path(result.output) / "last.pt")
    print(
        f"done: val top-1 error {final['val_top1_error']:.2f}%, {top5} "
        f"(best top-1 {result.best_value:.2f}% at epoch {result.best_epoch}); run in {result.output}"
    )
    return 0


def _top5_text(error: float, checkpoint: Any) -> str:
    """`top-5 error 1.23%`, or, with 5 classes or fewer (where the 5 best always hold the label), that it does not
    apply."""
    from cbam.checkpoint import read_checkpoint

    classes = len(read_checkpoint(checkpoint).classes or [])
    return f"top-5 error {error:.2f}%" if classes == 0 or classes > 5 else f"top-5 error n/a ({classes} classes)"


def cmd_eval(args: argparse.Namespace) -> int:
    from pathlib import Path

    from cbam.checkpoint import checkpoint_file
    from cbam.classification.evaluate import evaluate_checkpoint

    if args.save_predictions:
        check_output_file(args.save_predictions, force=args.force)
    args.checkpoint = checkpoint_file(args.checkpoint)  # a run folder: its best checkpoint, named below
    result = evaluate_checkpoint(
        args.checkpoint,
        args.data,
        split=args.split,
        batch_size=args.batch_size,
        workers=args.workers,
        image_size=args.image_size,
        eval_resize=args.eval_resize,
        device=args.device,
        predictions=Path(args.save_predictions) if args.save_predictions else None,
    )
    if args.json:
        print(json.dumps(result.to_dict(), indent=2))
    else:
        top5 = _top5_text(result.top5_error, args.checkpoint)
        print(
            f"{args.checkpoint}: top-1 error {result.top1_error:.2f}%, {top5}, "
            f"loss {result.loss:.4f} on {result.images} images"
            + (f" ({result.skipped} unreadable skipped)" if result.skipped else "")
        )
    return 0


def compare_rows(args: argparse.Namespace) -> list:
    """The networks `cbam compare` trains: a paper table's rows, or one network with several attentions."""
    from cbam.classification.compare import attention_rows, table_rows

    if args.table and args.attention:
        raise ConfigError("give --table (a paper table's rows) or --attention (attentions on one --arch), not both")
    if args.table:
        return table_rows(args.table, args.arch)
    if not args.attention or not args.arch or len(args.arch) != 1:
        raise ConfigError(
            "give --table, or one --arch with --attention (e.g. --arch resnet18 --attention none,se,cbam)"
        )
    return attention_rows(args.arch[0], [a.strip() for a in args.attention.split(",") if a.strip()])


def cmd_compare(args: argparse.Namespace) -> int:
    require_comparison_extras(args, "cbam compare")
    from pathlib import Path

    from cbam.classification.compare import baselines, check_networks, row_configs, run_compare
    from cbam.classification.task import ClassificationConfig

    config, _ = config_from_flags(args, ClassificationConfig, skip=COMPARE_SKIP)
    rows = compare_rows(args)
    baselines(rows, args.baseline)
    if args.print_config:  # the first run's config: the recipe with the first row's network and seed
        print(f"# every run: this, with its row's network and its seed (of {args.seeds} from {config.seed})")
        printed_or_checked(args, row_configs(rows, config, Path(args.output or "."), 1)[0][0])
        return 0
    printed_or_checked(args, config)
    if not config.data:
        raise ConfigError("give --data (an ImageNet-layout folder, cifar10, cifar100 or cluttered-digits)")
    check_networks(rows, config)
    options = comparison_options(args)
    comparison = run_compare(rows, config, Path(args.output), baseline=args.baseline, exist_ok=args.exist_ok,
                             **options)  # fmt: skip
    title = args.table or f"{args.arch[0]}: {args.attention}"
    written = f"{Path(args.output) / 'comparison.md'}, comparison.csv, comparison.json, curves.png, errors.png"
    return print_comparison(f"{title} on {args.data}, {args.seeds} seed(s)", comparison, written)


def add_classification_commands(commands: argparse._SubParsersAction) -> None:
    """`cbam train`, `cbam eval` and `cbam compare` under the main parser's commands."""
    train = commands.add_parser("train", help="train a network (the paper's ImageNet recipe by default)")
    add_run_arguments(train, ClassificationConfig, resume=True)
    train.set_defaults(func=cmd_train)

    evaluate = commands.add_parser("eval", help="top-1/top-5 error of a checkpoint (single centre crop)")
    CHECKPOINT.add(evaluate, required=True)
    DATA.add(evaluate)
    SPLIT.add(evaluate)
    BATCH_SIZE.add(evaluate, default=64)
    WORKERS.add(evaluate)
    DEVICE.add(evaluate, with_default=True)
    IMAGE_SIZE.add(evaluate, help="centre crop side (default: the run's): another scale than it was trained at")
    EVAL_RESIZE.add(evaluate, default_help="the run's")
    JSON.add(evaluate, help="print top1_error, top5_error, loss, images as JSON")
    SAVE_PREDICTIONS.add(evaluate, help="each image's label and five best classes as CSV (file, label, top1..top5)")
    FORCE.add(evaluate, help="replace an existing --save-predictions file")
    evaluate.set_defaults(func=cmd_eval)

    compare = commands.add_parser(
        "compare", help="train networks over seeds and say, with intervals, whether each beats its baseline"
    )
    compare.add_argument("--table", choices=COMPARE_TABLES, help="a paper table's rows")
    compare.add_argument("--arch", action="append", help="the network (with --attention), or only this network's "
                         "rows of --table (repeatable); torchvision:/timm: names too")  # fmt: skip
    ATTENTION.add(compare, help="attentions to compare on --arch, comma-separated: none,se,cbam")
    compare.add_argument("--baseline", help="the attention every row is compared with (default: each network's first)")
    add_comparison_arguments(compare)
    add_run_arguments(compare, ClassificationConfig, skip=COMPARE_SKIP)
    compare.set_defaults(func=cmd_compare)
