"""Each shared flag is declared once, in `cbam.cli.options` (or by the config option it is), and every command that
takes it adds it from there."""

import ast
import dataclasses
from pathlib import Path

import pytest

import cbam.cli
from cbam.classification.task import ClassificationConfig
from cbam.cli import build_parser, options
from cbam.engine.config import config_fields

CLI = Path(cbam.cli.__file__).resolve().parent
DECLARED = [value for value in vars(options).values() if isinstance(value, options.Flag | options.ConfigFlag)]


def flag_name(declared) -> str:
    if isinstance(declared, options.Flag):
        return declared.name
    f = config_fields(declared.cls)[declared.name]
    return f.metadata.get("flag") or "--" + f.name.replace("_", "-")


def hand_written_flags(path: Path) -> set[str]:
    """The flags `path` writes out as `add_argument("--x", ...)`."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "add_argument" and node.args:
            first = node.args[0]
            if isinstance(first, ast.Constant) and isinstance(first.value, str) and first.value.startswith("--"):
                found.add(first.value)
    return found


def test_the_table_declares_the_shared_flags():
    names = {flag_name(d) for d in DECLARED}
    assert {"--attention", "--model-arg", "--image-size", "--eval-resize", "--device", "--checkpoint", "--data",
            "--split", "--batch-size", "--workers", "--json", "--csv", "--force"} <= names  # fmt: skip


@pytest.mark.parametrize("path", sorted(CLI.glob("*.py")), ids=lambda p: p.name)
def test_no_command_writes_a_declared_flag_by_hand(path):
    declared = {flag_name(d) for d in DECLARED} | {"--output", "--recipe"}
    assert hand_written_flags(path) & declared <= ({"--output"} if path.name != "options.py" else set())


def test_a_run_option_taken_outside_a_run_keeps_its_declared_type_and_help():
    parser = build_parser()
    args = parser.parse_args(["profile", "resnet18", "--model-arg", "a=1", "--model-arg", "b=2", "--attention", "se"])
    assert args.model_kwargs == ["a=1", "b=2"] and args.attention == "se"
    assert parser.parse_args(["profile", "resnet18"]).model_kwargs is None  # not given: no builder options
    evaluate = parser.parse_args(["eval", "--checkpoint", "x.pt", "--image-size", "96"])
    assert evaluate.image_size == 96 and evaluate.eval_resize is None and evaluate.device == "auto"
    assert evaluate.split == "val" and evaluate.batch_size == 64
    attention = config_fields(ClassificationConfig)["attention"]
    assert options.ATTENTION.text == attention.metadata["help"] and "cbam" in options.ATTENTION.text


def test_a_flag_names_its_default_in_its_help():
    parser = build_parser()
    localize = next(a for a in parser._subparsers._group_actions[0].choices["localize"]._actions
                    if a.dest == "batch_size")  # fmt: skip
    assert localize.default == 32 and localize.help == "images per batch (default: 32)"
    assert dataclasses.is_dataclass(options.SPLIT) and options.SPLIT.options["default"] == "val"
