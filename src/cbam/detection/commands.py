"""`cbam detect train | eval | predict | compare | profile | models`."""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

from cbam._cli_args import parse_key_values
from cbam.data.loading import default_workers
from cbam.errors import ConfigError
from cbam.extras import require_extra
from cbam.outputs import check_output_file
from cbam.report import format_markdown_table, write_csv


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    values = {
        key: getattr(args, key, None)
        for key in ("data", "output", "detector", "backbone", "attention", "backbone_weights", "epochs", "iterations",
                    "batch_size", "lr", "workers", "seed", "device", "metric")
    }  # fmt: skip
    if getattr(args, "amp", None):
        values["amp"] = True
    if getattr(args, "detector_arg", None):
        values["detector_kwargs"] = parse_key_values(args.detector_arg, "--detector-arg")
    return values


def cmd_train(args: argparse.Namespace) -> int:
    require_extra("detection", "cbam detect")
    from cbam.detection.config import PRESETS, build_detect_config
    from cbam.detection.engine import fit_detector, resume_detect_config
    from cbam.engine.train import resolve_resume

    overrides = _overrides(args)
    if args.resume is not None:
        if args.exist_ok:
            raise ConfigError("--resume continues the run in --output and --exist-ok replaces it; give one")
        checkpoint = resolve_resume(args.resume, Path(args.output))
        requested = {**PRESETS[args.preset], "recipe": args.preset} if args.preset else {}
        requested.update({k: v for k, v in overrides.items() if v is not None})
        config = resume_detect_config(checkpoint, **requested)
    else:
        checkpoint = None
        config = build_detect_config(args.preset, **overrides)
    result = fit_detector(config, resume=checkpoint, exist_ok=args.exist_ok)
    print(f"done: best {100 * result.best_map:.2f} mAP at epoch {result.best_epoch}; run in {result.output}")
    return 0


def _paper_rows(config: Any) -> str:
    """The paper's rows this detector reproduces, for reading beside our figure."""
    from cbam.detection.tables import COLUMNS, PAPER_KEYS, table_rows

    preset = "table7" if config.detector.startswith("faster_rcnn") else "table8"
    rows = [r for r in table_rows(preset) if r.backbone == config.backbone]
    if not rows:
        return ""
    keys = PAPER_KEYS[preset]
    body = [[r.description, *(f"{r.paper[k]:.1f}" for k in keys)] for r in rows]
    return f"\nThe paper ({preset}):\n\n" + format_markdown_table(["Paper row", *(COLUMNS[k] for k in keys)], body)


def _json_ready(value: Any) -> Any:
    """NaN (a class or size range without ground truth) as null, so that strict JSON readers take the report."""
    if isinstance(value, dict):
        return {k: _json_ready(v) for k, v in value.items()}
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


