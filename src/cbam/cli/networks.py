"""`cbam profile` and `cbam models`: the zoo's names, and each network's parameters and GFLOPs beside the paper's."""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from typing import Any

from cbam.cli.options import ATTENTION, INPUT_SIZE, JSON, MODEL_ARG
from cbam.engine.config import parse_attention, parse_key_values
from cbam.errors import ConfigError
from cbam.networks.complexity import RowComparison, compare_row, compare_table, find_paper_rows, measure_arch
from cbam.networks.counting import complexity_dict
from cbam.networks.names import list_models, model_entry
from cbam.paper import PAPER_TABLES
from cbam.report import format_markdown_table


def parse_model_args(pairs: Sequence[str]) -> dict[str, Any]:
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
    kwargs = parse_model_args(args.model_kwargs or [])
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
    if args.attentions:
        from cbam.layers.create import ATTENTION_ABOUT

        width = max(map(len, ATTENTION_ABOUT))
        print("\n".join(f"{name:<{width}}  {about.paper}" for name, about in ATTENTION_ABOUT.items()))
        return 0
    names = list_models(args.pattern, include_shortcuts=not args.base_only)
    if not names:
        raise ConfigError(f"no model matches {args.pattern!r}")
    print("\n".join(names))
    return 0


def add_network_commands(commands: argparse._SubParsersAction) -> None:
    """`cbam profile` and `cbam models` under the main parser's commands."""
    profile = commands.add_parser(
        "profile",
        help="parameters and GFLOPs of a model, or of a paper table beside the printed figures",
        description="Count parameters and GFLOPs (multiply-accumulates, the paper's convention).",
    )
    profile.add_argument("arch", nargs="?", help="model name, e.g. resnet50 or resnet50_cbam")
    ATTENTION.add(profile, default_help="the one the model name fixes, else none")
    MODEL_ARG.add(profile)
    profile.add_argument(
        "--paper-table",
        type=int,
        action="append",
        choices=PAPER_TABLES,
        metavar="N",
        help=f"reproduce paper table N ({', '.join(map(str, PAPER_TABLES))}); repeatable",
    )
    INPUT_SIZE.add(profile)
    JSON.add(profile)
    profile.set_defaults(func=cmd_profile)

    models = commands.add_parser("models", help="list the registered model names")
    models.add_argument("pattern", nargs="?", default="*", help="shell-style filter, e.g. 'resnet*'")
    models.add_argument(
        "--base-only", action="store_true", help="leave out the attention shortcut names (_se, _cbam, _eca, ...)"
    )
    models.add_argument(
        "--attentions", action="store_true", help="list the attention names --attention takes, each with its paper"
    )
    models.set_defaults(func=cmd_models)
