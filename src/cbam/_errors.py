"""One way to say "that name does not exist", with the close matches and the valid choices."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


def unknown_name(kind: str, name: str, choices: Iterable[str], listed: Iterable[str] | None = None) -> ValueError:
    """A ValueError naming the closest valid spellings first, then the valid choices.

    `listed` replaces `choices` in the closing list when that would be too long to read.
    """
    options = sorted(choices)
    close = difflib.get_close_matches(name, options, n=5, cutoff=0.5)
    hint = f"did you mean {', '.join(close)}? " if close else ""
    shown = list(listed) if listed is not None else options
    return ValueError(f"unknown {kind} {name!r}; {hint}Valid {kind}s: {', '.join(shown)}")