def cmd_eval(args: argparse.Namespace) -> int:
    require_extra("detection", "cbam detect")
    from cbam.detection.data import open_detection_data
    from cbam.detection.engine import collect_detections, eval_loader, eval_transforms, load_detector, score
    from cbam.detection.tables import COLUMNS, metric_keys
    from cbam.engine.checkpoint import CheckpointError
    from cbam.engine.distributed import init_distributed
    from cbam.engine.train import SkipLog
    from cbam.outputs import atomic_write

    if args.save_predictions:
        check_output_file(args.save_predictions, force=args.force)
    dist = init_distributed(args.device)
    loaded = load_detector(Path(args.checkpoint), dist.device)
    config = loaded.config
    data, split = args.data or config.data, args.split or config.val_split
    dataset = open_detection_data(data, split, eval_transforms(config), config.seed)
    if list(dataset.class_names) != loaded.classes:
        raise CheckpointError(
            f"the checkpoint detects {len(loaded.classes)} classes ({', '.join(loaded.classes[:5])}, ...); "
            f"{data} has {len(dataset.class_names)} ({', '.join(dataset.class_names[:5])}, ...)"
        )
    metric = args.metric or config.metric
    skips = SkipLog()
    workers = default_workers() if args.workers is None else args.workers
    loader = eval_loader(dataset, args.batch_size, workers, dist)
    found = collect_detections(loaded.model, loader, config, dist, skips)
    if not dist.is_main:
        return 0
    metrics, evaluator = score(found, dataset, metric, loaded.classes, loaded.category_ids)
    ground_truth = str(dataset.annotation_file) if dataset.annotation_file else f"{data} ({split})"
    report = {**metrics, "metric": metric, "images": len(found), "skipped": skips.count, "ground_truth": ground_truth,
              "checkpoint": str(args.checkpoint)}  # fmt: skip
    if args.save_predictions:
        results = evaluator.results()
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
    print(f"\n{len(found)} images of {ground_truth}" + (f"; {skips.count} unreadable skipped" if skips.count else ""))
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
    from cbam.detection.config import build_detect_config
    from cbam.detection.tables import compare_detectors

    recipe = args.recipe or ("cluttered-digits" if args.data in (None, "cluttered-digits") else
                             {"table7": "coco-faster-rcnn", "table8": "voc-stairnet"}[args.preset])  # fmt: skip
    overrides = _overrides(args)
    overrides.pop("backbone")
    base = build_detect_config(recipe, **overrides)
    runs = Path(args.backbone_runs) if args.backbone_runs else None
    header, rows = compare_detectors(args.preset, base, Path(args.output), backbones=args.backbone,
                                     backbone_runs=runs, exist_ok=args.exist_ok)  # fmt: skip
    print(f"\n## {args.preset} on {base.data}\n")
    print(format_markdown_table(header, rows))
    print(f"\nwritten: {Path(args.output) / 'comparison.md'}, comparison.csv")
    return 0


def cmd_profile(args: argparse.Namespace) -> int:
    from cbam.detection.tables import DetectRow, count_parameters, profile_table

    if args.csv:
        check_output_file(args.csv, force=args.force)
    if args.preset:
        header, rows, records = profile_table(args.preset, args.backbone)
    elif args.detector and args.backbone and len(args.backbone) == 1:
        row = DetectRow("", args.detector, args.detector, args.backbone[0], args.attention, {})
        params = count_parameters(row, args.num_classes, **parse_key_values(args.detector_arg, "--detector-arg"))
        header = ["Detector", "Backbone", "Attention", "Classes", "Params (M)"]
        rows = [[args.detector, args.backbone[0], args.attention, str(args.num_classes), f"{params / 1e6:.3f}"]]
        records = [{"detector": args.detector, "backbone": args.backbone[0], "attention": args.attention,
                    "num_classes": args.num_classes, "params": params}]  # fmt: skip
    else:
        raise ConfigError("give --preset table7|table8, or --detector D --backbone B [--attention A]")
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


def _add_run_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", help="cluttered-digits (default), a VOC folder or a COCO folder")
    parser.add_argument("--output", required=True, help="run folder for checkpoints, metrics and reports")
    parser.add_argument(
        "--exist-ok", action="store_true", help="replace a run already in --output (else refused; see --resume)"
    )
    parser.add_argument("--backbone-weights", help="a `cbam train` checkpoint or torchvision-layout state dict")
    parser.add_argument("--epochs", type=int)
    parser.add_argument("--iterations", type=int, help="run length in steps (instead of epochs)")
    parser.add_argument("--batch-size", type=int, help="global, over all processes")
    parser.add_argument("--lr", type=float)
    parser.add_argument("--workers", type=int)
    parser.add_argument("--seed", type=int)
    parser.add_argument("--device", help="auto, cpu, cuda, cuda:N")
    parser.add_argument("--metric", choices=["coco", "voc07", "voc"])
    parser.add_argument("--amp", action="store_true", help="mixed precision (bf16 on CPU, fp16 on CUDA)")
    parser.add_argument("--detector-arg", action="append", default=[], metavar="KEY=VALUE",
                        help="detector option (min_size=800, size=512, anchor_sizes=[32,64])")  # fmt: skip


