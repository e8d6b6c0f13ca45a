"""The one checkpoint format: what a run saves, written atomically and read without ever running code.

Schema (`FORMAT`, `VERSION` 2). A `.pt` checkpoint is a `torch.save`d dict:

    format    "cbam.checkpoint"            version   2
    task      "classification" or "detection" (which task's `build_model` rebuilds the network)
    config    the run's config as plain values (a valid recipe for `--recipe`)
    classes   the class names, in the network's output order (None when unknown)
    metadata  the task's own extras (detection: `category_ids`; a converted file: `num_classes`, `source`)
    epoch     epochs trained
    model     the network's state dict
    best      {"metric": history key, "value", "epoch"} of the best epoch so far
    history   one dict of metrics per epoch
    training  what resuming needs beyond the weights: optimizer, scaler and RNG states

A `.safetensors` file holds the model's tensors and, as string metadata, each of format, version, task,
config, classes, metadata and epoch JSON-encoded. Files of format 1 (`cbam.checkpoint/1`,
`cbam.detection-checkpoint/1`, and safetensors with bare `arch`/`classes` keys) are read as well.
Loading uses `torch.load(weights_only=True)`: a checkpoint from anywhere cannot execute code.
"""

from __future__ import annotations

import json
import logging
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor

from cbam.errors import CheckpointError
from cbam.outputs import atomic_write

log = logging.getLogger(__name__)

LAST, BEST = "last.pt", "best.pt"
"""The checkpoints a run folder holds: the last epoch's and the best validation score's."""

FORMAT = "cbam.checkpoint"
VERSION = 2
TASKS: tuple[str, ...] = ("classification", "detection")
SAFETENSORS_KEYS: tuple[str, ...] = ("format", "version", "task", "config", "classes", "metadata", "epoch")
_V1_FORMATS = {"cbam.checkpoint/1": "classification", "cbam.detection-checkpoint/1": "detection"}


@dataclass(frozen=True)
class Checkpoint:
    """One saved network and what it was trained with (see the module's schema)."""

    task: str
    config: dict[str, Any]
    classes: list[str] | None
    epoch: int
    model: dict[str, Tensor] = field(repr=False)
    metadata: dict[str, Any] = field(default_factory=dict)
    best: dict[str, Any] | None = None
    history: list[dict[str, Any]] = field(default_factory=list, repr=False)
    training: dict[str, Any] | None = field(default=None, repr=False)

    @property
    def num_classes(self) -> int | None:
        return len(self.classes) if self.classes else self.metadata.get("num_classes")

    def to_dict(self) -> dict[str, Any]:
        return {"format": FORMAT, "version": VERSION, **self.__dict__}


# ---------------------------------------------------------------------------------------------
# Writing


def _torch_save(values: dict[str, Any], tmp: Path) -> None:
    """`torch.save`, whose zip writer reports a failed write (a full disk or file-size limit) as a RuntimeError
    ("PytorchStreamWriter failed writing file", "basic_ios::clear: iostream error"), as an OSError, so that
    `atomic_write` names the file and the cause in one line and leaves the previous file as it was."""
    try:
        torch.save(values, tmp)
    except RuntimeError as err:
        cause = str(err).splitlines()[0]
        raise OSError(f"{cause} (is the disk, or the file-size limit, full?)") from err


def save_checkpoint(path: Path, checkpoint: Checkpoint) -> None:
    """The whole checkpoint (resumable) as a `.pt` file."""
    atomic_write(Path(path), lambda tmp: _torch_save(checkpoint.to_dict(), tmp))


def save_weights(path: Path, checkpoint: Checkpoint) -> None:
    """The network alone as `.safetensors`, with the schema's metadata to rebuild it."""
    tensors = {k: v.detach().contiguous().cpu() for k, v in checkpoint.model.items()}
    values = checkpoint.to_dict()
    meta = {key: json.dumps(values[key]) for key in SAFETENSORS_KEYS}
    atomic_write(Path(path), lambda tmp: save_file(tensors, str(tmp), metadata=meta))


# ---------------------------------------------------------------------------------------------
# Reading files


def checkpoint_file(path: str | Path) -> Path:
    """`path` itself, or for a run folder the checkpoint it holds: `best.pt`, else `last.pt` (logged, so that
    the output names the file read)."""
    path = Path(path)
    if not path.is_dir():
        return path
    for name in (BEST, LAST):
        if (path / name).is_file():
            log.info("%s is a run folder: reading its %s", path, name)
            return path / name
    raise CheckpointError(f"{path} is a folder without {BEST} or {LAST}: give a run folder or a .pt/.safetensors file")


