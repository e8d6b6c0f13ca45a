"""Export a network for deployment: ONNX (checked against onnxruntime), TorchScript, torch.export.

Every export takes a dynamic batch size and a dynamic image height and width (64 to 4096 px).
The output path is checked before the export starts, and a failed export leaves no file behind.
"""

from __future__ import annotations

import importlib
import logging
import os
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from cbam.errors import ConfigError, DependencyError, OutputError
from cbam.layers.fused import attention_impl
from cbam.outputs import atomic_write, check_output_file

log = logging.getLogger(__name__)

EXPORT_FORMATS: tuple[str, ...] = ("onnx", "torchscript", "torch-export")
# Weights above this go to `<file>.onnx.data`: one ONNX file holds at most 2 GB (protobuf), and
# torch's exporter keeps 0.5 GB of that for the graph.
ONNX_SINGLE_FILE_LIMIT = 1_610_612_736
_MIN_SIDE, _MAX_SIDE = 64, 4096  # below 64 px the last stage is 1x1, a shape export specialises


def _dynamic_shapes() -> tuple[dict[int, torch.export.Dim]]:
    """Batch, height and width dynamic, for the one input whatever `forward` calls it."""
    return (
        {
            0: torch.export.Dim("batch", min=1, max=4096),
            2: torch.export.Dim("height", min=_MIN_SIDE, max=_MAX_SIDE),
            3: torch.export.Dim("width", min=_MIN_SIDE, max=_MAX_SIDE),
        },
    )


def _example(model: nn.Module, input_size: Sequence[int]) -> torch.Tensor:
    parameter = next(model.parameters())
    return torch.randn(2, *input_size, device=parameter.device, dtype=parameter.dtype)


def export_program(model: nn.Module, input_size: Sequence[int] = (3, 224, 224)) -> torch.export.ExportedProgram:
    """`torch.export` of the network in eval mode, batch and image size dynamic.

    Attention is exported as its eager ops, which every runtime knows, never as the fused op.
    """
    with attention_impl(model, "eager"):
        return torch.export.export(model.eval(), (_example(model, input_size),), dynamic_shapes=_dynamic_shapes())


def export_model(
    model: nn.Module,
    path: str | Path,
    format: str = "onnx",
    input_size: Sequence[int] = (3, 224, 224),
    *,
    force: bool = False,
) -> Path:
    """Write `model` (in eval mode) to `path` as ONNX, TorchScript or a torch.export program (.pt2); returns `path`.

    The path is checked before the slow export starts (an existing file needs `force`), and the file
    appears only once complete. ONNX is one self-contained file unless the weights pass
    `ONNX_SINGLE_FILE_LIMIT`; then they go to `<path>.data` beside it (logged).
    """
    if format not in EXPORT_FORMATS:
        raise ConfigError(f"unknown export format {format!r}; choose from {', '.join(EXPORT_FORMATS)}")
    path = _checked_output(path, force)
    if format == "onnx":
        require_onnx()
    model = model.eval()
    if format == "torchscript":
        atomic_write(path, lambda tmp: torch.jit.save(torch.jit.script(model), str(tmp)))
    elif format == "torch-export":
        atomic_write(path, lambda tmp: torch.export.save(export_program(model, input_size), str(tmp)))
    else:
        _export_onnx(model, path, input_size)
    return path


def _checked_output(path: str | Path, force: bool) -> Path:
    """`check_output_file`, with the user's whole path in the message (not only the folder that fails)."""
    path = Path(path)
    try:
        return check_output_file(path, force=force)
    except OutputError as err:
        if str(path) in str(err):
            raise
        raise OutputError(f"cannot write {path}: {err}") from None


def require_onnx(runtime: bool = False) -> None:
    """Raise `DependencyError` naming the `export` extra unless onnx and onnxscript (and onnxruntime) import."""
    needed = ("onnx", "onnxscript", "onnxruntime") if runtime else ("onnx", "onnxscript")
    missing = [name for name in needed if not _importable(name)]
    if missing:
        purpose = "ONNX export and its check need" if runtime else "ONNX export needs"
        raise DependencyError(
            f"{purpose} {', '.join(needed)}; missing {', '.join(missing)}: pip install 'cbam[export]'"
        )


def _importable(name: str) -> bool:
    try:
        importlib.import_module(name)
    except ImportError:
        return False
    return True


def _export_onnx(model: nn.Module, path: Path, input_size: Sequence[int]) -> None:
    """Export in a staging folder beside `path`, then move the file(s) into place.

    The folder is made first, so an unwritable destination fails before the export runs.
    """
    data = path.with_name(f"{path.name}.data")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    except OSError as err:
        raise OutputError(f"cannot write {path}: {err.strerror or err}") from err
    try:
        program = _onnx_program(model, input_size)
        size = _initializer_bytes(program)
        external = size > ONNX_SINGLE_FILE_LIMIT
        staged = staging / path.name
        program.save(staged, external_data=external)
        if external:
            os.replace(staging / data.name, data)
            log.info("%s: %.2f GB of weights, more than one ONNX file holds; they are in %s", path, size / 1e9, data)
        os.replace(staged, path)
        if not external:
            data.unlink(missing_ok=True)  # an earlier export's weights, which the new file does not use
    except OSError as err:
        raise OutputError(f"cannot write {path}: {err.strerror or err}") from err
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _onnx_program(model: nn.Module, input_size: Sequence[int]) -> torch.onnx.ONNXProgram:
    """The dynamo exporter's program, in memory: saving it is ours to do (one file, atomically)."""
    with attention_impl(model, "eager"):
        return torch.onnx.export(
            model,
            (_example(model, input_size),),
            dynamo=True,
            dynamic_shapes=_dynamic_shapes(),
            input_names=["images"],
            output_names=["logits"],
            verbose=False,
        )


def _initializer_bytes(program: torch.onnx.ONNXProgram) -> int:
    """The size of the weights the ONNX graph holds, which decides between one file and external data."""
    values = program.model.graph.initializers.values()
    return sum(value.const_value.nbytes for value in values if value.const_value is not None)


@dataclass(frozen=True)
class OnnxCheck:
    """How far onnxruntime's outputs are from PyTorch's: the largest absolute difference, and relative to scale."""

    max_abs: float
    max_rel: float


def onnx_max_difference(model: nn.Module, path: str | Path, shapes: Sequence[Sequence[int]]) -> OnnxCheck:
    """Largest |onnxruntime - PyTorch| over random inputs of the given (N, C, H, W) shapes.

    The relative figure divides by the largest |output|: an untrained deep network's logits can
    reach 1e6, where float32 rounding alone differs in the second decimal.
    """
    if not _importable("onnxruntime"):
        raise DependencyError("checking an ONNX file needs onnxruntime: pip install 'cbam[export]'")
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    model = model.eval()
    worst, scale = 0.0, 0.0
    with torch.no_grad():
        for shape in shapes:
            x = torch.randn(*shape)
            ours = model(x.to(next(model.parameters()).device)).float().cpu()
            theirs = torch.from_numpy(session.run(None, {name: x.numpy()})[0])
            worst = max(worst, (ours - theirs).abs().max().item())
            scale = max(scale, ours.abs().max().item())
    return OnnxCheck(worst, worst / scale if scale > 0 else worst)
