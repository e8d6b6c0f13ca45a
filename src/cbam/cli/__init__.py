"""The `cbam` command line: argument parsing only; every command calls the library.

Each group of commands is a module with its parsers and handlers (`add_<group>_commands`); `options` declares
the flags several commands share. `main` runs one command and turns errors into one line and an exit code.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
import traceback
from collections.abc import Iterator, Sequence

from cbam.cli.classification import add_classification_commands
from cbam.cli.detection import add_detect_commands
from cbam.cli.explain import add_explain_commands
from cbam.cli.export import add_export_commands
from cbam.cli.networks import add_network_commands
from cbam.cli.survey import add_survey_commands
from cbam.engine.distributed import shutdown_distributed
from cbam.errors import UserError
from cbam.version import __version__


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cbam", description="Channel and spatial attention for CNNs (CBAM).")
    parser.add_argument("--version", action="version", version=f"cbam {__version__}")
    parser.add_argument(
        "--traceback",
        action="store_true",
        help="show the traceback for a user error too (or set CBAM_TRACEBACK=1)",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    add_network_commands(commands)
    add_classification_commands(commands)
    add_explain_commands(commands)
    add_survey_commands(commands)
    add_detect_commands(commands)
    add_export_commands(commands)
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