def read_torch_file(path: Path) -> dict[str, Any]:
    """A `torch.save`d dict, on the CPU, never running code; a readable `CheckpointError` for any bad file."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        with warnings.catch_warnings():  # torch warns about pickle protocols of files it then refuses
            warnings.simplefilter("ignore")
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many types for truncated/corrupt/unsafe files
        raise CheckpointError(f"{path} is not a checkpoint cbam can read safely: {_load_failure(err)}") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"{path} holds a {type(state).__name__}, not a state dict or checkpoint")
    return state


def _load_failure(err: Exception) -> str:
    """Why `torch.load(weights_only=True)` refused a file, without torch's advice to load it unsafely."""
    text = str(err)
    if "global" in text.lower() or "Unsupported class" in text:
        return "it holds Python objects beyond tensors and plain data, and loading those could run code"
    reason = text.split("WeightsUnpickler error:", 1)[-1] if "WeightsUnpickler error:" in text else text
    lines = [line.strip() for line in reason.splitlines() if line.strip() and "weights_only" not in line]
    first = lines[0].split(". ")[0] if lines else type(err).__name__
    return f"it is truncated, corrupt or not a PyTorch file ({first})"


def read_safetensors(path: Path) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Tensors and JSON-decoded metadata of a `.safetensors` file (ours or anyone's)."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"weights file {path} does not exist")
    try:
        tensors = load_file(str(path))
        with safe_open(str(path), framework="pt") as handle:
            raw = handle.metadata() or {}
        return tensors, {k: json.loads(v) for k, v in raw.items()}
    except Exception as err:
        raise CheckpointError(f"weights file {path} cannot be read: {err}") from None


def is_cbam_checkpoint(state: Mapping[str, Any]) -> bool:
    """Whether a `.pt` dict or a safetensors metadata dict was written by cbam (any format version)."""
    if state.get("format") == FORMAT or state.get("format") in _V1_FORMATS:
        return True
    config = state.get("config")
    return isinstance(config, Mapping) and isinstance(config.get("arch"), str) and "model" in state


def read_checkpoint(path: Path) -> Checkpoint:
    """A checkpoint or weights file written by cbam (`cbam train`, `cbam detect train`, `cbam convert`).

    Every problem is one `CheckpointError` naming the file; weights from elsewhere (torchvision, timm, the
    authors') are not checkpoints: `cbam.load_pretrained` reads those. A run folder gives its best checkpoint.
    """
    path = checkpoint_file(path)
    if path.suffix == ".safetensors":
        checkpoint = checkpoint_in_safetensors(*read_safetensors(path))
        if checkpoint is None:
            raise CheckpointError(
                f"{path} holds weights without cbam's metadata; load it with cbam.load_pretrained (naming its network)"
            )
        return checkpoint
    state = read_torch_file(path)
    if not is_cbam_checkpoint(state):
        raise CheckpointError(
            f"{path} is not a cbam checkpoint (no format {FORMAT!r}); weights from elsewhere load with "
            "cbam.load_pretrained, or `cbam export --checkpoint` with --arch"
        )
    if state.get("version", 0) > VERSION:
        raise CheckpointError(f"{path} has checkpoint version {state['version']}; this cbam reads up to {VERSION}")
    return parse_checkpoint(state)


def parse_checkpoint(state: Mapping[str, Any]) -> Checkpoint:
    """A `.pt` dict that `is_cbam_checkpoint`, of any format version, as a `Checkpoint`."""
    if state.get("format") == FORMAT:
        return Checkpoint(**{k: v for k, v in state.items() if k not in ("format", "version")})
    task = _V1_FORMATS.get(state.get("format", ""), "classification")  # format 1: best and resume state on top
    config = dict(state["config"])
    if task == "detection":
        metric = "val_map" if config.get("metric", "coco") == "coco" else "val_map50"
        best = {"metric": metric, "value": state.get("best_map"), "epoch": state.get("best_epoch")}
        metadata = {"category_ids": list(state.get("category_ids", []))}
    else:
        best = {"metric": "val_top1_error", "value": state.get("best_top1_error"), "epoch": state.get("best_epoch")}
        metadata = {}
    training = {key: state[key] for key in ("optimizer", "scaler", "rng") if key in state}
    return Checkpoint(task, config, state.get("classes"), int(state.get("epoch", 0)), dict(state["model"]),
                      metadata, best, list(state.get("history", [])), training or None)  # fmt: skip


def checkpoint_in_safetensors(tensors: dict[str, Tensor], meta: Mapping[str, Any]) -> Checkpoint | None:
    """The checkpoint a `.safetensors` file's metadata describes; None for a file cbam did not write."""
    if meta.get("format") == FORMAT:
        values = {key: meta.get(key) for key in SAFETENSORS_KEYS if key not in ("format", "version")}
        return Checkpoint(**{**values, "metadata": values["metadata"] or {}, "model": tensors})
    if isinstance(meta.get("arch"), str):  # format 1: `cbam train`'s and `cbam convert`'s bare keys
        network_keys = ("arch", "attention", "model_kwargs", "image_size", "eval_resize", "data")
        config = {key: meta[key] for key in network_keys if meta.get(key) is not None}
        extras = {key: meta[key] for key in ("num_classes", "source") if key in meta}
        return Checkpoint("classification", config, meta.get("classes"), int(meta.get("epoch") or 0), tensors, extras)
    return None
