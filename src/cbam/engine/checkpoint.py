"""Checkpoints that survive a killed process and never run code when loaded.

Every file is written with `cbam.outputs.atomic_write`, so a reader sees the old file or the new
one, never half of one. Loading uses
`torch.load(weights_only=True)`: a checkpoint from anywhere cannot execute code.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from cbam.errors import CheckpointError
from cbam.outputs import atomic_write


def save_checkpoint(path: Path, state: Mapping[str, Any]) -> None:
    atomic_write(path, lambda tmp: torch.save(dict(state), tmp))


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


def load_checkpoint(path: Path) -> dict[str, Any]:
    """A checkpoint written by `cbam train`: `read_torch_file`, and it must hold a model."""
    state = read_torch_file(path)
    if "model" not in state:
        raise CheckpointError(f"{path} is not a cbam checkpoint (no 'model' state)")
    return state


def save_safetensors(path: Path, model: nn.Module, metadata: Mapping[str, Any]) -> None:
    """The model's weights as safetensors, with the metadata (JSON-encoded) to rebuild it."""
    tensors = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    meta = {k: json.dumps(v) for k, v in metadata.items()}
    atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata=meta))


def load_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Weights and metadata of a file written by `save_safetensors`."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"weights file {path} does not exist")
    try:
        tensors = load_file(str(path))
        with safe_open(str(path), framework="pt") as handle:
            raw = handle.metadata() or {}
    except Exception as err:
        raise CheckpointError(f"weights file {path} cannot be read: {err}") from None
    return tensors, {k: json.loads(v) for k, v in raw.items()}
