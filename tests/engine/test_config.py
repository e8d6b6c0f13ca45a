import os

import pytest

from cbam.engine.config import (
    TrainConfig,
    build_config,
    config_from_dict,
    read_recipe,
    recipe_names,
    resumed_config,
)
from cbam.errors import ConfigError
from cbam.paper import load_tables


def test_defaults_are_the_papers_imagenet_recipe():
    paper = load_tables()["imagenet_recipe"]
    config = TrainConfig()
    assert (config.epochs, config.lr, config.lr_step, config.lr_gamma) == (
        paper["epochs"],
        paper["lr"],
        paper["lr_step_epochs"],
        paper["lr_gamma"],
    )
    assert (config.momentum, config.weight_decay, config.batch_size) == (0.9, 1e-4, 256)
    assert (config.image_size, config.eval_resize, config.hflip, config.lr_schedule) == (224, 256, True, "step")
    assert build_config("imagenet", data="x", output="y") == TrainConfig(data="x", output="y", recipe="imagenet")


def test_learning_rate_scales_linearly_with_the_global_batch():
    assert TrainConfig(batch_size=256).scaled_lr == 0.1
    assert TrainConfig(batch_size=1024).scaled_lr == pytest.approx(0.4)
    assert TrainConfig(batch_size=64, lr=0.2).scaled_lr == pytest.approx(0.05)


def test_command_line_beats_recipe_beats_defaults(tmp_path):
    recipe = tmp_path / "mine.yaml"
    recipe.write_text("epochs: 5\nlr: 0.2\ncrop_scale: [0.5, 1.0]\n")
    config = build_config(str(recipe), lr=0.3, epochs=None)
    assert (config.epochs, config.lr, config.crop_scale, config.momentum) == (5, 0.3, (0.5, 1.0), 0.9)


def test_config_round_trips_through_its_dict():
    config = TrainConfig(data="d", output="o", attention={"name": "cbam", "kernel_size": 3}, crop_scale=(0.3, 0.9))
    assert config_from_dict(config.to_dict()) == config


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"epochs": 0}, "epochs"),
        ({"lr_schedule": "poly"}, "unknown lr_schedule 'poly'"),
        ({"crop_scale": (0.9, 0.5)}, "crop_scale"),
        ({"eval_resize": 100}, "eval_resize"),
        ({"amp_dtype": "fp8"}, "amp_dtype"),
    ],
)
def test_bad_values_are_refused_with_their_name(overrides, message):
    with pytest.raises(ValueError, match=message):
        build_config(None, **overrides)


def test_recipes_refuse_unknown_keys_names_and_files(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("epochz: 3\n")
    with pytest.raises(ValueError, match=r"unknown keys \['epochz'\]"):
        read_recipe(str(bad))
    with pytest.raises(ValueError, match="unknown recipe 'imagent'; did you mean imagenet"):
        read_recipe("imagent")
    with pytest.raises(ConfigError, match="does not exist"):
        read_recipe(str(tmp_path / "missing.yaml"))
    assert "imagenet" in recipe_names()


def test_a_built_in_dataset_gets_its_own_recipe_unless_one_is_named():
    digits = build_config(None, data="cluttered-digits")
    assert (digits.recipe, digits.image_size, digits.epochs) == ("cluttered-digits", 64, 4)
    paper = build_config("imagenet", data="cluttered-digits")
    assert (paper.recipe, paper.image_size, paper.epochs) == ("imagenet", 224, 90)
    assert build_config(None, data="some/folder").recipe == ""


def test_a_data_folder_is_recorded_as_an_absolute_path(tmp_path, monkeypatch):
    (tmp_path / "tiny").mkdir()
    monkeypatch.chdir(tmp_path)
    config = build_config(None, data="tiny")
    assert config.data == str(tmp_path / "tiny") and os.path.isabs(config.data)
    assert build_config(None, data="cifar10").data == "cifar10"  # names stay names


def test_resuming_accepts_equal_values_and_names_each_real_change():
    saved = build_config("cluttered-digits", data="cluttered-digits", output="o", lr=0.01)
    same = {**read_recipe("cluttered-digits"), "recipe": "cluttered-digits", "lr": 0.01, "data": "cluttered-digits"}
    assert resumed_config(saved, same, ("epochs",)) == saved
    assert resumed_config(saved, {"epochs": 9}, ("epochs",)).epochs == 9
    with pytest.raises(ConfigError, match=r"lr 0.01 -> 0.02; batch_size 32 -> 64\. Only epochs may change"):
        resumed_config(saved, {"lr": 0.02, "batch_size": 64, "epochs": 9}, ("epochs",))


def test_the_run_banner_says_whose_recipe_trains():
    from cbam.engine.train import _recipe_line

    assert _recipe_line(build_config(None, data="cluttered-digits")).endswith(
        "(the dataset's own; --recipe imagenet for the paper's)"
    )
    assert _recipe_line(build_config("imagenet", data="cluttered-digits")) == "recipe: imagenet"
    assert _recipe_line(build_config(None, data="some/folder")) == "recipe: the paper's ImageNet recipe"
