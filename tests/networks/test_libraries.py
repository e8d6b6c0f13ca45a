"""torchvision and timm networks by name, from weights made here (never downloaded), with attention attached."""

import json
import re
from urllib.error import URLError

import pytest
import torch
import torchvision

import cbam
from cbam.cli import main
from cbam.errors import CheckpointError, ConfigError, DependencyError
from cbam.networks.classifier import replace_classifier
from cbam.networks.libraries import cached_file
from cbam.runs import load_model
from tests.conftest import tiny_config, write_image_folder


def saved_weights(tmp_path, network: torch.nn.Module, name: str):
    """A network's weights in a file, with random BatchNorm statistics so nothing hides behind a 0 or 1."""
    torch.manual_seed(1)
    with torch.no_grad():
        for module in network.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.normal_(0, 0.1)
                module.running_var.uniform_(0.5, 1.5)
                module.weight.uniform_(0.5, 1.5)  # timm starts each block's last BatchNorm at 0
    path = tmp_path / name
    torch.save(network.state_dict(), path)
    return path, network.eval()


def timm_resnet18():
    timm = pytest.importorskip("timm")
    return timm.create_model("resnet18", pretrained=False)


NETWORKS = {
    "torchvision:resnet18": lambda: torchvision.models.resnet18(),
    "torchvision:mobilenet_v3_small": lambda: torchvision.models.mobilenet_v3_small(),
    "timm:resnet18": timm_resnet18,
}


@pytest.mark.parametrize("arch", list(NETWORKS))
def test_identity_init_computes_what_the_pretrained_network_did(tmp_path, arch):
    path, plain = saved_weights(tmp_path, NETWORKS[arch](), "weights.pth")
    with_cbam = cbam.create_model(arch, attention="cbam", weights=str(path)).eval()
    assert len(with_cbam.cbam_report.insertions) >= 8, "attention went into every block"
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(with_cbam(x), plain(x)), "zero gates: exactly the pretrained network's outputs"
        paper = cbam.create_model(arch, attention="cbam", weights=str(path), attach_init="paper").eval()
        assert not torch.allclose(paper(x), plain(x), atol=1e-3), "the paper's init changes the outputs"


def test_a_new_classifier_fits_the_data_and_keeps_every_other_weight(tmp_path):
    path, plain = saved_weights(tmp_path, torchvision.models.resnet18(), "r18.pth")
    model = cbam.create_model("torchvision:resnet18", attention="se", weights=str(path), num_classes=5).eval()
    assert model.fc.out_features == 5
    features = {}
    model.avgpool.register_forward_hook(lambda m, i, o: features.setdefault("ours", o))
    plain.avgpool.register_forward_hook(lambda m, i, o: features.setdefault("plain", o))
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        model(x), plain(x)
    assert torch.equal(features["ours"], features["plain"])


def test_the_same_network_through_a_zoo_name_gates_its_built_in_attention(tmp_path):
    path, plain = saved_weights(tmp_path, torchvision.models.resnet18(), "r18.pth")
    model = cbam.create_model("resnet18", attention="cbam", weights=str(path)).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(model(x), plain(x), rtol=0, atol=0)


def test_named_torchvision_weights_come_from_torchs_cache(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "_hub_dir", str(tmp_path / "hub"))
    url = torchvision.models.ResNet18_Weights.IMAGENET1K_V1.url
    target = cached_file(url)
    assert target.parent == tmp_path / "hub" / "checkpoints"

    def no_network(*args, **kwargs):
        raise URLError("no route to host")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    with pytest.raises(
        CheckpointError, match=rf"not in torch's cache .*download {url} elsewhere and put it at {target}"
    ):
        cbam.create_model("torchvision:resnet18", weights="IMAGENET1K_V1")
    fetched = {}

    def fetch(url, dst, progress=True):  # what torchvision's download leaves behind
        fetched["url"] = url
        target.parent.mkdir(parents=True)
        torch.save(plain.state_dict(), dst)

    plain = torchvision.models.resnet18().eval()
    monkeypatch.setattr(torch.hub, "download_url_to_file", fetch)
    model = cbam.create_model("torchvision:resnet18", weights="IMAGENET1K_V1", attention="cbam").eval()
    assert fetched["url"] == url and target.is_file()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(model(x), plain(x))
    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)  # cached now: no fetch
    assert cbam.create_model("torchvision:resnet18", weights="DEFAULT").fc.out_features == 1000
    with pytest.raises(ValueError, match="unknown torchvision weights of resnet18 'IMAGENET1K_V3'"):
        cbam.create_model("torchvision:resnet18", weights="IMAGENET1K_V3")


def test_timm_pretrained_weights_come_through_timms_own_fetch(monkeypatch):
    timm = pytest.importorskip("timm")
    plain = timm.create_model("resnet18", pretrained=False).eval()
    builder = timm.models._builder
    monkeypatch.setattr(builder, "load_state_dict_from_hf", lambda *args, **kwargs: plain.state_dict())
    model = cbam.create_model("timm:resnet18", weights="pretrained", attention="cbam", num_classes=1000).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(model(x), plain(x))

    def offline(*args, **kwargs):
        raise OSError("offline")

    monkeypatch.setattr(builder, "load_state_dict_from_hf", offline)
    with pytest.raises(CheckpointError, match="timm could not fetch timm:resnet18's pretrained weights"):
        cbam.create_model("timm:resnet18", weights="pretrained")


