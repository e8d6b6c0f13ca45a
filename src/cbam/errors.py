"""The project's errors: one base class for every mistake a user can fix.

`cbam` commands print a `UserError` (and an `OSError` about the user's own paths) as one line and
exit 2; anything else is a bug in `cbam` and is shown with its traceback. Each subclass also
derives from the built-in exception a Python caller would expect (`ValueError` for a bad value),
so `except ValueError` keeps working in library code.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class UserError(Exception):
    """A problem the user can fix: a bad name, value, path, data set or checkpoint."""


class ConfigError(UserError, ValueError):
    """An option or argument with a value the project cannot use."""


class OptionError(ConfigError, TypeError):
    """A keyword option that a layer, network or detector does not take, or a spec of the wrong type."""


class UnknownNameError(ConfigError):
    """A name (model, attention, recipe, dataset, layer, ...) that does not exist."""


class DataError(UserError):
    """Data that cannot be used: a missing or empty folder, a missing download, a class mismatch."""


class CheckpointError(UserError):
    """A checkpoint or weights file that is missing, truncated, corrupt, unsafe or of another kind."""


class OutputError(UserError):
    """An output path that cannot be written, or that holds work the command would replace."""


class TrainingError(UserError):
    """A run that cannot go on: the message says why and what was kept."""


class DependencyError(UserError, ImportError):
    """An optional package that this feature needs is not installed; the message names the extra."""


def unknown_name(kind: str, name: str, choices: Iterable[str], listed: Iterable[str] | None = None) -> UnknownNameError:
    """An error naming the closest valid spellings first, then the valid choices.

    `listed` replaces `choices` in the closing list when that would be too long to read.
    """
    options = sorted(choices)
    close = difflib.get_close_matches(name, options, n=5, cutoff=0.5)
    hint = f"did you mean {', '.join(close)}? " if close else ""
    shown = list(listed) if listed is not None else options
    return UnknownNameError(f"unknown {kind} {name!r}; {hint}Valid {kind}s: {', '.join(shown)}")
