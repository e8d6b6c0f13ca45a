"""`cbam cam` and `cbam localize`: where each network looks (the paper's Fig. 4), and how well it points at the
object."""

from __future__ import annotations

import argparse
import json

from cbam.cli.options import BATCH_SIZE, CHECKPOINT, CSV, DATA, DEVICE, FORCE, JSON, LAYER, METHOD, SEED, SPLIT
from cbam.errors import ConfigError
from cbam.extras import require_extra
from cbam.outputs import check_output_file, check_writable_folder
from cbam.report import format_markdown_table, write_csv

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


def add_explain_commands(commands: argparse._SubParsersAction) -> None:
    """`cbam cam` and `cbam localize` under the main parser's commands."""
    cam = commands.add_parser("cam", help="the paper's Fig. 4: each image, then each network's Grad-CAM and P")
    CHECKPOINT.add(cam, action="append", required=True, help="a checkpoint (repeatable: one column each)")
    DATA.add(cam, default_help="the one the first checkpoint was trained on")
    SPLIT.add(cam)
    cam.add_argument("--images", nargs="+", metavar="INDEX", help="these images of the split (indices)")
    cam.add_argument("--count", type=int, default=4, help="else this many random images (default 4)")
    SEED.add(cam)
    cam.add_argument("--correct-only", action="store_true", help="only images every network classifies correctly")
    METHOD.add(cam)
    LAYER.add(cam)
    cam.add_argument("--attention-maps", action="store_true", help="add each CBAM stage's spatial map Ms")
    cam.add_argument("--output", help="the figure (.png, or .pdf)")
    cam.add_argument("--html", help="also (or instead) an HTML gallery in this folder, one row per image")
    FORCE.add(cam, help="replace an existing figure or gallery page")
    cam.add_argument("--list-layers", action="store_true", help="print the first checkpoint's module names and stop")
    cam.set_defaults(func=cmd_cam)

    localize = commands.add_parser(
        "localize", help="how well each network's Grad-CAM points at the object: scores against the data's boxes"
    )
    CHECKPOINT.add(localize, action="append", required=True, help="a checkpoint (repeatable)")
    DATA.add(localize, default_help="the one the first checkpoint was trained on")
    SPLIT.add(localize)
    localize.add_argument("--boxes", help="a COCO .json or a folder of VOC .xml (default: the data's annotations/)")
    METHOD.add(localize)
    LAYER.add(localize)
    localize.add_argument("--threshold", type=float, default=0.6, help="CAM level of the region for IoU (paper: 0.6)")
    localize.add_argument("--limit", type=int, help="only the first N images with a box")
    BATCH_SIZE.add(localize, default=32)
    DEVICE.add(localize, with_default=True)
    JSON.add(localize, help="print the scores as JSON")
    CSV.add(localize)
    FORCE.add(localize, help="replace an existing --csv file")
    localize.set_defaults(func=cmd_localize)
