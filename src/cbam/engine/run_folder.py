"""A run's folder: never replaced without being told, never left empty by a run that failed to start.

`cbam train`, `cbam detect train` and `cbam compare` write one run per folder. A folder that holds
a run is refused unless the user continues it (`--resume`) or replaces it (`--exist-ok`); the
message names both and a free folder beside it. A run that ends before its first checkpoint
removes the folder it created.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, Literal

import yaml

from cbam.checkpoint import BEST, LAST
from cbam.engine.config import RunConfig, config_from_dict, resumable_keys
from cbam.errors import OutputError, UserError
from cbam.outputs import check_writable_folder, missing_folders

log = logging.getLogger(__name__)

CONFIG_FILE, SUMMARY_FILE, METRICS_FILE = "config.yaml", "summary.json", "metrics.csv"
# What a run writes; any of them present means the folder holds a run.
RUN_FILES: tuple[str, ...] = (
    LAST,
    BEST,
    "last.safetensors",
    "best.safetensors",
    CONFIG_FILE,
    SUMMARY_FILE,
    METRICS_FILE,
)


def run_files(folder: Path) -> list[str]:
    """The run files present in `folder` (empty when it holds no run)."""
    return [name for name in RUN_FILES if (Path(folder) / name).exists()]


def free_folder(folder: Path) -> Path:
    """`folder` if it holds no run, else the first of `folder-2`, `folder-3`, ... that holds none."""
    folder = Path(folder)
    candidate, number = folder, 2
    while run_files(candidate):
        candidate = folder.with_name(f"{folder.name}-{number}")
        number += 1
    return candidate


def check_run_folder(folder: Path, *, resume: bool, exist_ok: bool) -> None:
    """Refuse to start a new run over an existing one unless `exist_ok`; a writable folder either way."""
    folder = Path(folder)
    check_writable_folder(folder)
    present = run_files(folder)
    if present and not resume and not exist_ok:
        raise OutputError(
            f"{folder} already holds a run ({', '.join(present)}); pass --resume to continue it, "
            f"--exist-ok to replace it, or choose a new folder such as --output {free_folder(folder)}"
        )


RUN_LENGTH_KEYS: tuple[str, ...] = ("epochs", "iterations")
RunPlan = Literal["new", "resume", "finished", "replace"]


def config_differences(saved: Mapping[str, Any], wanted: Mapping[str, Any]) -> list[str]:
    """The keys whose values differ between two saved configs (compared as YAML would store them)."""
    saved, wanted = (yaml.safe_load(yaml.safe_dump(dict(c))) for c in (saved, wanted))
    return sorted(key for key in {*saved, *wanted} if saved.get(key) != wanted.get(key))


def saved_config(folder: Path) -> dict[str, Any] | None:
    """The config of the run in `folder`: its config.yaml, else (a run killed between writing its first checkpoint
    and its config.yaml) the config inside last.pt; None when neither can be read."""
    try:
        return yaml.safe_load((folder / CONFIG_FILE).read_text()) or {}
    except (OSError, yaml.YAMLError):
        pass
    from cbam.checkpoint import read_checkpoint  # the checkpoint module reads torch files: only when needed

    try:
        return dict(read_checkpoint(folder / LAST).config)
    except (OSError, UserError):
        return None


def folder_plan(config: RunConfig, *, exist_ok: bool = False) -> RunPlan:
    """What a comparison does with the folder of one of its runs, `config.output`: train it (`new`), keep it
    (`finished`), continue it (`resume`: same config but for resumable keys such as a longer run), or `replace`
    it (`exist_ok`); a folder holding a run of another config is refused, naming the differences (so a
    comparison can check every folder before anything trains)."""
    kind = type(config)
    folder, wanted, allowed = Path(config.output), config.to_dict(), resumable_keys(kind)
    folder = Path(folder)
    if not run_files(folder):
        return "new"
    saved = saved_config(folder)
    if saved is None:
        if exist_ok:
            return "replace"
        raise OutputError(
            f"{folder} holds an incomplete run (no {CONFIG_FILE} or {LAST}); pass --exist-ok to retrain it"
        )
    with contextlib.suppress(UserError):
        saved = config_from_dict(kind, saved).to_dict()  # the defaults of options added since it was written
    differences = config_differences(saved, wanted)
    conflicting = [key for key in differences if key not in allowed]
    if not (folder / LAST).is_file() and not conflicting:
        log.info("%s: this run was stopped before its first %s; starting it again", folder, LAST)
        return "replace"
    if conflicting:
        if exist_ok:
            return "replace"
        shown = "; ".join(f"{key} {saved.get(key)!r} -> {wanted.get(key)!r}" for key in conflicting)
        raise OutputError(
            f"{folder} holds a run of another config ({shown}); "
            "pass --exist-ok to replace it, or choose another --output"
        )
    finished = (folder / SUMMARY_FILE).is_file() and not set(differences) & set(RUN_LENGTH_KEYS)
    return "finished" if finished else "resume"


def clear_run(folder: Path) -> None:
    """Remove an earlier run's files (the user asked to replace it with `--exist-ok`)."""
    present = _remove_run_files(Path(folder))
    if present:
        log.info("replacing the run in %s (--exist-ok): removed %s", folder, ", ".join(present))


@contextlib.contextmanager
def claimed_run_folder(folder: Path, *, resume: bool, exist_ok: bool, main: bool = True) -> Iterator[Path]:
    """The run folder for the duration of a run: checked and created on entry; if the run fails before its
    first checkpoint, what it created is removed again (a folder that existed before is kept)."""
    folder = Path(folder)
    if not main:
        yield folder
        return
    check_run_folder(folder, resume=resume, exist_ok=exist_ok)
    created = missing_folders(folder)
    if exist_ok and not resume:
        clear_run(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise OutputError(f"cannot create the output folder {folder}: {err.strerror or err}") from None
    try:
        yield folder
    except BaseException:
        if not (folder / LAST).exists():
            _remove_started(folder, created)
        raise


def _remove_started(folder: Path, created: list[Path]) -> None:
    """Undo a run that wrote no checkpoint: its run files, and the folders the run created."""
    _remove_run_files(folder)
    for path in created:
        with contextlib.suppress(OSError):
            path.rmdir()  # only if empty: never delete what someone else put there


def _remove_run_files(folder: Path) -> list[str]:
    """Delete the run files in `folder` and its TensorBoard logs; returns the names deleted."""
    present = run_files(folder)
    for name in present:
        (folder / name).unlink(missing_ok=True)
    shutil.rmtree(folder / "tensorboard", ignore_errors=True)
    return present
