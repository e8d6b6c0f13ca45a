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
    assert onnx_max_difference(model, path, SHAPES) < 1e-4


def test_onnx_export_of_an_attached_torchvision_network(tmp_path):
    model = attach(torchvision.models.mobilenet_v2(num_classes=10), "cbam", input_size=(3, 64, 64), verbose=False)
    path = export_model(model, tmp_path / "mnv2.onnx", "onnx", (3, 64, 64))
    assert onnx_max_difference(model, path, SHAPES) < 1e-4


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
    assert code == 0 and "onnxruntime vs PyTorch, max abs difference" in out
    assert main(["export", "--output", str(tmp_path / "x.onnx")]) == 2
    assert "give --checkpoint FILE or a model name" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.parametrize("name", cbam.list_models())
def test_every_zoo_model_exports_to_onnx_and_torch_export(tmp_path, name):
    model = cbam.create_model(name, num_classes=10).eval()
    path = export_model(model, tmp_path / "model.onnx", "onnx", (3, 64, 64))
    assert onnx_max_difference(model, path, SHAPES) < 1e-4
    x = torch.randn(2, 3, 64, 96)
    torch.testing.assert_close(export_program(model, (3, 64, 64)).module()(x), model(x))
    torch.testing.assert_close(torch.jit.script(model)(x), model(x))
