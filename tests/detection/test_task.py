"""Training detectors: the loss falls, resume is exact, checkpoints load (format 1 too), the recipes and the
generated flags reach the config, and eval/predict/compare/profile work end to end on real files."""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

import pytest
import torch
import torchvision
import yaml
from PIL import Image
from torchvision import tv_tensors

from cbam.checkpoint import Checkpoint, read_checkpoint, save_checkpoint
from cbam.cli import main
from cbam.detection.data import open_detection_data
from cbam.detection.task import (
    SMALL_INPUT_KWARGS,
    DetectionConfig,
    DetectionTask,
    _training_targets,
    detector_kwargs,
    eval_transforms,
    input_size,
    lr_factor,
    train_transforms,
)
from cbam.engine.config import build_config, config_from_dict, read_recipe, recipe_names
from cbam.engine.run import build_optimizer
from cbam.errors import CheckpointError, ConfigError, TrainingError
from cbam.runs import fit, load_model, resume_config
from tests.conftest import kill_after_first_checkpoint
from tests.detection.conftest import CATEGORIES, write_coco_folder, write_voc_folder

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

V1_CHECKPOINT = Path(__file__).parent.parent / "checkpoints_v1" / "detection-v1-no-weights.pt"


def _refuse_non_json(constant: str) -> None:
    raise ValueError(f"{constant} is not JSON")


def _config(data: Path, output: Path, **overrides):
    values = dict(
        data=str(data), output=str(output), detector="faster_rcnn_c4", backbone="resnet18", attention="cbam",
        input_scale="small", detector_kwargs={"batch_norm": "train"}, epochs=2, batch_size=4,
        optimizer="adamw", lr=1e-3, warmup_iterations=2, hflip=True, workers=0,
    )  # fmt: skip
    values.update(overrides)
    return build_config(DetectionConfig, None, **values)


def _printed_config(capsys, *flags: str) -> dict:
    """The config `cbam detect train --print-config FLAGS` prints, as plain values."""
    capsys.readouterr()
    assert main(["detect", "train", "--print-config", *flags]) == 0
    return yaml.safe_load(capsys.readouterr().out)


def test_small_input_scale_gives_the_small_detector_sizes(tmp_path: Path) -> None:
    config = _config(tmp_path / "data", tmp_path / "run")
    assert config.detector_kwargs == {"batch_norm": "train"}, "the sizes are not copied into the config"
    assert detector_kwargs(config) == {**SMALL_INPUT_KWARGS["faster_rcnn_c4"], "batch_norm": "train"}
    mine = dataclasses.replace(config, detector_kwargs={"min_size": 96, "batch_norm": "train"})
    assert detector_kwargs(mine)["min_size"] == 96, "the config's own options win over the scale's"
    assert detector_kwargs(dataclasses.replace(config, input_scale="paper")) == {"batch_norm": "train"}


def test_a_few_steps_lower_the_loss(coco_folder: Path, tmp_path: Path) -> None:
    config = _config(coco_folder, tmp_path / "run")
    dataset = open_detection_data(config.data, "train", train_transforms(config))
    images, targets = zip(*(dataset[i] for i in range(4)), strict=True)
    model = DetectionTask.build_model(config, len(dataset.class_names)).train()
    optimizer = build_optimizer(DetectionTask.parameter_groups(model, config), config)
    losses = []
    for _ in range(12):
        loss = sum(model(list(images), _training_targets(list(targets), torch.device("cpu"))).values())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.6 * losses[0], losses


