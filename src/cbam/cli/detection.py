"""`cbam detect train | eval | predict | compare | profile | models`."""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

from cbam.cli.options import (
    BATCH_SIZE,
    CHECKPOINT,
    CSV,
    DATA,
    DEVICE,
    FORCE,
    JSON,
    SAVE_PREDICTIONS,
    SPLIT,
    WORKERS,
    ConfigFlag,
    add_comparison_arguments,
    add_run_arguments,
    comparison_options,
    config_from_flags,
    print_comparison,
    printed_or_checked,
    require_comparison_extras,
)
from cbam.engine.config import parse_key_values
from cbam.errors import ConfigError
from cbam.extras import require_extra
from cbam.outputs import check_output_file
from cbam.report import format_markdown_table, write_csv

TABLE_RECIPES = {"table7": "coco-faster-rcnn", "table8": "voc-stairnet"}
COMPARE_SKIP = ("detector", "backbone", "attention")  # options each compare row sets itself, so not flags


def cmd_train(args: argparse.Namespace) -> int:
    require_extra("detection", "cbam detect")
    from cbam.detection.task import DetectionConfig
    from cbam.engine.run import fit

    config, checkpoint = config_from_flags(args, DetectionConfig)
    if printed_or_checked(args, config):
        return 0
    result = fit(config, resume=checkpoint, exist_ok=args.exist_ok)
    print(f"done: best {100 * result.best_value:.2f} mAP at epoch {result.best_epoch}; run in {result.output}")
    return 0


def _paper_rows(config: Any) -> str:
    """The paper's rows this detector reproduces, for reading beside our figure."""
    from cbam.detection.tables import COLUMNS, PAPER_KEYS, table_rows

    table = "table7" if config.detector.startswith("faster_rcnn") else "table8"
    rows = [r for r in table_rows(table) if r.backbone == config.backbone]
    if not rows:
        return ""
    keys = PAPER_KEYS[table]
    body = [[r.description, *(f"{r.paper[k]:.1f}" for k in keys)] for r in rows]
    return f"\nThe paper ({table}):\n\n" + format_markdown_table(["Paper row", *(COLUMNS[k] for k in keys)], body)


def _json_ready(value: Any) -> Any:
    """NaN (a class or size range without ground truth) as null, so that strict JSON readers take the report."""
    if isinstance(value, dict):
        return {k: _json_ready(v) for k, v in value.items()}
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


def cmd_eval(args: argparse.Namespace) -> int:
    require_extra("detection", "cbam detect")
    from cbam.checkpoint import checkpoint_file
    from cbam.detection.predict import evaluate_checkpoint
    from cbam.detection.tables import COLUMNS, metric_keys
    from cbam.outputs import atomic_write

    if args.save_predictions:
        check_output_file(args.save_predictions, force=args.force)
    args.checkpoint = checkpoint_file(args.checkpoint)  # a run folder: its best checkpoint, named below
    scored = evaluate_checkpoint(Path(args.checkpoint), data=args.data, split=args.split, metric=args.metric,
                                 batch_size=args.batch_size, workers=args.workers, device=args.device)  # fmt: skip
    if scored is None:  # not the main process
        return 0
    metrics, metric, config = scored.metrics, scored.metric, scored.config
    found, ground_truth = scored.images, scored.ground_truth
    report = {**metrics, "metric": metric, "images": found, "skipped": scored.skipped, "ground_truth": ground_truth,
              "checkpoint": str(args.checkpoint)}  # fmt: skip
    if args.save_predictions:
        results = scored.evaluator.results()
        atomic_write(Path(args.save_predictions), lambda tmp: tmp.write_text(json.dumps(results)))
        report["predictions"] = str(args.save_predictions)
    if args.json:
        print(json.dumps(_json_ready(report), indent=2, default=float))
        return 0
    keys = metric_keys(metric)
    ours = [args.checkpoint, *(f"{100 * metrics[k]:.1f}" for k in keys)]
    print(format_markdown_table(["Checkpoint", *(COLUMNS[k] for k in keys)], [ours]))
    if metric != "coco":
        per_class = [[name, "-" if ap != ap else f"{100 * ap:.1f}"] for name, ap in metrics["per_class"].items()]
        print("\n" + format_markdown_table(["Class", "AP@.5"], per_class))
    print(f"\n{found} images of {ground_truth}" + (f"; {scored.skipped} unreadable skipped" if scored.skipped else ""))
    print(_paper_rows(config))
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    require_extra("detection", "cbam detect")
    from cbam.detection.predict import predict_files

    written = predict_files(Path(args.checkpoint), [Path(p) for p in args.images], Path(args.output),
                            score_threshold=args.score_threshold, device=args.device, force=args.force)  # fmt: skip
    print(f"{len(written)} images with their detections drawn in {args.output}; detections.json beside them")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    require_extra("detection", "cbam detect")
    require_comparison_extras(args, "cbam detect compare")
    from cbam.detection.compare import compare_detectors
    from cbam.detection.task import DetectionConfig
    from cbam.engine.config import recipe_for

    if not recipe_for(DetectionConfig, args.recipe, args.data or DetectionConfig.data):
        args.recipe = TABLE_RECIPES[args.table]  # other data: the table's own recipe
    base, _ = config_from_flags(args, DetectionConfig, skip=COMPARE_SKIP)
    if printed_or_checked(args, base):
        return 0
    runs = Path(args.backbone_runs) if args.backbone_runs else None
    if runs is not None and not runs.is_dir():
        raise ConfigError(f"--backbone-runs {runs}: no such folder (a `cbam compare` output folder)")
    options = comparison_options(args)
    comparison = compare_detectors(args.table, base, Path(args.output), backbones=args.backbone, backbone_runs=runs,
                                   exist_ok=args.exist_ok, **options)  # fmt: skip
    written = f"{Path(args.output) / 'comparison.md'}, comparison.csv, comparison.json"
    return print_comparison(f"{args.table} on {base.data}, {args.seeds} seed(s)", comparison, written)


