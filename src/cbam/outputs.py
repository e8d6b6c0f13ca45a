"""Where commands write: paths checked before any work starts, and nothing replaced unless asked.

`check_output_file` is for one file a command writes (`export`, `cam`, ...); a run folder
(`train`, `detect train`, `compare`) is guarded by the engine with `--resume`/`--exist-ok`.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path

from cbam.errors import OutputError


def missing_folders(folder: Path) -> list[Path]:
    """`folder` and those of its parents that do not exist yet, deepest first (absolute)."""
    missing = []
    current = Path(folder).absolute()
    while not current.exists() and current != current.parent:
        missing.append(current)
        current = current.parent
    return missing


def _nearest_existing(path: Path) -> Path:
    """`path` or its closest ancestor that exists (the folder that must be writable)."""
    missing = missing_folders(path)
    return missing[-1].parent if missing else Path(path).absolute()


def check_writable_folder(folder: Path, what: str = "output folder") -> None:
    """Refuse a folder that is a file, or that cannot be created or written; creates nothing."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise OutputError(f"the {what} {folder} is a file, not a folder")
    existing = _nearest_existing(folder)
    if not existing.is_dir():
        raise OutputError(f"cannot create the {what} {folder}: {existing} is not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise OutputError(f"cannot write the {what} {folder}: {existing} is not writable")


def check_output_file(path: Path | str, *, force: bool = False, flag: str = "--force") -> Path:
    """The file a command will write: refused if it is a folder, if its folder cannot be written, or if it
    exists and `force` is not set (the message names `flag`)."""
    path = Path(path)
    if path.is_dir():
        raise OutputError(f"{path} is a folder; give the path of the file to write")
    if path.exists() and not force:
        raise OutputError(f"{path} exists; pass {flag} to replace it")
    check_writable_folder(path.parent, "folder")
    return path


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Call `write(tmp)` on a temporary file beside `path`, then rename it over `path`.

    An `OSError` (a folder that cannot be written, a full disk) names `path`, never the temporary file.
    """
    path = Path(path)
    tmp: Path | None = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
        tmp = Path(tmp_name)
        write(tmp)
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the file the usual permissions
        os.replace(tmp, path)
    except OSError as err:
        raise OutputError(f"cannot write {path}: {err.strerror or err}") from err
    finally:
        if tmp is not None:
            tmp.unlink(missing_ok=True)


def _umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current