def test_a_killed_run_resumes_to_the_weights_of_an_uninterrupted_one(coco_folder: Path, tmp_path: Path, capsys) -> None:
    """Kill `cbam detect train` once its first checkpoint is on disk, resume it, compare with a run never stopped."""
    options = {"data": str(coco_folder), "attention": "cbam", "epochs": 2, "batch_size": 4, "lr": 1e-3, "workers": 0}
    flags = [f"--{key.replace('_', '-')}={value}" for key, value in options.items()]
    argv = [sys.executable, "-m", "cbam", "detect", "train", "--recipe", "cluttered-digits",
            "--detector-arg", "batch_norm='train'", *flags, "--output", str(tmp_path / "killed")]  # fmt: skip
    last = tmp_path / "killed" / "last.pt"
    kill_after_first_checkpoint(argv, last)
    assert torch.load(last, weights_only=True)["epoch"] in (1, 2)
    resumed = fit(resume_config(last), resume=last)
    whole = build_config(DetectionConfig, "cluttered-digits", **options, detector_kwargs={"batch_norm": "train"},
                         output=str(tmp_path / "whole"))  # fmt: skip
    fit(whole)
    a = torch.load(tmp_path / "whole" / "last.pt", weights_only=True)
    b = torch.load(last, weights_only=True)
    assert a["epoch"] == b["epoch"] == 2
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert [h["train_loss"] for h in a["history"]] == [h["train_loss"] for h in resumed.history]
    # the history's lr is the learning rate at each epoch's first step (4 steps an epoch, 8 in all)
    expected = [whole.lr * lr_factor(whole, step, 8) for step in (0, 4)]
    assert [h["lr"] for h in a["history"]] == pytest.approx(expected, rel=1e-9)
    assert [h["lr"] for h in resumed.history] == pytest.approx(expected, rel=1e-9)
    with pytest.raises(ConfigError, match=r"lr 0.001 -> 0.1\. Only iterations, epochs"):
        resume_config(last, lr=0.1)
    assert resume_config(last, **options).epochs == 2  # the command that started it is accepted
    argv = ["detect", "train", "--recipe", "cluttered-digits", "--detector-arg", "batch_norm='train'", *flags,
            "--output", str(tmp_path / "killed")]  # fmt: skip
    before = last.read_bytes()
    assert main(argv) == 2  # a second run does not replace the finished one
    assert "already holds a run" in capsys.readouterr().err and last.read_bytes() == before