def add_detect_commands(commands: argparse._SubParsersAction) -> None:
    """`cbam detect ...` under the main parser's commands."""
    from cbam.detection.config import PRESETS
    from cbam.detection.tables import DETECT_PRESETS

    detect = commands.add_parser("detect", help="object detection: Faster R-CNN (Table 7), SSD/StairNet (Table 8)")
    actions = detect.add_subparsers(dest="detect_command", required=True, metavar="ACTION")

    train = actions.add_parser("train", help="train a detector (default: Faster R-CNN C4 on cluttered-digits)")
    train.add_argument(
        "--preset", choices=sorted(PRESETS), help="a recipe (default: the dataset's own where it has one)"
    )
    train.add_argument("--detector", help="see `cbam detect models`")
    train.add_argument("--backbone", help="resnet18/50/101, resnext..., vgg16, mobilenet_v1")
    train.add_argument("--attention", help="none, se, cbam, ...")
    train.add_argument("--resume", nargs="?", const="last", help="continue the run in --output (or a checkpoint)")
    _add_run_arguments(train)
    train.set_defaults(func=cmd_train)

    evaluate = actions.add_parser("eval", help="COCO mAP or VOC07 mAP@.5 of a checkpoint, beside the paper's")
    evaluate.add_argument("--checkpoint", required=True)
    evaluate.add_argument("--data", help="default: the data it was trained on")
    evaluate.add_argument("--split", help="default: the run's validation split")
    evaluate.add_argument("--metric", choices=["coco", "voc07", "voc"], help="default: the run's")
    evaluate.add_argument("--batch-size", type=int, default=8)
    evaluate.add_argument("--workers", type=int, help="data-loading processes (default: the CPUs available)")
    evaluate.add_argument("--device", default="auto")
    evaluate.add_argument("--json", action="store_true")
    evaluate.add_argument("--save-predictions", metavar="FILE", help="the detections in COCO results format")
    evaluate.add_argument("--force", action="store_true", help="replace an existing --save-predictions file")
    evaluate.set_defaults(func=cmd_eval)

    predict = actions.add_parser("predict", help="draw a checkpoint's detections on images")
    predict.add_argument("--checkpoint", required=True)
    predict.add_argument("images", nargs="+", help="image files")
    predict.add_argument("--output", required=True, help="folder for the drawn PNGs and detections.json")
    predict.add_argument("--score-threshold", type=float, default=0.5)
    predict.add_argument("--device", default="auto")
    predict.add_argument("--force", action="store_true", help="replace the drawings of an earlier prediction")
    predict.set_defaults(func=cmd_predict)

    compare = actions.add_parser("compare", help="train the rows of Table 7 or 8 under one recipe and seed")
    compare.add_argument("--preset", required=True, choices=DETECT_PRESETS)
    compare.add_argument("--recipe", choices=sorted(PRESETS), help="default: by the data")
    compare.add_argument("--backbone", nargs="+", help="only (or instead) these backbones")
    compare.add_argument(
        "--backbone-runs", help="a `cbam compare` folder: each row starts from <backbone>[-<attn>]/best.pt"
    )
    _add_run_arguments(compare)
    compare.set_defaults(func=cmd_compare, detector=None, attention=None)

    profile = actions.add_parser("profile", help="parameters of a table's detectors beside the paper's, or of one")
    profile.add_argument("--preset", choices=DETECT_PRESETS)
    profile.add_argument("--detector", help="or this detector (with --backbone and --attention)")
    profile.add_argument("--backbone", nargs="+", help="only these backbones (with --detector: the backbone)")
    profile.add_argument("--attention", default="none")
    profile.add_argument("--num-classes", type=int, default=20, help="object classes, without the background")
    profile.add_argument("--detector-arg", action="append", default=[], metavar="KEY=VALUE")
    profile.add_argument("--json", action="store_true")
    profile.add_argument("--csv", help="also write the table to this CSV file")
    profile.add_argument("--force", action="store_true", help="replace an existing --csv file")
    profile.set_defaults(func=cmd_profile)

    models = actions.add_parser("models", help="list the registered detectors")
    models.add_argument("pattern", nargs="?", default="*")
    models.set_defaults(func=cmd_models)
