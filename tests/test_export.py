"""Export with dynamic batch and image size: ONNX checked against onnxruntime, torch.export, TorchScript."""

import pytest
import torch
import torchvision

import cbam
from cbam.attach import attach
from cbam.cli import main
from cbam.export import export_model, export_program, onnx_max_difference

SHAPES = [(1, 3, 64, 64), (3, 3, 96, 80)]


@pytest.mark.parametrize("name", ["resnet18_cbam", "mobilenet_v1_bam"])
def test_onnx_export_of_zoo_models_matches_onnxruntime(tmp_path, name):
    model = cbam.create_model(name, num_classes=10).eval()
    path = export_model(model, tmp_path / f"{name}.onnx", "onnx", (3, 64, 64))
    check = onnx_max_difference(model, path, SHAPES)
    assert check.max_rel < 1e-5 and check.max_abs < 1e-3


def test_onnx_export_of_an_attached_torchvision_network(tmp_path):
    model = attach(torchvision.models.mobilenet_v2(num_classes=10), "cbam", input_size=(3, 64, 64), verbose=False)
    path = export_model(model, tmp_path / "mnv2.onnx", "onnx", (3, 64, 64))
    assert onnx_max_difference(model, path, SHAPES).max_rel < 5e-4  # float32 rounding through up to 152 layers


def test_torch_export_and_torchscript_files_compute_the_same(tmp_path):
    model = cbam.create_model("resnet18_se", num_classes=10).eval()
    x = torch.randn(3, 3, 72, 88)
    program = torch.export.load(str(export_model(model, tmp_path / "r18.pt2", "torch-export", (3, 64, 64))))
    torch.testing.assert_close(program.module()(x), model(x))
    scripted = torch.jit.load(str(export_model(model, tmp_path / "r18.pt", "torchscript")))
    torch.testing.assert_close(scripted(x), model(x))


def test_cli_export_reports_the_onnxruntime_difference(tmp_path, capsys):
    code = main(["export", "--arch", "resnet18", "--attention", "cbam", "--output", str(tmp_path / "m.onnx"),
                 "--input-size", "64"])  # fmt: skip
    out = capsys.readouterr().out
    assert code == 0 and "onnxruntime vs PyTorch over" in out and "of the largest output" in out
    assert main(["export", "--output", str(tmp_path / "x.onnx")]) == 2
    assert "give --checkpoint FILE or a model name" in capsys.readouterr().err


def calibrated(model: torch.nn.Module) -> torch.nn.Module:
    """BatchNorm statistics measured on data, as in a trained network: a fresh deep ResNet's activations
    otherwise grow block after block to ~1e6, where float32 rounding alone differs in the 4th digit."""
    for module in model.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.reset_running_stats()
            module.momentum = None  # a plain average over the calibration batches
    model.train()
    with torch.no_grad():
        for _ in range(2):
            model(torch.randn(8, 3, 64, 64))
    return model.eval()


@pytest.mark.slow
@pytest.mark.parametrize("name", cbam.list_models())
def test_every_zoo_model_exports_to_onnx_and_torch_export(tmp_path, name):
    # Exports hold the eager ops; the reference runs them too (the fused gate rounds differently, and 150
    # layers amplify that: fused against eager is tested in tests/layers/fused).
    model = calibrated(cbam.create_model(name, num_classes=10, impl="eager"))
    path = export_model(model, tmp_path / "model.onnx", "onnx", (3, 64, 64))
    assert onnx_max_difference(model, path, SHAPES).max_rel < 5e-4  # float32 rounding through up to 152 layers
    x = torch.randn(2, 3, 64, 96)
    reference = model(x)
    tolerance = {"rtol": 1e-4, "atol": 1e-5 * reference.abs().max().item()}
    torch.testing.assert_close(export_program(model, (3, 64, 64)).module()(x), reference, **tolerance)
    torch.testing.assert_close(torch.jit.script(model)(x), reference, **tolerance)
