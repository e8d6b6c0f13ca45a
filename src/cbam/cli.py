"""The `cbam` command line: argument parsing only; every command calls the library."""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sys
import traceback
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from cbam._cli_args import (
    add_comparison_arguments,
    add_run_arguments,
    comparison_options,
    printed_or_checked,
    require_comparison_extras,
    run_config,
)
from cbam.classification.compare import COMPARE_TABLES
from cbam.classification.task import ClassificationConfig
from cbam.detection.commands import add_detect_commands
from cbam.engine.config import parse_attention, parse_key_values
from cbam.engine.distributed import shutdown_distributed
from cbam.errors import ConfigError, UserError
from cbam.explain import CAM_METHODS
from cbam.export import EXPORT_FORMATS
from cbam.extras import require_extra
from cbam.layers.create import attention_names
from cbam.networks.build import create_model
from cbam.networks.complexity import RowComparison, compare_row, compare_table, find_paper_rows, measure_arch
from cbam.networks.counting import complexity_dict
from cbam.networks.names import list_models, model_entry
from cbam.outputs import check_output_file, check_writable_folder
from cbam.paper import PAPER_TABLES
from cbam.report import comparison_lines, format_markdown_table, write_csv
from cbam.survey.commands import add_survey_commands
from cbam.version import __version__

COMPARE_SKIP = ("arch", "attention")  # options each compare row sets itself, so not flags


def _parse_model_args(pairs: Sequence[str]) -> dict[str, Any]:
    """`KEY=VALUE` pairs of `--model-arg`; values are Python literals (`0.7`, `True`) or else strings."""
    return parse_key_values(pairs, "--model-arg")


def _fmt(value: float | None, decimals: int) -> str:
    return "" if value is None else f"{value:.{decimals}f}"


def _fmt_diff(value: float | None, decimals: int) -> str:
    return "" if value is None else f"{value:+.{decimals}f}"


def comparison_markdown(comparisons: Sequence[RowComparison]) -> str:
    """Our params/GFLOPs beside the printed figures and the difference; known reasons as footnotes."""
    header = ["Row", "Params (M)", "paper", "diff", "GFLOPs", "paper", "diff", "note"]
    notes: list[str] = []
    rows = []
    for c in comparisons:
        d = c.row.gflops_decimals
        marker = ""
        if c.row.note:
            if c.row.note not in notes:
                notes.append(c.row.note)
            marker = f"[{notes.index(c.row.note) + 1}]"
        rows.append(
            [
                c.row.description,
                f"{c.ours.params_m:.2f}",
                _fmt(c.row.params_m, 2),
                _fmt_diff(c.params_diff, 2),
                f"{c.ours.gflops:.{d}f}",
                _fmt(c.row.gflops, d),
                _fmt_diff(c.gflops_diff, d),
                marker,
            ]
        )
    footnotes = "".join(f"\n[{i}] {note}." for i, note in enumerate(notes, 1))
    return format_markdown_table(header, rows) + ("\n" + footnotes if footnotes else "")


def _profile_tables(args: argparse.Namespace) -> int:
    results = {table: compare_table(table) for table in args.paper_table}
    if args.json:
        print(json.dumps({f"table{t}": [c.to_dict() for c in rows] for t, rows in results.items()}, indent=2))
        return 0
    for table, comparisons in results.items():
        matched = sum(c.matches for c in comparisons)
        print(f"## Paper Table {table}: {matched}/{len(comparisons)} rows match to printed precision\n")
        print(comparison_markdown(comparisons))
        print()
    return 0


def _profile_model(args: argparse.Namespace) -> int:
    entry = model_entry(args.arch)
    attention = entry.fixed.get("attention", "none") if args.attention is None else parse_attention(args.attention)
    kwargs = _parse_model_args(args.model_arg)
    size = (3, args.input_size, args.input_size)
    ours = measure_arch(args.arch, attention, input_size=size, **kwargs)
    rows = find_paper_rows(entry.builder.__name__, attention, kwargs) if args.input_size == 224 else []
    comparisons = [compare_row(row) for row in rows if row.params_m is not None]
    if args.json:
        report = {"arch": args.arch, "attention": attention, "model_kwargs": kwargs, **complexity_dict(ours)}
        report["paper"] = [c.to_dict() for c in comparisons]
        print(json.dumps(report, indent=2))
        return 0
    print(f"{args.arch} attention={attention} {kwargs or ''}".rstrip())
    print(f"  params: {ours.params:,} ({ours.params_m:.2f}M)")
    print(f"  GFLOPs (multiply-accumulates at {args.input_size}x{args.input_size}): {ours.gflops:.3f}")
    if comparisons:
        print("\nBeside the paper (ResNet FLOPs counted with the stride on the first 1x1, as the paper did):\n")
        print(comparison_markdown(comparisons))
    return 0


