"""`cbam.load_model`: one door for every file cbam wrote, of either task and either format version."""

from pathlib import Path

import pytest
import torch

import cbam
from cbam.checkpoint import read_checkpoint
from cbam.classification.task import ClassificationConfig
from cbam.errors import CheckpointError, ConfigError
from cbam.runs import load_model, resume_config, task_class
from tests.conftest import tiny_config, write_image_folder
from tests.layers.rounding import outcomes, rounding_bound

V1 = Path(__file__).parent / "checkpoints_v1"


@pytest.mark.parametrize("name", ["classification-v1.pt", "classification-v1.safetensors"])
def test_a_file_written_by_format_1_computes_what_it_computed_then(name):
    recorded = torch.load(V1 / "classification-v1-outputs.pt", weights_only=True)
    loaded = load_model(V1 / name)
    assert (loaded.task, loaded.classes, loaded.epoch) == ("classification", ["class0", "class1", "class2"], 1)
    assert isinstance(loaded.config, ClassificationConfig) and loaded.config.attention == "cbam"
    assert not loaded.model.training
    # the logits were recorded on another CPU, whose kernels round in their own order: as close to float64 as
    # this CPU's own eager run, within the rounding bound of the parity tests
    with torch.no_grad():
        bound = rounding_bound(loaded.model, [recorded["input"]], None)
        ours = outcomes(loaded.model, [recorded["input"]], None)
    bound.check({**ours, "output": recorded["logits"]}, "the logits format 1 recorded")
    bound.check(ours, "the logits now")


def test_format_1_checkpoint_keeps_its_best_epoch_history_and_resume_state():
    old = read_checkpoint(V1 / "classification-v1.pt")
    assert old.best["metric"] == "val_top1_error" and old.best["epoch"] == 1
    assert old.history[0]["val_top1_error"] == old.best["value"]
    assert set(old.training) == {"optimizer", "scaler", "rng"}


def test_a_format_1_config_keeps_its_learning_rate_meaning_lr_per_256_images():
    old = read_checkpoint(V1 / "classification-v1.pt")
    assert "lr_batch" not in old.config
    config = load_model(V1 / "classification-v1.pt").config
    assert config.base_lr == pytest.approx(old.config["lr"] * old.config["batch_size"] / 256)


def test_a_run_loads_back_from_its_checkpoint_and_its_weights_alike(tmp_path):
    config = tiny_config(write_image_folder(tmp_path / "data"), tmp_path / "run", epochs=1)
    result = cbam.fit(config)
    x = torch.randn(2, 3, 16, 16)
    outputs = []
    for name in ("best.pt", "last.pt", "last.safetensors"):
        loaded = cbam.load_model(tmp_path / "run" / name)
        assert loaded.config == config and loaded.classes == ["class0", "class1", "class2"] and loaded.epoch == 1
        with torch.no_grad():
            outputs.append(loaded.model(x))
    assert all(torch.equal(o, outputs[0]) for o in outputs)
    assert read_checkpoint(tmp_path / "run" / "best.pt").best["value"] == result.best_value


def test_a_file_of_the_other_task_is_refused_naming_its_commands():
    with pytest.raises(CheckpointError, match="holds a classification network, not a detection one; use `cbam`"):
        load_model(V1 / "classification-v1.pt", task="detection")


def test_weights_that_do_not_fit_the_recorded_network_are_refused(tmp_path):
    state = torch.load(V1 / "classification-v1.pt", weights_only=True)
    state["model"] = {k: v for k, v in state["model"].items() if not k.startswith("fc.")} | {
        "fc.weight": torch.zeros(3, 7), "fc.bias": torch.zeros(3),
    }  # fmt: skip
    torch.save(state, tmp_path / "bad.pt")
    with pytest.raises(CheckpointError, match=r"bad\.pt's weights do not fit the network it records"):
        load_model(tmp_path / "bad.pt")


def test_an_unknown_task_and_a_changed_recipe_on_resume_are_refused(tmp_path):
    with pytest.raises(ValueError, match="unknown task 'segmentation'"):
        task_class("segmentation")
    config = tiny_config(write_image_folder(tmp_path / "data"), tmp_path / "run", epochs=1)
    cbam.fit(config)
    last = tmp_path / "run" / "last.pt"
    assert resume_config(last, epochs=3, lr=config.lr).epochs == 3, "an equal lr is accepted"
    with pytest.raises(ConfigError, match=r"lr 0.8 -> 0.1"):
        resume_config(last, lr=0.1)