def test_bad_names_and_weights_are_refused_in_one_line(tmp_path, monkeypatch):
    with pytest.raises(ValueError, match="unknown torchvision model 'resnet5'; did you mean resnet50"):
        cbam.create_model("torchvision:resnet5")
    with pytest.raises(ValueError, match="unknown model library 'keras'"):
        cbam.create_model("keras:resnet50")
    path, _ = saved_weights(tmp_path, torchvision.models.resnet34(), "r34.pth")
    with pytest.raises(CheckpointError, match=r"r34\.pth does not fit torchvision:resnet18: \d+ unexpected: layer"):
        cbam.create_model("torchvision:resnet18", weights=str(path))
    partial = cbam.create_model("torchvision:resnet18", weights=str(path), strict=False)
    assert torch.equal(partial.conv1.weight, torch.load(path)["conv1.weight"])
    with pytest.raises(ConfigError, match="resnet18 is cbam's own network: --weights takes a file"):
        cbam.create_model("resnet18", weights="IMAGENET1K_V1")
    monkeypatch.setitem(__import__("sys").modules, "timm", None)
    with pytest.raises(DependencyError, match=r"a timm network needs timm: pip install 'cbam\[timm\]'"):
        cbam.create_model("timm:resnet18")


def test_list_models_lists_other_libraries_by_prefix():
    names = cbam.list_models("torchvision:resnet*")
    assert "torchvision:resnet50" in names and all(n.startswith("torchvision:resnet") for n in names)
    assert "torchvision:mobilenet_v3_small" in cbam.list_models("torchvision:*")


def test_set_classes_replaces_only_a_classifier_of_another_size():
    model = torchvision.models.mobilenet_v3_small()
    same = model.classifier[3]
    assert replace_classifier(model, 1000).classifier[3] is same
    assert replace_classifier(model, 3).classifier[3].out_features == 3