def cmd_profile(args: argparse.Namespace) -> int:
    if args.paper_table and args.arch:
        raise ConfigError("give a model name or --paper-table, not both")
    if args.paper_table:
        return _profile_tables(args)
    if not args.arch:
        raise ConfigError("give a model name (see `cbam models`) or --paper-table N")
    return _profile_model(args)


def cmd_models(args: argparse.Namespace) -> int:
    names = list_models(args.pattern, include_shortcuts=not args.base_only)
    if not names:
        raise ConfigError(f"no model matches {args.pattern!r}")
    print("\n".join(names))
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from cbam.classification.task import ClassificationConfig
    from cbam.tasks import fit

    config, checkpoint = run_config(args, ClassificationConfig)
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


FIGURE_FORMATS: tuple[str, ...] = (".png", ".pdf", ".svg")


def cmd_cam(args: argparse.Namespace) -> int:
    require_extra("explain", "cbam cam")
    from pathlib import Path

    from cbam.explain.figure import draw_figure, load_networks, write_gallery

    if args.list_layers:
        networks, _ = load_networks([Path(args.checkpoint[0])])
        print("\n".join(name for name, _ in networks[0].model.named_modules() if name))
        return 0
    if not (args.output or args.html):
        raise ConfigError("give --output FIGURE (.png, .pdf or .svg), --html FOLDER, or both")
    if args.output:
        if Path(args.output).suffix.lower() not in FIGURE_FORMATS:
            raise ConfigError(f"--output {args.output}: the figure's name must end in {', '.join(FIGURE_FORMATS)}")
        check_output_file(args.output, force=args.force)
    if args.html:
        check_writable_folder(Path(args.html), "gallery folder")
        check_output_file(Path(args.html) / "index.html", force=args.force)
    networks, trained_on = load_networks([Path(p) for p in args.checkpoint])
    data = args.data or trained_on
    if not data:
        raise ConfigError("give --data: the checkpoint does not record its dataset")
    indices = [int(i) for i in args.images] if args.images else None
    options = {
        "split": args.split,
        "indices": indices,
        "seed": args.seed,
        "correct_only": args.correct_only,
        "method": args.method,
        "layer": args.layer,
        "with_attention_maps": args.attention_maps,
    }
    if args.html:
        page = write_gallery(networks, data, Path(args.html), count=args.count, **options)
        print(f"gallery: {page}")
    if args.output:
        shown = draw_figure(networks, data, Path(args.output), count=args.count, **options)
        print(f"{args.output}: {len(shown)} images ({', '.join(map(str, shown))}) x {len(networks)} networks")
    return 0


