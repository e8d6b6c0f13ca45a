"""Export with dynamic batch and image size: ONNX checked against onnxruntime, torch.export, TorchScript."""

import os
import sys

import pytest
import torch
import torchvision

import cbam
import cbam.export
from cbam.cli import main
from cbam.errors import DependencyError, OutputError
from cbam.export import export_model, export_program, onnx_max_difference
from cbam.networks.attach import attach

SHAPES = [(1, 3, 64, 64), (3, 3, 96, 80)]


@pytest.mark.parametrize("name", ["resnet18_cbam", "mobilenet_v1_bam"])
def test_onnx_export_of_zoo_models_matches_onnxruntime(tmp_path, name):
    model = cbam.create_model(name, num_classes=10).eval()
    path = export_model(model, tmp_path / f"{name}.onnx", "onnx", (3, 64, 64))
    assert os.listdir(tmp_path) == [f"{name}.onnx"]  # one self-contained file, no external .data
    check = onnx_max_difference(model, path, SHAPES)
    assert check.max_rel < 1e-5 and check.max_abs < 1e-3


def test_every_attention_exports_to_onnx_and_matches_onnxruntime(tmp_path):
    """One ResNet-18 whose 8 blocks each hold another of the 8 newer attentions: one export checks them all."""
    from cbam.layers.create import create_attention_factory

    names = iter(["eca", "ceca", "ese", "ge", "gc", "coord", "simam", "triplet"])
    model = cbam.create_model("resnet18", attention=lambda c: create_attention_factory(next(names))(c),
                              width_mult=0.25, num_classes=10).eval()  # fmt: skip
    assert next(names, None) is None, "every attention is in a block"
    path = export_model(model, tmp_path / "attentions.onnx", "onnx", (3, 64, 64))
    check = onnx_max_difference(model, path, SHAPES)
    assert check.max_rel < 1e-4 and check.max_abs < 1e-3
    inside = cbam.create_model("resnet18_simam", width_mult=0.25, num_classes=10).eval()  # SimAM after conv2
    check = onnx_max_difference(inside, export_model(inside, tmp_path / "simam.onnx", "onnx", (3, 64, 64)), SHAPES)
    assert check.max_rel < 1e-4 and check.max_abs < 1e-3


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
    assert "give --checkpoint FILE, a model name" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("output", "message"),
    [
        ("/dev/null/x.onnx", "/dev/null is a file, not a folder"),
        ("{tmp}/folder.onnx", "is a folder; give the path of the file to write"),
        ("{tmp}/existing.onnx", "existing.onnx exists; pass --force to replace it"),
    ],
)
def test_cli_export_checks_its_output_before_any_work(tmp_path, capsys, output, message):
    (tmp_path / "folder.onnx").mkdir()
    (tmp_path / "existing.onnx").write_text("keep me")
    code = main(["export", "--arch", "resnet18", "--output", output.format(tmp=tmp_path)])
    err = capsys.readouterr().err
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1
    assert (tmp_path / "existing.onnx").read_text() == "keep me"


def test_cli_export_takes_a_plain_state_dict_with_the_network_named(tmp_path, capsys):
    model = cbam.create_model("resnet18", attention="cbam", num_classes=10).eval()
    torch.save(model.state_dict(), tmp_path / "plain.pth")
    argv = ["export", "--checkpoint", str(tmp_path / "plain.pth"), "--format", "torchscript", "--input-size", "32"]
    assert main([*argv, "--output", str(tmp_path / "no-arch.pt")]) == 2
    assert "resnet18" not in capsys.readouterr().out
    code = main([*argv, "--arch", "resnet18", "--attention", "cbam", "--model-arg", "num_classes=10",
                 "--output", str(tmp_path / "m.pt")])  # fmt: skip
    assert code == 0, capsys.readouterr().err
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(torch.jit.load(str(tmp_path / "m.pt"))(x), model(x))


