import argparse
import dataclasses
import os

import pytest

from cbam.classification.task import ClassificationConfig
from cbam.cli import main
from cbam.engine.config import (
    RunConfig,
    add_config_arguments,
    build_config,
    config_arguments,
    config_fields,
    config_from_dict,
    config_yaml,
    read_recipe,
    recipe_line,
    recipe_names,
    resumable_keys,
    with_resume_changes,
)
from cbam.errors import ConfigError
from cbam.paper import load_tables


def test_defaults_are_the_papers_imagenet_recipe():
    paper = load_tables()["imagenet_recipe"]
    config = ClassificationConfig()
    assert (config.epochs, config.lr, config.lr_step, config.lr_gamma) == (
        paper["epochs"],
        paper["lr"],
        paper["lr_step_epochs"],
        paper["lr_gamma"],
    )
    assert (config.momentum, config.weight_decay, config.batch_size) == (0.9, 1e-4, 256)
    assert (config.image_size, config.eval_resize, config.hflip, config.lr_schedule) == (224, 256, True, "step")
    assert build_config(ClassificationConfig, "imagenet", data="x", output="y") == ClassificationConfig(
        data="x", output="y", recipe="imagenet"
    )


def test_learning_rate_scales_linearly_with_the_global_batch():
    assert ClassificationConfig(batch_size=256).base_lr == 0.1
    assert ClassificationConfig(batch_size=1024).base_lr == pytest.approx(0.4)
    assert ClassificationConfig(batch_size=64, lr=0.2).base_lr == pytest.approx(0.05)
    assert ClassificationConfig(batch_size=64, lr=0.2, lr_batch=32).base_lr == pytest.approx(0.4)


def test_lr_has_one_declaration_and_meaning_for_every_task_whose_defaults_alone_differ():
    from cbam.detection.task import DetectionConfig
    from cbam.engine.config import RunConfig, config_fields

    for name in ("epochs", "batch_size", "lr", "lr_batch"):
        shared = config_fields(RunConfig)[name].metadata["help"]
        assert config_fields(ClassificationConfig)[name].metadata["help"] == shared
        assert config_fields(DetectionConfig)[name].metadata["help"] == shared
    # A detection recipe gives lr for its own batch (lr_batch 0), as every detection file before lr_batch did.
    assert DetectionConfig(batch_size=4, lr=0.01).base_lr == 0.01
    assert DetectionConfig(batch_size=4, lr=0.01, lr_batch=16).base_lr == pytest.approx(0.0025)
    with pytest.raises(ConfigError, match="lr_batch must be 0"):
        ClassificationConfig(lr_batch=-1)


def test_command_line_beats_recipe_beats_defaults(tmp_path):
    recipe = tmp_path / "mine.yaml"
    recipe.write_text("epochs: 5\nlr: 0.2\ncrop_scale: [0.5, 1.0]\n")
    config = build_config(ClassificationConfig, str(recipe), lr=0.3, epochs=None)
    assert (config.epochs, config.lr, config.crop_scale, config.momentum) == (5, 0.3, (0.5, 1.0), 0.9)


def test_config_round_trips_through_its_dict():
    config = ClassificationConfig(
        data="d", output="o", attention={"name": "cbam", "kernel_size": 3}, crop_scale=(0.3, 0.9)
    )
    assert config_from_dict(ClassificationConfig, config.to_dict()) == config


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
        build_config(ClassificationConfig, None, **overrides)