def cmd_localize(args: argparse.Namespace) -> int:
    require_extra("explain", "cbam localize")
    from pathlib import Path

    from cbam.explain.scores import format_interval, localize_checkpoint

    options = {
        "split": args.split,
        "boxes": Path(args.boxes) if args.boxes else None,
        "method": args.method,
        "layer": args.layer,
        "threshold": args.threshold,
        "batch_size": args.batch_size,
        "limit": args.limit,
        "device": args.device,
    }
    if args.csv:
        check_output_file(args.csv, force=args.force)
    scores = [localize_checkpoint(Path(path), args.data, **options) for path in args.checkpoint]
    if args.json:
        print(json.dumps([s.to_dict() for s in scores], indent=2))
        return 0
    header = ["Checkpoint", "Images", "Pointing game (%)", "Energy in box (%)", f"IoU at {args.threshold} (%)"]
    rows = [
        [s.name, str(s.images), format_interval(s.pointing_game), format_interval(s.energy), format_interval(s.iou)]
        for s in scores
    ]
    print(format_markdown_table(header, rows))
    print(f"\n{args.method} of the ground-truth class; means with 95% bootstrap intervals over the images (renderings "
          "of one source image resampled together), for this network alone, not over seeds")  # fmt: skip
    if args.csv:
        write_csv(args.csv, header, rows)
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

    from cbam.classification.compare import baselines, check_networks, run_compare, run_configs
    from cbam.classification.task import ClassificationConfig

    config, _ = run_config(args, ClassificationConfig, skip=COMPARE_SKIP)
    rows = compare_rows(args)
    baselines(rows, args.baseline)
    if args.print_config:  # the first run's config: the recipe with the first row's network and seed
        print(f"# every run: this, with its row's network and its seed (of {args.seeds} from {config.seed})")
        printed_or_checked(args, run_configs(rows, config, Path(args.output or "."), 1)[0][0])
        return 0
    printed_or_checked(args, config)
    if not config.data:
        raise ConfigError("give --data (an ImageNet-layout folder, cifar10, cifar100 or cluttered-digits)")
    check_networks(rows, config)
    options = comparison_options(args)
    comparison = run_compare(rows, config, Path(args.output), baseline=args.baseline, exist_ok=args.exist_ok,
                             **options)  # fmt: skip
    title = args.table or f"{args.arch[0]}: {args.attention}"
    print(f"\n## {title} on {args.data}, {args.seeds} seed(s)\n")
    print("\n".join(comparison_lines(comparison.header, comparison.rows, comparison.verdicts, comparison.failures,
                                    comparison.notes)))  # fmt: skip
    print(f"\nwritten: {Path(args.output) / 'comparison.md'}, comparison.csv, comparison.json, curves.png, errors.png")
    return 1 if comparison.failures else 0


