"""The README's examples work as written: every python block runs, every `cbam ...` command line parses.

Bash lines that do not run `cbam` (`make ...`, comments) are not checked; placeholders such as
`IMAGE.png` or `HOST:29500` are plain arguments to the parser, so no `cbam` line is skipped.
"""

import re
import shlex
from pathlib import Path

import pytest

from cbam.cli import build_parser

README = Path(__file__).resolve().parent.parent / "README.md"
FENCE = re.compile(r"^```(\w+)\n(.*?)^```", re.MULTILINE | re.DOTALL)


def fenced_blocks(language: str) -> list[tuple[int, str]]:
    """Each ```language block of the README with the line its code starts on."""
    text = README.read_text(encoding="utf-8")
    return [
        (text.count("\n", 0, match.start(2)) + 1, match.group(2))
        for match in FENCE.finditer(text)
        if match.group(1) == language
    ]


def command_lines(number: int, block: str) -> list[tuple[int, str]]:
    """The shell commands of a bash block starting at line `number`, each with its line: backslash
    continuations joined, comment lines dropped."""
    commands, pending, start = [], "", number
    for offset, line in enumerate(block.splitlines()):
        if not pending:
            start = number + offset
        pending += line.strip()
        if pending.endswith("\\"):
            pending = pending[:-1] + " "
            continue
        if pending and not pending.startswith("#"):
            commands.append((start, pending))
        pending = ""
    return commands


def cbam_arguments(line: str) -> list[str] | None:
    """The arguments `cbam` gets from a README command (`cbam ...` or `torchrun ... -m cbam ...`); None for others."""
    words = shlex.split(line, comments=True)
    if words[:1] == ["cbam"]:
        return words[1:]
    if words[:1] == ["torchrun"] and "cbam" in words:
        start = words.index("cbam")
        return words[start + 1 :] if words[start - 1] == "-m" else None
    return None


PYTHON_BLOCKS = fenced_blocks("python")
CBAM_COMMANDS = [
    (number, line)
    for start, block in fenced_blocks("bash")
    for number, line in command_lines(start, block)
    if cbam_arguments(line) is not None
]


def test_the_readme_has_examples_to_check():
    assert len(PYTHON_BLOCKS) >= 4 and len(CBAM_COMMANDS) >= 20


@pytest.mark.parametrize(("number", "code"), PYTHON_BLOCKS, ids=[f"line{n}" for n, _ in PYTHON_BLOCKS])
def test_python_example_runs(number, code, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a snippet that writes files writes them here
    exec(compile("\n" * (number - 1) + code, str(README), "exec"), {"__name__": "__readme__"})  # README's line numbers


@pytest.mark.parametrize("line", [line for _, line in CBAM_COMMANDS], ids=[f"line{n}" for n, _ in CBAM_COMMANDS])
def test_cbam_command_parses(line):
    arguments = cbam_arguments(line)
    try:
        build_parser().parse_args(arguments)
    except SystemExit as stop:
        pytest.fail(f"`{line}` does not parse (exit {stop.code})")