def test_recipes_refuse_unknown_keys_names_and_files(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("epochz: 3\n")
    with pytest.raises(
        ConfigError, match=r"unknown classification config keys \['epochz'\]; valid keys: output, .*epochs"
    ):
        read_recipe(ClassificationConfig, str(bad))
    with pytest.raises(ValueError, match="unknown classification recipe 'imagent'; did you mean imagenet"):
        read_recipe(ClassificationConfig, "imagent")
    with pytest.raises(ConfigError, match="does not exist"):
        read_recipe(ClassificationConfig, str(tmp_path / "missing.yaml"))
    assert recipe_names(ClassificationConfig) == ["cluttered-digits", "cluttered-digits-compare", "imagenet"]
    with pytest.raises(ConfigError, match=r"unknown classification config keys \['epochz'\]; valid keys:"):
        config_from_dict(ClassificationConfig, {"epochz": 3})


def test_a_built_in_dataset_gets_its_own_recipe_unless_one_is_named():
    digits = build_config(ClassificationConfig, None, data="cluttered-digits")
    assert (digits.recipe, digits.image_size, digits.epochs) == ("cluttered-digits", 64, 4)
    paper = build_config(ClassificationConfig, "imagenet", data="cluttered-digits")
    assert (paper.recipe, paper.image_size, paper.epochs) == ("imagenet", 224, 90)
    assert build_config(ClassificationConfig, None, data="some/folder").recipe == ""
    small = build_config(ClassificationConfig, "cluttered-digits-compare", data="cluttered-digits", arch="resnet18")
    assert (small.image_size, small.model_kwargs) == (32, {"stem": "cifar", "width_mult": 0.25})  # `make run`'s


def test_a_data_folder_is_recorded_as_an_absolute_path(tmp_path, monkeypatch):
    (tmp_path / "tiny").mkdir()
    monkeypatch.chdir(tmp_path)
    config = build_config(ClassificationConfig, None, data="tiny")
    assert config.data == str(tmp_path / "tiny") and os.path.isabs(config.data)
    assert build_config(ClassificationConfig, None, data="cifar10").data == "cifar10"  # names stay names


def test_resuming_accepts_equal_values_and_names_each_real_change():
    saved = build_config(ClassificationConfig, "cluttered-digits", data="cluttered-digits", output="o", lr=0.01)
    same = {**read_recipe(ClassificationConfig, "cluttered-digits"), "recipe": "cluttered-digits", "lr": 0.01,
            "data": "cluttered-digits"}  # fmt: skip
    assert with_resume_changes(saved, same) == saved
    assert with_resume_changes(saved, {"epochs": 9, "workers": 0}).epochs == 9
    allowed = "download, epochs, workers, channels_last, compile, device, output"
    assert ", ".join(resumable_keys(ClassificationConfig)) == allowed
    with pytest.raises(ConfigError, match=rf"lr 0.01 -> 0.02; batch_size 32 -> 64\. Only {allowed} may change"):
        with_resume_changes(saved, {"lr": 0.02, "batch_size": 64, "epochs": 9})


def test_the_run_banner_says_whose_recipe_trains():
    digits = build_config(ClassificationConfig, None, data="cluttered-digits")
    assert recipe_line(digits) == "recipe: cluttered-digits (the dataset's own)"
    assert recipe_line(build_config(ClassificationConfig, "imagenet", data="cluttered-digits")) == "recipe: imagenet"
    assert recipe_line(build_config(ClassificationConfig, None, data="some/folder")) == "recipe: the defaults"


# ---------------------------------------------------------------------------------------------
# Flags generated from the declarations


def parsed(cls: type[RunConfig], argv: list[str], skip: tuple[str, ...] = ()) -> dict:
    parser = argparse.ArgumentParser()
    add_config_arguments(parser, cls, skip)
    return config_arguments(parser.parse_args(argv), cls, skip)


def test_every_option_but_the_run_folder_and_recipe_is_a_flag_with_its_declared_help():
    parser = argparse.ArgumentParser()
    add_config_arguments(parser, ClassificationConfig)
    flags = {a.dest: a for a in parser._actions if a.dest != "help"}
    assert set(flags) == set(config_fields(ClassificationConfig)) - {"output", "recipe"}
    assert flags["model_kwargs"].option_strings == ["--model-arg"]
    assert flags["epochs"].help == "training epochs (paper: 90)" and flags["lr_schedule"].metavar == "{step,cosine}"
    assert all(a.default is None for a in flags.values()), "what is not given comes from the recipe"


def test_flags_parse_to_config_values_and_leave_the_rest_to_the_recipe():
    values = parsed(ClassificationConfig, [
        "--epochs", "3", "--crop-scale", "0.5", "1", "--model-arg", "widen_factor=0.25", "--no-hflip",
        "--attention", '{"name": "cbam", "kernel_size": 3}', "--amp",
    ])  # fmt: skip
    assert values == {
        "epochs": 3, "crop_scale": [0.5, 1.0], "model_kwargs": {"widen_factor": 0.25}, "hflip": False,
        "attention": {"name": "cbam", "kernel_size": 3}, "amp": True,
    }  # fmt: skip
    assert parsed(ClassificationConfig, []) == {}
    with pytest.raises(ConfigError, match="--attention is not valid JSON"):
        parsed(ClassificationConfig, ["--attention", "{bad"])


def test_options_a_command_sets_itself_are_neither_flags_nor_values():
    values = parsed(ClassificationConfig, ["--epochs", "2"], skip=("arch", "attention"))
    assert values == {"epochs": 2}
    with pytest.raises(SystemExit):
        parsed(ClassificationConfig, ["--arch", "resnet18"], skip=("arch", "attention"))


def test_print_config_is_a_recipe_that_rebuilds_the_same_config(tmp_path, capsys):
    argv = ["train", "--data", str(tmp_path), "--recipe", "cluttered-digits", "--epochs", "2", "--attention", "cbam",
            "--crop-scale", "0.5", "1", "--print-config"]  # fmt: skip
    assert main(argv) == 0
    printed = capsys.readouterr().out
    expected = build_config(ClassificationConfig, "cluttered-digits", data=str(tmp_path), epochs=2,
                            attention="cbam", crop_scale=(0.5, 1.0))  # fmt: skip
    assert printed == config_yaml(expected)
    recipe = tmp_path / "printed.yaml"
    recipe.write_text(printed)
    again = build_config(ClassificationConfig, str(recipe))
    assert again == expected, "the printed config rebuilds the same config, the recipe it came from included"
    assert main(["train", "--recipe", str(recipe), "--print-config"]) == 0
    assert capsys.readouterr().out == printed, "and prints the same YAML: the round trip holds"
    # a hand-written file that names no recipe is recorded as the path it was given as
    plain = tmp_path / "mine.yaml"
    plain.write_text("epochs: 3\n")
    assert build_config(ClassificationConfig, str(plain)).recipe == str(plain)


def test_a_runs_saved_config_is_a_valid_recipe(tmp_path):
    from cbam.runs import fit
    from tests.conftest import tiny_config, write_image_folder

    config = tiny_config(write_image_folder(tmp_path / "data"), tmp_path / "run", epochs=1)
    fit(config)
    saved = str(tmp_path / "run" / "config.yaml")
    assert build_config(ClassificationConfig, saved) == dataclasses.replace(config, recipe=saved)