def cmd_profile(args: argparse.Namespace) -> int:
    from cbam.detection.tables import DetectRow, count_parameters, profile_table

    if args.csv:
        check_output_file(args.csv, force=args.force)
    if args.table:
        header, rows, records = profile_table(args.table, args.backbone)
    elif args.detector and args.backbone and len(args.backbone) == 1:
        row = DetectRow("", args.detector, args.detector, args.backbone[0], args.attention, {})
        params = count_parameters(
            row, args.num_classes, **parse_key_values(args.detector_kwargs or [], "--detector-arg")
        )
        header = ["Detector", "Backbone", "Attention", "Classes", "Params (M)"]
        rows = [[args.detector, args.backbone[0], args.attention, str(args.num_classes), f"{params / 1e6:.3f}"]]
        records = [{"detector": args.detector, "backbone": args.backbone[0], "attention": args.attention,
                    "num_classes": args.num_classes, "params": params}]  # fmt: skip
    else:
        raise ConfigError("give --table table7|table8, or --detector D --backbone B [--attention A]")
    if args.json:
        print(json.dumps(records, indent=2))
        return 0
    print(format_markdown_table(header, rows))
    if args.csv:
        write_csv(args.csv, header, rows)
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    from cbam.detection import list_detectors

    print("\n".join(list_detectors(args.pattern)))
    return 0


def add_detect_commands(commands: argparse._SubParsersAction) -> None:
    """`cbam detect ...` under the main parser's commands."""
    from cbam.detection.tables import DETECT_TABLES
    from cbam.detection.task import DetectionConfig

    detect = commands.add_parser("detect", help="object detection: Faster R-CNN (Table 7), SSD/StairNet (Table 8)")
    actions = detect.add_subparsers(dest="detect_command", required=True, metavar="ACTION")

    train = actions.add_parser("train", help="train a detector (default: Faster R-CNN C4 on cluttered-digits)")
    add_run_arguments(train, DetectionConfig, resume=True)
    train.set_defaults(func=cmd_train)

    evaluate = actions.add_parser("eval", help="COCO mAP or VOC07 mAP@.5 of a checkpoint, beside the paper's")
    CHECKPOINT.add(evaluate, required=True)
    DATA.add(evaluate)
    SPLIT.add(evaluate, default=None, default_help="the run's validation split")
    evaluate.add_argument("--metric", choices=["coco", "voc07", "voc"], help="default: the run's")
    BATCH_SIZE.add(evaluate, default=8)
    WORKERS.add(evaluate)
    DEVICE.add(evaluate, with_default=True)
    JSON.add(evaluate)
    SAVE_PREDICTIONS.add(evaluate, help="the detections in COCO results format")
    FORCE.add(evaluate, help="replace an existing --save-predictions file")
    evaluate.set_defaults(func=cmd_eval)

    predict = actions.add_parser("predict", help="draw a checkpoint's detections on images")
    CHECKPOINT.add(predict, required=True, help="a .pt checkpoint from cbam detect train")
    predict.add_argument("images", nargs="+", help="image files")
    predict.add_argument("--output", required=True, help="folder for the drawn PNGs and detections.json")
    predict.add_argument("--score-threshold", type=float, default=0.5)
    DEVICE.add(predict, with_default=True)
    FORCE.add(predict, help="replace the drawings of an earlier prediction")
    predict.set_defaults(func=cmd_predict)

    compare = actions.add_parser("compare", help="train the rows of Table 7 or 8 under one recipe over seeds")
    compare.add_argument("--table", required=True, choices=DETECT_TABLES, help="which paper table's rows")
    compare.add_argument("--backbone", nargs="+", help="only (or instead) these backbones")
    compare.add_argument(
        "--backbone-runs",
        help="a `cbam compare` folder: seed s of each row starts from <backbone>[-<attn>]/seed-<s>/best.pt",
    )
    add_comparison_arguments(compare)
    add_run_arguments(compare, DetectionConfig, skip=COMPARE_SKIP)
    compare.set_defaults(func=cmd_compare)

    profile = actions.add_parser("profile", help="parameters of a table's detectors beside the paper's, or of one")
    profile.add_argument("--table", choices=DETECT_TABLES, help="a paper table's detectors")
    profile.add_argument("--detector", help="or this detector (with --backbone and --attention)")
    profile.add_argument("--backbone", nargs="+", help="only these backbones (with --detector: the backbone)")
    ConfigFlag(DetectionConfig, "attention").add(profile, with_default=True)
    profile.add_argument("--num-classes", type=int, default=20, help="object classes, without the background")
    ConfigFlag(DetectionConfig, "detector_kwargs").add(profile)
    JSON.add(profile)
    CSV.add(profile)
    FORCE.add(profile, help="replace an existing --csv file")
    profile.set_defaults(func=cmd_profile)

    models = actions.add_parser("models", help="list the registered detectors")
    models.add_argument("pattern", nargs="?", default="*")
    models.set_defaults(func=cmd_models)