def tiny() -> torch.nn.Module:
    """A network that exports in a few seconds."""
    layers = [torch.nn.Conv2d(3, 16, 3, padding=1), cbam.CBAM(16), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten()]
    return torch.nn.Sequential(*layers, torch.nn.Linear(16, 4)).eval()


def test_weights_above_the_single_file_limit_go_to_external_data_and_a_smaller_export_removes_it(tmp_path, monkeypatch):
    model, path = tiny(), tmp_path / "m.onnx"
    monkeypatch.setattr(cbam.export, "ONNX_SINGLE_FILE_LIMIT", 0)
    export_model(model, path, input_size=(3, 64, 64))
    assert sorted(os.listdir(tmp_path)) == ["m.onnx", "m.onnx.data"]
    assert onnx_max_difference(model, path, SHAPES).max_abs < 1e-5
    monkeypatch.undo()
    export_model(model, path, input_size=(3, 64, 64), force=True)
    assert os.listdir(tmp_path) == ["m.onnx"]
    assert onnx_max_difference(model, path, SHAPES).max_abs < 1e-5


def unexported(*args, **kwargs):
    pytest.fail("the export started before its output path was checked")


@pytest.mark.parametrize("format", ["onnx", "torchscript"])
def test_unwritable_outputs_are_refused_before_the_export_naming_the_users_path(tmp_path, monkeypatch, format):
    monkeypatch.setattr(cbam.export, "_onnx_program", unexported)
    monkeypatch.setattr(torch.jit, "script", unexported)
    (tmp_path / "x.onnx").mkdir()
    (tmp_path / "file").write_text("")
    (tmp_path / "old.onnx").write_text("keep")
    outputs = ["/dev/null/x.onnx", tmp_path / "x.onnx", tmp_path / "file/x.onnx", "/proc/x.onnx", tmp_path / "old.onnx"]
    for output in outputs:
        with pytest.raises(OutputError) as error:
            export_model(tiny(), output, format)
        assert str(output) in str(error.value) and ".tmp" not in str(error.value), error.value
    assert "--force" in str(error.value) and (tmp_path / "old.onnx").read_text() == "keep"
    assert sorted(os.listdir(tmp_path)) == ["file", "old.onnx", "x.onnx"] and not os.listdir(tmp_path / "x.onnx")


@pytest.mark.parametrize("format", ["onnx", "torchscript", "torch-export"])
def test_a_failed_export_leaves_no_file_and_keeps_the_one_it_would_replace(tmp_path, monkeypatch, format):
    def broken(*args, **kwargs):
        raise RuntimeError("exporter failed")

    monkeypatch.setattr(cbam.export, "_onnx_program", broken)
    monkeypatch.setattr(cbam.export, "export_program", broken)
    monkeypatch.setattr(torch.jit, "script", broken)
    with pytest.raises(RuntimeError, match="exporter failed"):
        export_model(tiny(), tmp_path / "new.model", format)
    (tmp_path / "old.model").write_text("keep")
    with pytest.raises(RuntimeError, match="exporter failed"):
        export_model(tiny(), tmp_path / "old.model", format, force=True)
    assert os.listdir(tmp_path) == ["old.model"] and (tmp_path / "old.model").read_text() == "keep"


@pytest.mark.parametrize("package", ["onnx", "onnxscript"])
def test_a_missing_onnx_package_names_the_extra_before_any_work(tmp_path, monkeypatch, package):
    monkeypatch.setattr(cbam.export, "_onnx_program", unexported)
    monkeypatch.setitem(sys.modules, package, None)  # import fails as if not installed
    with pytest.raises(DependencyError, match=rf"missing {package}: pip install 'cbam\[export\]'"):
        export_model(tiny(), tmp_path / "m.onnx")
    assert not os.listdir(tmp_path)


def test_a_missing_onnxruntime_names_the_extra(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with pytest.raises(DependencyError, match=r"onnxruntime: pip install 'cbam\[export\]'"):
        onnx_max_difference(tiny(), tmp_path / "m.onnx", SHAPES)
    with pytest.raises(DependencyError, match="missing onnxruntime"):
        cbam.export.require_onnx(runtime=True)


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
