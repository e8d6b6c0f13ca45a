"""Runs of any task: the tasks by name, a comparison's run kept or continued, a resumed run's config, and
`load_model`: a saved network, whatever its task.

`load_model(path)` is how every command opens a file cbam wrote (a `.pt` checkpoint or `.safetensors`
weights, of any format version): the file says its task, config and classes, so no flags are needed.
Weights from elsewhere (torchvision, timm, the authors' code) come in through `cbam.load_pretrained`.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cbam.checkpoint import TASKS, Checkpoint, checkpoint_file, read_checkpoint
from cbam.engine.config import RunConfig, config_from_dict
from cbam.engine.run import RunResult, fit
from cbam.engine.run_folder import LAST, SUMMARY_FILE, folder_plan
from cbam.engine.task import Task
from cbam.errors import CheckpointError, ConfigError, UserError, unknown_name
from cbam.extras import require_extra
from cbam.networks.classifier import classes_in_state, classifier_name

log = logging.getLogger(__name__)


def task_class(name: str) -> type[Task]:
    """The task called `name` (detection needs the `detection` extra)."""
    if name == "classification":
        from cbam.classification.task import ClassificationTask

        return ClassificationTask
    if name == "detection":
        require_extra("detection", "a detection run")
        from cbam.detection.task import DetectionTask

        return DetectionTask
    raise unknown_name("task", name, TASKS)


def fit_or_reuse(config: RunConfig, *, exist_ok: bool = False) -> RunResult:
    """One row of a comparison: kept if its folder holds a finished run of this config, continued if that run
    stopped (or is to run longer), trained if new; a folder holding another config's run is refused (replaced
    with `exist_ok`)."""
    folder = Path(config.output)
    plan = folder_plan(config, exist_ok=exist_ok)
    if plan == "finished":
        log.info("%s: kept the finished run", folder)
        return RunResult.from_dict(json.loads((folder / SUMMARY_FILE).read_text()))
    if plan == "resume":
        log.info("%s: continuing the run from %s", folder, LAST)
    return fit(config, resume=folder / LAST if plan == "resume" else None, exist_ok=plan == "replace")


def resume_config(checkpoint: Path, **requested: Any) -> RunConfig:
    """The config saved in `checkpoint`, with what a resumed run asks for: values equal to the saved ones are
    accepted (the command that started the run can be repeated), real changes only to resumable options."""
    from cbam.engine.config import with_resume_changes

    saved = read_checkpoint(checkpoint)
    config = config_from_dict(task_class(saved.task).config_class, saved.config)
    return with_resume_changes(config, {k: v for k, v in requested.items() if v is not None})


@dataclass
class LoadedModel:
    """A saved network in eval mode, with what it was trained on."""

    task: str
    model: nn.Module
    config: Any
    classes: list[str] | None
    metadata: dict[str, Any]
    epoch: int
    path: Path


def load_model(path: str | Path, device: torch.device | str = "cpu", *, task: str | None = None) -> LoadedModel:
    """The network saved in `path` by cbam, rebuilt from the file alone and loaded strictly; `task` refuses a
    file of another task (a command that evaluates classifiers given a detector says so in one line)."""
    path = checkpoint_file(path)
    checkpoint = read_checkpoint(path)
    if task is not None and checkpoint.task != task:
        command = "cbam detect" if checkpoint.task == "detection" else "cbam"
        raise CheckpointError(f"{path} holds a {checkpoint.task} network, not a {task} one; use `{command}` commands")
    kind = task_class(checkpoint.task)
    try:
        config = config_from_dict(kind.config_class, checkpoint.config)
    except ConfigError as err:
        raise CheckpointError(f"{path} records a config this cbam cannot build: {err}") from None
    written = checkpoint.metadata.get("library_versions")
    versions = f" (written with {', '.join(f'{k} {v}' for k, v in written.items())})" if written else ""
    try:
        model = kind.build_model(config, _num_classes(path, checkpoint, kind, config), fresh=False)
    except UserError as err:
        raise CheckpointError(f"{path} records a network this installation cannot build{versions}: {err}") from None
    try:
        model.load_state_dict(checkpoint.model)
    except RuntimeError as err:
        first = str(err).splitlines()[1].strip() if len(str(err).splitlines()) > 1 else str(err)
        raise CheckpointError(f"{path}'s weights do not fit the network it records{versions}: {first}") from None
    return LoadedModel(checkpoint.task, model.to(device).eval(), config, checkpoint.classes, checkpoint.metadata,
                       checkpoint.epoch, path)  # fmt: skip


def _num_classes(path: Path, checkpoint: Checkpoint, kind: type[Task], config: Any) -> int:
    """The classes a file records, else those of the classifier its network declares (a file from before classes
    were recorded)."""
    if checkpoint.num_classes:
        return checkpoint.num_classes
    with torch.device("meta"):
        bare = kind.build_model(config, 1, fresh=False)
    classes = classes_in_state(bare, checkpoint.model)
    if classes is None:
        raise CheckpointError(f"{path} records neither its classes nor a classifier ({classifier_name(bare)})")
    return classes
