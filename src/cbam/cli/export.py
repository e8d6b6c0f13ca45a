"""`cbam convert` and `cbam export`: the authors' checkpoints into ours, and networks out to ONNX, TorchScript
or torch.export."""

from __future__ import annotations

import argparse
import json

from cbam.cli.networks import parse_model_args
from cbam.cli.options import ATTENTION, CHECKPOINT, FORCE, INPUT_SIZE, MODEL_ARG
from cbam.engine.config import parse_attention
from cbam.errors import ConfigError
from cbam.export import EXPORT_FORMATS
from cbam.networks.build import create_model
from cbam.outputs import check_output_file


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
    model_kwargs = parse_model_args(args.model_kwargs or [])
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


def add_export_commands(commands: argparse._SubParsersAction) -> None:
    """`cbam convert` and `cbam export` under the main parser's commands."""
    convert = commands.add_parser("convert", help="an authors' checkpoint (Jongchan/attention-module) -> safetensors")
    convert.add_argument("source", help="their .pth.tar (train_imagenet.py's checkpoint)")
    convert.add_argument("destination", help="the .safetensors file to write")
    FORCE.add(convert, help="replace an existing destination file")
    convert.set_defaults(func=cmd_convert)

    export = commands.add_parser("export", help="ONNX (checked with onnxruntime), TorchScript or torch.export")
    CHECKPOINT.add(export, help="a cbam checkpoint, .safetensors file, authors' checkpoint or plain state dict")
    export.add_argument(
        "--arch", help="the network: alone, with fresh weights; with --checkpoint, for a file that does not record it"
    )
    ATTENTION.add(export, help=f"with --arch: the attention, {ATTENTION.text}")
    MODEL_ARG.add(export, help=f"with --arch: {MODEL_ARG.text}")
    export.add_argument("--format", default="onnx", choices=EXPORT_FORMATS)
    export.add_argument("--output", required=True, help="file to write (.onnx, .pt, .pt2)")
    INPUT_SIZE.add(export, help="example image side")
    FORCE.add(export, help="replace an existing --output file")
    export.set_defaults(func=cmd_export)