def test_fine_tuning_a_torchvision_network_from_a_file_end_to_end(tmp_path, capsys):
    path, _ = saved_weights(tmp_path, torchvision.models.resnet18(), "r18.pth")
    data = write_image_folder(tmp_path / "data", size=32)
    config = tiny_config(data, tmp_path / "run", arch="torchvision:resnet18", model_kwargs={}, weights=str(path),
                         epochs=2, image_size=32, eval_resize=32, lr=0.05)  # fmt: skip
    result = cbam.fit(config)
    assert result.history[-1]["train_loss"] < result.history[0]["train_loss"], "fine-tuning lowers the loss"
    loaded = load_model(tmp_path / "run" / "best.pt")
    assert loaded.config.weights == str(path) and loaded.config.attention_init == "identity"
    assert loaded.model.fc.out_features == 3
    capsys.readouterr()
    assert main(["eval", "--checkpoint", str(tmp_path / "run" / "best.pt"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["top1_error"] == pytest.approx(result.best_value)
    exported = tmp_path / "r18.pt2"
    assert main(["export", "--checkpoint", str(tmp_path / "run" / "best.pt"), "--output", str(exported),
                 "--input-size", "64", "--format", "torch-export"]) == 0  # fmt: skip
    program = torch.export.load(str(exported)).module()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(program(x), loaded.model(x))
    figure = tmp_path / "cam.png"
    assert (
        main(["cam", "--checkpoint", str(tmp_path / "run" / "best.pt"), "--count", "2", "--output", str(figure)]) == 0
    )
    assert figure.read_bytes().startswith(b"\x89PNG")


def test_a_checkpoint_this_installation_cannot_build_names_the_versions_it_was_written_with(tmp_path):
    path, _ = saved_weights(tmp_path, torchvision.models.resnet18(), "r18.pth")
    data = write_image_folder(tmp_path / "data")
    cbam.fit(tiny_config(data, tmp_path / "run", arch="torchvision:resnet18", model_kwargs={}, weights=str(path),
                         epochs=1))  # fmt: skip
    state = torch.load(tmp_path / "run" / "last.pt", weights_only=True)
    assert state["metadata"]["library_versions"] == {"torchvision": torchvision.__version__}
    state["config"]["arch"] = "torchvision:resnet18_v9"  # a network of a newer torchvision
    torch.save(state, tmp_path / "newer.pt")
    version = re.escape(torchvision.__version__)
    refused = rf"newer\.pt records a network this installation cannot build \(written with torchvision {version}\)"
    with pytest.raises(CheckpointError, match=refused):
        load_model(tmp_path / "newer.pt")


def test_a_run_from_weights_starts_where_they_left_off_with_identity_attention(image_folder, tmp_path):
    plain = cbam.fit(tiny_config(image_folder, tmp_path / "plain", attention="none", epochs=2))
    best = plain.history[plain.best_epoch - 1]
    weights = str(tmp_path / "plain" / "best.pt")
    identity = cbam.fit(tiny_config(image_folder, tmp_path / "id", weights=weights, eval_first=True, epochs=1))
    assert identity.initial["top1_error"] == best["val_top1_error"]
    assert identity.initial["loss"] == pytest.approx(best["val_loss"], rel=1e-6)
    paper = cbam.fit(tiny_config(image_folder, tmp_path / "paper", weights=weights, eval_first=True, epochs=1,
                                 attach_init="paper"))  # fmt: skip
    assert paper.initial["loss"] != pytest.approx(best["val_loss"], rel=1e-3), "the paper's init moves the start"
    summary = json.loads((tmp_path / "id" / "summary.json").read_text())
    assert summary["initial"] == identity.initial


def test_named_weights_bring_their_preprocessing_unless_the_user_overrides_it():
    from cbam.classification.task import ClassificationConfig, config_eval_transform
    from cbam.engine.config import build_config

    tv = build_config(ClassificationConfig, "cluttered-digits", arch="torchvision:resnet18", weights="IMAGENET1K_V1")
    assert (tv.image_size, tv.eval_resize, tv.mean, tv.std) == (224, 256, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    assert tv.epochs == 4, "the rest of the recipe stays"
    mine = build_config(ClassificationConfig, None, arch="torchvision:resnet18", weights="IMAGENET1K_V1",
                        image_size=96, eval_resize=110, mean=(0.5, 0.5, 0.5))  # fmt: skip
    assert (mine.image_size, mine.eval_resize, mine.mean) == (96, 110, (0.5, 0.5, 0.5))
    normalize = config_eval_transform(mine).transforms[-1]
    assert tuple(normalize.mean) == (0.5, 0.5, 0.5) and tuple(normalize.std) == (0.229, 0.224, 0.225)
    pytest.importorskip("timm")
    timm_config = build_config(ClassificationConfig, None, arch="timm:resnet18", weights="pretrained")
    assert (timm_config.image_size, timm_config.eval_resize) == (224, round(224 / 0.95))
    from_file = build_config(ClassificationConfig, "cluttered-digits", arch="torchvision:resnet18", weights="w.pth")
    assert from_file.image_size == 64, "a file does not say how it was trained: the recipe's sizes"


@pytest.mark.parametrize("arch", ["torchvision:resnet18", "resnet18"])
def test_weights_that_hold_trained_attention_keep_it_when_new_attention_would_start_as_identity(tmp_path, arch):
    """Fine-tuning a CBAM network again: its attention, trained without a gate, loads into the gated network
    (the gate opened) and the network computes what the file's did."""
    torch.manual_seed(0)
    trained = cbam.create_model(arch, attention="cbam", num_classes=7).eval()
    path, trained = saved_weights(tmp_path, trained, "cbam.pth")
    again = cbam.create_model(arch, attention="cbam", weights=str(path), num_classes=7).eval()
    gates = [p for n, p in again.named_parameters() if n.endswith(".gate")]
    assert len(gates) == 8 and all(g.item() == 1 for g in gates), "each block's attention came from the file"
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(again(x), trained(x), rtol=0, atol=0)
        once_more = cbam.create_model(arch, attention="cbam", weights=str(_saved(tmp_path, again)), num_classes=7)
        torch.testing.assert_close(once_more.eval()(x), trained(x), rtol=0, atol=0)


def _saved(tmp_path, model: torch.nn.Module):
    path = tmp_path / "again.pth"
    torch.save(model.state_dict(), path)
    return path


def test_a_file_that_names_another_network_is_refused_by_name(tmp_path):
    from cbam.checkpoint import Checkpoint, save_checkpoint

    for arch, network in (("resnet34", cbam.create_model("resnet34")), ("resnet18", cbam.create_model("resnet18"))):
        save_checkpoint(tmp_path / f"{arch}.pt", Checkpoint("classification", {"arch": arch}, None, 1,
                                                            network.state_dict()))  # fmt: skip
    for target in ("torchvision:resnet18", "resnet18_cbam"):
        with pytest.raises(CheckpointError, match=r"resnet34\.pt holds weights of a resnet34, not of the"):
            cbam.create_model(target, weights=str(tmp_path / "resnet34.pt"))
    authors = {"arch": "resnet34", "state_dict": cbam.create_model("resnet34").state_dict()}
    torch.save(authors, tmp_path / "authors.pth")
    with pytest.raises(CheckpointError, match="holds weights of a resnet34, not of the torchvision:resnet18"):
        cbam.create_model("torchvision:resnet18", weights=str(tmp_path / "authors.pth"))
    ours = cbam.create_model("torchvision:resnet18", weights=str(tmp_path / "resnet18.pt"), num_classes=1000)
    assert torch.equal(ours.conv1.weight, torch.load(tmp_path / "resnet18.pt")["model"]["conv1.weight"]), (
        "the zoo's resnet18 is torchvision's: its weights load"
    )