def test_eval_predict_and_a_class_count_mismatch(coco_folder: Path, tmp_path: Path, capsys) -> None:
    run = fit(_config(coco_folder, tmp_path / "run", epochs=1))
    assert run.task == "detection" and run.best_metric == "val_map" and run.best_epoch == 1
    assert run.best_value == run.history[0]["val_map"]
    assert run.history[0]["lr"] == pytest.approx(1e-3 * 0.001), "the lr at the epoch's first step (warm-up)"
    capsys.readouterr()
    checkpoint = tmp_path / "run" / "best.pt"
    loaded = load_model(checkpoint, task="detection")
    assert loaded.classes == ["red", "blue"] and loaded.metadata["category_ids"] == [3, 7]
    saved = read_checkpoint(checkpoint)
    assert saved.best == {"metric": "val_map", "value": run.best_value, "epoch": 1}
    for name in ("last", "best"):  # the weights alone, each epoch, beside the checkpoint
        weights = load_model(tmp_path / "run" / f"{name}.safetensors", task="detection")
        assert weights.classes == loaded.classes and weights.metadata == loaded.metadata
        assert weights.config == loaded.config and weights.epoch == 1
        mine, theirs = weights.model.state_dict(), loaded.model.state_dict()
        assert mine.keys() == theirs.keys() and all(torch.equal(mine[k], theirs[k]) for k in mine)

    predictions = tmp_path / "predictions.json"
    args = ["detect", "eval", "--checkpoint", str(checkpoint), "--json", "--save-predictions", str(predictions)]
    assert main(args) == 0
    report = json.loads(capsys.readouterr().out)
    assert {"map", "map50", "map75"} <= report.keys() and 0.0 <= report["map"] <= 1.0
    assert report["ground_truth"] == str(coco_folder / "annotations" / "instances_val.json")
    results = json.loads(predictions.read_text())
    assert results and {r["category_id"] for r in results} <= {3, 7}
    assert set(results[0]) == {"image_id", "category_id", "bbox", "score"}
    assert main(["detect", "eval", "--checkpoint", str(checkpoint), "--metric", "voc07"]) == 0
    assert "| red " in capsys.readouterr().out, "per-class AP for VOC metrics"

    files = [coco_folder / "val" / "000.png", coco_folder / "val" / "001.png"]
    out = tmp_path / "drawn"
    assert main(["detect", "predict", "--checkpoint", str(checkpoint), *map(str, files), "--output", str(out),
                 "--score-threshold", "0"]) == 0  # fmt: skip
    for file in files:
        with Image.open(out / file.name) as drawn, Image.open(file) as original:
            assert drawn.size == original.size and drawn.tobytes() != original.convert("RGB").tobytes()
    listing = json.loads((out / "detections.json").read_text())
    assert [entry["image"] for entry in listing] == [str(f) for f in files]
    assert all(d["label"] in ("red", "blue") for entry in listing for d in entry["detections"])
    capsys.readouterr()
    again = ["detect", "predict", "--checkpoint", str(checkpoint), *map(str, files), "--output", str(out)]
    assert main(again) == 2 and "pass --force" in capsys.readouterr().err
    assert main([*again, "--force"]) == 0
    assert main(args) == 2 and "predictions.json exists; pass --force" in capsys.readouterr().err

    other = write_coco_folder(tmp_path / "three")
    content = json.loads((other / "annotations" / "instances_val.json").read_text())
    content["categories"] = [*CATEGORIES, {"id": 9, "name": "green"}]
    (other / "annotations" / "instances_val.json").write_text(json.dumps(content))
    assert main(["detect", "eval", "--checkpoint", str(checkpoint), "--data", str(other)]) == 2
    assert "detects 2 classes" in capsys.readouterr().err
    assert main(["detect", "eval", "--checkpoint", str(tmp_path / "nothing.pt")]) == 2
    torch.save({"model": {}}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="not a cbam checkpoint"):
        load_model(tmp_path / "other.pt", task="detection")
    classifier = Checkpoint("classification", {"arch": "resnet18"}, list("ab"), 1, {})
    save_checkpoint(tmp_path / "classifier.pt", classifier)
    with pytest.raises(CheckpointError, match="holds a classification network, not a detection one"):
        load_model(tmp_path / "classifier.pt", task="detection")
    assert main(["detect", "eval", "--checkpoint", str(tmp_path / "classifier.pt")]) == 2
    assert "not a detection one; use `cbam` commands" in capsys.readouterr().err


