"""Export a network for deployment: ONNX (checked against onnxruntime), TorchScript, torch.export.

Every export takes a dynamic batch size and a dynamic image height and width (64 to 4096 px).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from cbam.errors import ConfigError
from cbam.layers.fused import attention_impl

EXPORT_FORMATS: tuple[str, ...] = ("onnx", "torchscript", "torch-export")
_MIN_SIDE, _MAX_SIDE = 64, 4096  # below 64 px the last stage is 1x1, a shape export specialises


def _dynamic_shapes() -> dict[str, dict[int, torch.export.Dim]]:
    return {
        "x": {
            0: torch.export.Dim("batch", min=1, max=4096),
            2: torch.export.Dim("height", min=_MIN_SIDE, max=_MAX_SIDE),
            3: torch.export.Dim("width", min=_MIN_SIDE, max=_MAX_SIDE),
        }
    }


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
    model: nn.Module, path: str | Path, format: str = "onnx", input_size: Sequence[int] = (3, 224, 224)
) -> Path:
    """Write `model` (in eval mode) to `path` as ONNX, TorchScript or a torch.export program (.pt2)."""
    if format not in EXPORT_FORMATS:
        raise ConfigError(f"unknown export format {format!r}; choose from {', '.join(EXPORT_FORMATS)}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    model = model.eval()
    if format == "torchscript":
        torch.jit.save(torch.jit.script(model), str(path))
    elif format == "torch-export":
        torch.export.save(export_program(model, input_size), str(path))
    else:
        _export_onnx(model, path, input_size)
    return path


def _export_onnx(model: nn.Module, path: Path, input_size: Sequence[int]) -> None:
    with attention_impl(model, "eager"):
        try:
            import onnxscript  # noqa: F401  (the ONNX exporter needs it)
        except ImportError:
            raise ImportError("ONNX export needs onnx and onnxscript: pip install 'cbam[export]'") from None
        torch.onnx.export(
            model,
            (_example(model, input_size),),
            str(path),
            dynamo=True,
            dynamic_shapes=_dynamic_shapes(),
            input_names=["images"],
            output_names=["logits"],
            verbose=False,
        )


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
    try:
        import onnxruntime
    except ImportError:
        raise ImportError("checking an ONNX file needs onnxruntime: pip install 'cbam[export]'") from None
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
