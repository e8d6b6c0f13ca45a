"""Command-line values shared by the command groups."""

from __future__ import annotations

import ast
from collections.abc import Sequence
from typing import Any

from cbam.errors import ConfigError


def parse_key_values(pairs: Sequence[str], flag: str) -> dict[str, Any]:
    """`KEY=VALUE` pairs given to `flag`; values are Python literals (`0.7`, `True`, `[32, 64]`) or else strings."""
    values: dict[str, Any] = {}
    for pair in pairs:
        key, sep, text = pair.partition("=")
        if not sep or not key:
            raise ConfigError(f"{flag} expects KEY=VALUE, got {pair!r}")
        try:
            values[key] = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            values[key] = text
    return values