def test_a_detector_on_a_pretrained_torchvision_resnet_round_trips_through_detect_eval_without_flags(
    coco_folder: Path, tmp_path: Path, capsys
) -> None:
    """`--backbone torchvision:resnet18 --backbone-weights FILE`: trained, then rebuilt from its checkpoint alone
    (the attention's identity gates included) and evaluated to the run's own mAP."""
    torch.manual_seed(0)
    torch.save(torchvision.models.resnet18().state_dict(), tmp_path / "pretrained.pth")
    config = _config(coco_folder, tmp_path / "run", epochs=1, backbone="torchvision:resnet18",
                     backbone_weights=str(tmp_path / "pretrained.pth"), detector_kwargs={})  # fmt: skip
    assert config.attention_init == "identity"
    run = fit(config)
    loaded = load_model(tmp_path / "run" / "best.pt", task="detection")
    saved = read_checkpoint(tmp_path / "run" / "best.pt").model
    state = loaded.model.state_dict()
    assert state.keys() == saved.keys() and all(torch.equal(state[k], saved[k]) for k in saved)
    assert any(k.endswith(".gate") for k in saved), "CBAM was attached with identity gates"
    capsys.readouterr()
    assert main(["detect", "eval", "--checkpoint", str(tmp_path / "run" / "best.pt"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["map"] == pytest.approx(run.best_value, abs=1e-12)


def test_a_format_1_checkpoint_still_loads(tmp_path: Path) -> None:
    """A `cbam detect train` checkpoint of format 1 (commit 865a312), its weights put back into it."""
    state = torch.load(V1_CHECKPOINT, weights_only=True)
    assert state["format"] == "cbam.detection-checkpoint/1"
    config = config_from_dict(DetectionConfig, state["config"])
    weights = DetectionTask.build_model(config, len(state["classes"]), fresh=False).state_dict()
    state["model"] = weights
    path = tmp_path / "v1.pt"
    torch.save(state, path)

    loaded = load_model(path, task="detection")
    assert loaded.task == "detection" and loaded.config == config
    assert "lr_batch" not in state["config"] and loaded.config.base_lr == state["config"]["lr"]  # lr as given
    plain = loaded.config.to_dict()
    assert {key: plain[key] for key in state["config"]} == state["config"]
    assert loaded.classes == state["classes"] == ["red", "blue"]
    assert loaded.metadata["category_ids"] == state["category_ids"] == [3, 7]
    assert loaded.epoch == state["epoch"] == 1
    mine = loaded.model.state_dict()
    assert mine.keys() == weights.keys() and all(torch.equal(mine[k], weights[k]) for k in weights)
    checkpoint = read_checkpoint(path)
    assert checkpoint.best == {"metric": "val_map", "value": state["best_map"], "epoch": state["best_epoch"]}
    assert json.dumps(checkpoint.history) == json.dumps(state["history"])  # NaN where a size range has no box


def test_print_config_is_a_recipe_that_reads_back_to_the_same_config(tmp_path: Path, capsys) -> None:
    flags = ["--attention", "cbam", "--epochs", "3", "--detector-arg", "batch_norm='train'", "--momentum", "0.8"]
    printed = _printed_config(capsys, *flags)
    assert printed["recipe"] == "cluttered-digits" and printed["output"] == "", "--output is optional here"
    config = config_from_dict(DetectionConfig, printed)
    assert (config.attention, config.epochs, config.momentum) == ("cbam", 3, 0.8)
    assert config.detector_kwargs == {"batch_norm": "train"} and config.input_scale == "small"
    recipe = tmp_path / "mine.yaml"
    recipe.write_text(yaml.safe_dump(printed, sort_keys=False))
    back = build_config(DetectionConfig, str(recipe))
    assert back == config, "the printed config rebuilds the same config, the recipe it came from included"
    again = _printed_config(capsys, "--recipe", str(recipe))
    assert again == printed


def test_the_detection_recipes_are_yaml_files(capsys) -> None:
    assert recipe_names(DetectionConfig) == ["cluttered-digits", "cluttered-digits-compare", "coco-faster-rcnn",
                                             "voc-stairnet"]  # fmt: skip
    for name in recipe_names(DetectionConfig):
        config = build_config(DetectionConfig, name)
        assert config.recipe == name
        assert {key: getattr(config, key) for key in read_recipe(DetectionConfig, name)} == {
            key: tuple(value) if isinstance(value, list) else value
            for key, value in read_recipe(DetectionConfig, name).items()
        }
    assert build_config(DetectionConfig, "voc-stairnet").metric == "voc07"
    assert build_config(DetectionConfig, "coco-faster-rcnn").iterations == 490_000
    # the dataset's own recipe when none is named
    assert build_config(DetectionConfig).recipe == "cluttered-digits"
    # the cluttered-digits recipe names no detector options: any detector gets its small sizes from input_scale
    assert "detector_kwargs" not in read_recipe(DetectionConfig, "cluttered-digits")
    flags = ["--recipe", "cluttered-digits", "--detector", "ssd300", "--backbone", "mobilenet_v1"]
    ssd = config_from_dict(DetectionConfig, _printed_config(capsys, *flags))
    assert (ssd.detector, ssd.input_scale, ssd.detector_kwargs) == ("ssd300", "small", {})
    assert detector_kwargs(ssd) == {"size": 128} and input_size(ssd) == 128
    model = DetectionTask.build_model(ssd, 10, fresh=False)
    assert model.transform.fixed_size == (128, 128)
    prepared = eval_transforms(ssd)(tv_tensors.Image(torch.zeros(3, 64, 64, dtype=torch.uint8)))
    assert tuple(prepared.shape[-2:]) == (128, 128)


def test_an_unknown_key_in_a_detection_recipe_is_refused_naming_the_valid_ones(tmp_path: Path, capsys) -> None:
    recipe = tmp_path / "typo.yaml"
    recipe.write_text("detector: ssd300\nanchor_size: [8, 16]\n")
    refused = r"unknown detection config keys \['anchor_size'\]; valid keys: .*detector, .*input_scale"
    with pytest.raises(ConfigError, match=refused):
        build_config(DetectionConfig, str(recipe))
    capsys.readouterr()
    assert main(["detect", "train", "--recipe", str(recipe), "--output", str(tmp_path / "run")]) == 2
    assert "anchor_size" in capsys.readouterr().err and not (tmp_path / "run").exists()
    assert main(["detect", "train", "--recipe", "voc-stairnte", "--print-config"]) == 2
    assert "unknown detection recipe 'voc-stairnte'; did you mean voc-stairnet?" in capsys.readouterr().err


def test_the_generated_flags_of_detect_train_reach_the_config(capsys) -> None:
    flags = ["--channels-last", "--amp-dtype", "bfloat16", "--momentum", "0.8", "--lr-milestones", "0.5", "0.75",
             "--compile", "--sync-bn", "--hflip", "--optimizer", "sgd", "--weight-decay", "0.001",
             "--warmup-iterations", "7", "--lr-gamma", "0.5", "--train-split", "trainval", "--val-split", "test",
             "--input-scale", "paper", "--detector", "ssd300", "--detector-arg", "size=96",
             "--detector-arg", "batch_norm='frozen'", "--attention", '{"name": "cbam", "reduction": 8}',
             "--iterations", "20", "--metric", "voc07", "--freeze-bn-stats"]  # fmt: skip
    config = config_from_dict(DetectionConfig, _printed_config(capsys, *flags))
    assert config.recipe == "cluttered-digits", "each flag below changes the recipe's value or the default"
    assert config.channels_last and config.compile and config.sync_bn and config.freeze_bn_stats
    assert config.hflip, "the cluttered-digits recipe (the default data's own) turns flips off"
    assert (config.amp_dtype, config.momentum, config.lr_milestones) == ("bfloat16", 0.8, (0.5, 0.75))
    assert (config.optimizer, config.weight_decay, config.warmup_iterations, config.lr_gamma) == ("sgd", 0.001, 7, 0.5)
    assert (config.train_split, config.val_split, config.input_scale) == ("trainval", "test", "paper")
    assert config.detector_kwargs == {"size": 96, "batch_norm": "frozen"} and input_size(config) == 96
    assert config.attention == {"name": "cbam", "reduction": 8}
    assert (config.iterations, config.metric) == (20, "voc07")
    assert main(["detect", "train", "--print-config", "--amp-dtype", "float8"]) == 2
    assert "unknown amp_dtype 'float8'" in capsys.readouterr().err, "one line naming the valid ones"
    assert main(["detect", "train", "--print-config", "--lr-milestones", "0.5", "1.5"]) == 2
    assert "lr_milestones are in (0, 1)" in capsys.readouterr().err
    assert not _printed_config(capsys, "--no-hflip", "--recipe", "voc-stairnet")["hflip"]


def test_profile_prints_table8_beside_the_paper(capsys) -> None:
    assert main(["detect", "profile", "--table", "table8", "--backbone", "mobilenet_v1", "--json"]) == 0
    records = json.loads(capsys.readouterr().out)
    assert [(r["detector"], r["attention"]) for r in records] == [
        ("ssd300", "none"), ("stairnet300", "none"), ("stairnet300", "se"), ("stairnet300", "cbam"),
    ]  # fmt: skip
    assert [r["paper_params_m"] for r in records] == [5.81, 5.98, 5.99, 6.0]
    assert all(abs(r["params"] / 1e6 - r["paper_params_m"]) < 0.03 for r in records)


def test_compare_trains_each_row_and_tabulates_it_beside_the_paper(coco_folder: Path, tmp_path: Path, capsys) -> None:
    args = ["detect", "compare", "--table", "table7", "--data", str(coco_folder), "--recipe", "cluttered-digits",
            "--backbone", "resnet18", "--epochs", "1", "--batch-size", "4", "--workers", "0",
            "--detector-arg", "batch_norm='train'", "--output", str(tmp_path / "cmp")]  # fmt: skip
    assert main(args) == 0
    table = (tmp_path / "cmp" / "comparison.md").read_text()
    assert table.startswith(f"## table7 on {coco_folder}\n\n| Detector ")
    assert "intervals need at least 2 seeds" in table
    assert "| faster_rcnn_c4-resnet18 " in table and "| faster_rcnn_c4-resnet18-cbam " in table
    assert "| ResNet50 + CBAM " in table, "the paper's row each one stands for"
    assert "| 27.0 " in table and "| 28.1 " in table, "the paper's mAP beside ours"
    assert (tmp_path / "cmp" / "faster_rcnn_c4-resnet18-cbam" / "seed-0" / "best.pt").is_file()
    assert main(args) == 0, "a finished comparison is read back, not retrained"


def test_the_voc_stairnet_recipe_runs_end_to_end_on_a_voc_folder(tmp_path: Path, capsys) -> None:
    """The paper's Table 8 recipe, shrunk: StairNet + CBAM on MobileNet at 128 px, scored with VOC07 AP."""
    voc = write_voc_folder(tmp_path / "voc")
    args = ["detect", "train", "--recipe", "voc-stairnet", "--backbone", "mobilenet_v1", "--attention", "cbam",
            "--detector-arg", "size=128", "--data", str(voc), "--epochs", "1", "--batch-size", "4", "--workers", "0",
            "--output", str(tmp_path / "run")]  # fmt: skip
    assert main(args) == 0
    state = read_checkpoint(tmp_path / "run" / "last.pt")
    assert state.config["detector"] == "stairnet300" and state.config["metric"] == "voc07"
    assert len(state.classes) == 20 and "val_map50" in state.history[-1]
    assert state.best["metric"] == "val_map50"
    capsys.readouterr()
    assert main(["detect", "eval", "--checkpoint", str(tmp_path / "run" / "last.pt"), "--json"]) == 0
    report = json.loads(capsys.readouterr().out, parse_constant=_refuse_non_json)
    assert report["images"] == 4 and set(report["per_class"]) == set(state.classes)
    assert report["per_class"]["cow"] is None, "a class without ground truth has no AP: null, not NaN"
    assert report["map50"] == pytest.approx(state.history[-1]["val_map50"], abs=1e-9)


def test_corrupt_images_are_skipped_and_counted(coco_folder: Path, tmp_path: Path) -> None:
    (coco_folder / "train" / "003.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    (coco_folder / "val" / "001.png").write_bytes(b"not an image")
    run = fit(_config(coco_folder, tmp_path / "run", epochs=1))
    assert run.history[-1]["skipped_images"] == 2


def test_a_loss_that_is_no_longer_finite_stops_the_run_with_a_reason(coco_folder, tmp_path, monkeypatch) -> None:
    class Diverged(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.weight = torch.nn.Parameter(torch.ones(1))

        def forward(self, images, targets=None):
            return {"loss_classifier": self.weight * float("nan"), "loss_box_reg": self.weight}

    monkeypatch.setattr(DetectionTask, "build_model", classmethod(lambda cls, *args, **kwargs: Diverged()))
    with pytest.raises(TrainingError, match=r"the loss became nan .*the last checkpoint is kept"):
        fit(_config(coco_folder, tmp_path / "run", epochs=1))
    assert not list((tmp_path / "run").glob("*.pt")), "nothing half-written"
    assert not list((tmp_path / "run").glob("*.safetensors"))