def cmd_convert(args: argparse.Namespace) -> int:
    from cbam.networks.pretrained import convert_file

    check_output_file(args.destination, force=args.force)
    network = convert_file(args.source, args.destination)
    print(
        f"{args.source}: {network.arch} attention={json.dumps(network.attention)}, {network.num_classes} classes "
        f"-> {args.destination}"
    )
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from cbam.export import export_model, onnx_max_difference, require_onnx

    if not (args.checkpoint or args.arch):
        raise ConfigError("give --checkpoint FILE, a model name (--arch) for fresh weights, or both")
    check_output_file(args.output, force=args.force)
    if args.format == "onnx":
        require_onnx(runtime=True)
    attention = parse_attention(args.attention) if args.attention else None
    model_kwargs = _parse_model_args(args.model_arg)
    if args.checkpoint:
        from cbam.networks.pretrained import load_pretrained

        model = load_pretrained(args.checkpoint, args.arch, attention=attention, **model_kwargs)
    else:
        model = create_model(args.arch, attention=attention, **model_kwargs)
    size = (3, args.input_size, args.input_size)
    path = export_model(model, args.output, args.format, size, force=args.force)
    print(f"wrote {path} ({args.format}; batch, height and width dynamic)")
    if args.format == "onnx":
        shapes = [(1, *size), (2, 3, args.input_size + 32, args.input_size + 16)]
        check = onnx_max_difference(model, path, shapes)
        print(
            f"onnxruntime vs PyTorch over {shapes}: max abs difference {check.max_abs:.3g}, "
            f"{check.max_rel:.3g} of the largest output"
        )
        if check.max_rel > 1e-3:
            raise ConfigError(f"the ONNX file disagrees with PyTorch by {check.max_rel:.3g} of the output scale")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cbam", description="Channel and spatial attention for CNNs (CBAM).")
    parser.add_argument("--version", action="version", version=f"cbam {__version__}")
    parser.add_argument(
        "--traceback",
        action="store_true",
        help="show the traceback for a user error too (or set CBAM_TRACEBACK=1)",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    profile = commands.add_parser(
        "profile",
        help="parameters and GFLOPs of a model, or of a paper table beside the printed figures",
        description="Count parameters and GFLOPs (multiply-accumulates, the paper's convention).",
    )
    profile.add_argument("arch", nargs="?", help="model name, e.g. resnet50 or resnet50_cbam")
    profile.add_argument(
        "--attention",
        help=f"one of {', '.join(attention_names())}, or a JSON mapping with 'name' and options "
        "(default: the one the model name fixes, else none)",
    )
    profile.add_argument(
        "--model-arg", action="append", default=[], metavar="KEY=VALUE", help="builder option, e.g. width_mult=0.7"
    )
    profile.add_argument(
        "--paper-table",
        type=int,
        action="append",
        choices=PAPER_TABLES,
        metavar="N",
        help=f"reproduce paper table N ({', '.join(map(str, PAPER_TABLES))}); repeatable",
    )
    profile.add_argument("--input-size", type=int, default=224, help="image side in pixels (default 224)")
    profile.add_argument("--json", action="store_true", help="machine-readable output")
    profile.set_defaults(func=cmd_profile)

    models = commands.add_parser("models", help="list the registered model names")
    models.add_argument("pattern", nargs="?", default="*", help="shell-style filter, e.g. 'resnet*'")
    models.add_argument("--base-only", action="store_true", help="leave out the _se/_cbam/_bam shortcut names")
    models.set_defaults(func=cmd_models)

    train = commands.add_parser("train", help="train a network (the paper's ImageNet recipe by default)")
    add_run_arguments(train, ClassificationConfig, resume=True)
    train.set_defaults(func=cmd_train)

    evaluate = commands.add_parser("eval", help="top-1/top-5 error of a checkpoint (single centre crop)")
    evaluate.add_argument(
        "--checkpoint",
        required=True,
        help="a .pt checkpoint or .safetensors weights from cbam train, or its run folder (its best.pt)",
    )
    evaluate.add_argument("--data", help="dataset (default: the one the checkpoint was trained on)")
    evaluate.add_argument("--split", default="val", help="val (default) or test")
    evaluate.add_argument("--batch-size", type=int, default=64)
    evaluate.add_argument("--workers", type=int, help="data-loading processes (default: the CPUs available)")
    evaluate.add_argument("--device", default="auto")
    evaluate.add_argument("--image-size", type=int, help="centre crop side (default: the run's): another scale than "
                          "it was trained at")  # fmt: skip
    evaluate.add_argument("--eval-resize", type=int, help="short side before the crop (default: the run's)")
    evaluate.add_argument("--json", action="store_true", help="print top1_error, top5_error, loss, images as JSON")
    evaluate.add_argument(
        "--save-predictions",
        metavar="FILE",
        help="each image's label and five best classes as CSV (file, label, top1..top5)",
    )
    evaluate.add_argument("--force", action="store_true", help="replace an existing --save-predictions file")
    evaluate.set_defaults(func=cmd_eval)

    compare = commands.add_parser(
        "compare", help="train networks over seeds and say, with intervals, whether each beats its baseline"
    )
    compare.add_argument("--table", choices=COMPARE_TABLES, help="a paper table's rows")
    compare.add_argument("--arch", action="append", help="the network (with --attention), or only this network's "
                         "rows of --table (repeatable); torchvision:/timm: names too")  # fmt: skip
    compare.add_argument("--attention", help="attentions to compare on --arch, comma-separated: none,se,cbam")
    compare.add_argument("--baseline", help="the attention every row is compared with (default: each network's first)")
    add_comparison_arguments(compare)
    add_run_arguments(compare, ClassificationConfig, skip=COMPARE_SKIP)
    compare.set_defaults(func=cmd_compare)

    cam = commands.add_parser("cam", help="the paper's Fig. 4: each image, then each network's Grad-CAM and P")
    cam.add_argument("--checkpoint", action="append", required=True, help="a checkpoint (repeatable: one column each)")
    cam.add_argument("--data", help="dataset (default: the one the first checkpoint was trained on)")
    cam.add_argument("--split", default="val")
    cam.add_argument("--images", nargs="+", metavar="INDEX", help="these images of the split (indices)")
    cam.add_argument("--count", type=int, default=4, help="else this many random images (default 4)")
    cam.add_argument("--seed", type=int, default=0)
    cam.add_argument("--correct-only", action="store_true", help="only images every network classifies correctly")
    cam.add_argument("--method", default="gradcam", choices=CAM_METHODS)
    cam.add_argument("--layer", help="the module to explain, by dotted name (default: the last block)")
    cam.add_argument("--attention-maps", action="store_true", help="add each CBAM stage's spatial map Ms")
    cam.add_argument("--output", help="the figure (.png, or .pdf)")
    cam.add_argument("--html", help="also (or instead) an HTML gallery in this folder, one row per image")
    cam.add_argument("--force", action="store_true", help="replace an existing figure or gallery page")
    cam.add_argument("--list-layers", action="store_true", help="print the first checkpoint's module names and stop")
    cam.set_defaults(func=cmd_cam)

    localize = commands.add_parser(
        "localize", help="how well each network's Grad-CAM points at the object: scores against the data's boxes"
    )
    localize.add_argument("--checkpoint", action="append", required=True, help="a checkpoint (repeatable)")
    localize.add_argument("--data", help="dataset (default: the one the first checkpoint was trained on)")
    localize.add_argument("--split", default="val")
    localize.add_argument("--boxes", help="a COCO .json or a folder of VOC .xml (default: the data's annotations/)")
    localize.add_argument("--method", default="gradcam", choices=CAM_METHODS)
    localize.add_argument("--layer", help="the module to explain, by dotted name (default: the last block)")
    localize.add_argument("--threshold", type=float, default=0.6, help="CAM level of the region for IoU (paper: 0.6)")
    localize.add_argument("--limit", type=int, help="only the first N images with a box")
    localize.add_argument("--batch-size", type=int, default=32)
    localize.add_argument("--device", default="auto")
    localize.add_argument("--json", action="store_true", help="print the scores as JSON")
    localize.add_argument("--csv", help="also write the table to this CSV file")
    localize.add_argument("--force", action="store_true", help="replace an existing --csv file")
    localize.set_defaults(func=cmd_localize)

    add_survey_commands(commands)
    add_detect_commands(commands)

    convert = commands.add_parser("convert", help="an authors' checkpoint (Jongchan/attention-module) -> safetensors")
    convert.add_argument("source", help="their .pth.tar (train_imagenet.py's checkpoint)")
    convert.add_argument("destination", help="the .safetensors file to write")
    convert.add_argument("--force", action="store_true", help="replace an existing destination file")
    convert.set_defaults(func=cmd_convert)

    export = commands.add_parser("export", help="ONNX (checked with onnxruntime), TorchScript or torch.export")
    export.add_argument(
        "--checkpoint", help="a cbam checkpoint, .safetensors file, authors' checkpoint or plain state dict"
    )
    export.add_argument(
        "--arch", help="the network: alone, with fresh weights; with --checkpoint, for a file that does not record it"
    )
    export.add_argument("--attention", help="with --arch: the attention")
    export.add_argument("--model-arg", action="append", default=[], metavar="KEY=VALUE", help="with --arch")
    export.add_argument("--format", default="onnx", choices=EXPORT_FORMATS)
    export.add_argument("--output", required=True, help="file to write (.onnx, .pt, .pt2)")
    export.add_argument("--input-size", type=int, default=224, help="example image side (default 224)")
    export.add_argument("--force", action="store_true", help="replace an existing --output file")
    export.set_defaults(func=cmd_export)
    return parser


def _show_traceback(args: argparse.Namespace) -> bool:
    return bool(getattr(args, "traceback", False)) or os.environ.get("CBAM_TRACEBACK", "") not in ("", "0")


def _os_error_line(err: OSError) -> str:
    """`strerror: path` for an error about a path, else the error's own text."""
    if err.filename is None:
        return str(err)
    return f"{err.strerror or type(err).__name__}: {err.filename}"


@contextlib.contextmanager
def _command_logging() -> Iterator[None]:
    """While a command runs, the library's INFO messages are shown plainly on stderr; afterwards the `cbam`
    logger is as it was (so a program or test that calls `main` keeps its own logging)."""
    logger = logging.getLogger("cbam")
    saved = (logger.handlers[:], logger.level, logger.propagate)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger.handlers[:] = [handler]
    logger.setLevel(logging.INFO)
    logger.propagate = False
    try:
        yield
    finally:
        logger.handlers[:], logger.level, logger.propagate = saved


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command: a user's mistake is one line and exit 2; a bug in cbam is a traceback and exit 1."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        with _command_logging():
            return args.func(args)
    except (UserError, OSError) as err:
        if _show_traceback(args):
            traceback.print_exc()
        line = _os_error_line(err) if isinstance(err, OSError) else str(err)
        print(f"cbam {args.command}: error: {line}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"cbam {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception:
        traceback.print_exc()
        print(
            f"cbam {args.command}: internal error (a bug in cbam {__version__}, not in your input); "
            "please report it with the traceback above",
            file=sys.stderr,
        )
        return 1
    finally:
        shutdown_distributed()


if __name__ == "__main__":
    sys.exit(main())
