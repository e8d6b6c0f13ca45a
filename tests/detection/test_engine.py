"""Training detectors: the loss falls, resume is exact, checkpoints load, and eval/predict/compare/profile work
end to end on real files."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from cbam.cli import main
from cbam.detection.config import SMALL_INPUT_KWARGS, build_detect_config
from cbam.detection.data import open_detection_data
from cbam.detection.engine import (
    _training_targets,
    build_detector,
    build_optimizer,
    fit_detector,
    load_detector,
    resume_detect_config,
    train_transforms,
)
from cbam.engine.checkpoint import CheckpointError
from cbam.engine.train import TrainingError
from tests.conftest import kill_after_first_checkpoint
from tests.detection.conftest import CATEGORIES, write_coco_folder, write_voc_folder

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def _refuse_non_json(constant: str) -> None:
    raise ValueError(f"{constant} is not JSON")


def _config(data: Path, output: Path, **overrides):
    values = dict(
        data=str(data), output=str(output), detector="faster_rcnn_c4", backbone="resnet18", attention="cbam",
        detector_kwargs={**SMALL_INPUT_KWARGS["faster_rcnn_c4"], "batch_norm": "train"}, epochs=2, batch_size=4,
        optimizer="adamw", lr=1e-3, warmup_iterations=2, hflip=True, workers=0,
    )  # fmt: skip
    values.update(overrides)
    return build_detect_config(None, **values)


def test_a_few_steps_lower_the_loss(coco_folder: Path, tmp_path: Path) -> None:
    config = _config(coco_folder, tmp_path / "run")
    dataset = open_detection_data(config.data, "train", train_transforms(config))
    images, targets = zip(*(dataset[i] for i in range(4)), strict=True)
    model = build_detector(config, len(dataset.class_names)).train()
    optimizer = build_optimizer(model, config)
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
    argv = [sys.executable, "-m", "cbam", "detect", "train", "--preset", "cluttered-digits",
            "--detector-arg", "batch_norm='train'", *flags, "--output", str(tmp_path / "killed")]  # fmt: skip
    last = tmp_path / "killed" / "last.pt"
    kill_after_first_checkpoint(argv, last)
    assert torch.load(last, weights_only=True)["epoch"] in (1, 2)
    resumed = fit_detector(resume_detect_config(last), resume=last)
    kwargs = {**SMALL_INPUT_KWARGS["faster_rcnn_c4"], "batch_norm": "train"}
    whole = build_detect_config("cluttered-digits", **options, detector_kwargs=kwargs, output=str(tmp_path / "whole"))
    fit_detector(whole)
    a = torch.load(tmp_path / "whole" / "last.pt", weights_only=True)
    b = torch.load(last, weights_only=True)
    assert a["epoch"] == b["epoch"] == 2
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert [h["train_loss"] for h in a["history"]] == [h["train_loss"] for h in resumed.history]
    with pytest.raises(ValueError, match=r"lr 0.001 -> 0.1\. Only epochs"):
        resume_detect_config(last, lr=0.1)
    assert resume_detect_config(last, **options).epochs == 2  # the command that started it is accepted
    argv = ["detect", "train", "--preset", "cluttered-digits", "--detector-arg", "batch_norm='train'", *flags,
            "--output", str(tmp_path / "killed")]  # fmt: skip
    before = last.read_bytes()
    assert main(argv) == 2  # a second run does not replace the finished one
    assert "already holds a run" in capsys.readouterr().err and last.read_bytes() == before


def test_eval_predict_and_a_class_count_mismatch(coco_folder: Path, tmp_path: Path, capsys) -> None:
    fit_detector(_config(coco_folder, tmp_path / "run", epochs=1))
    capsys.readouterr()
    checkpoint = tmp_path / "run" / "best.pt"
    loaded = load_detector(checkpoint)
    assert loaded.classes == ["red", "blue"] and loaded.category_ids == [3, 7]

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
    with pytest.raises(CheckpointError, match="not a detection checkpoint"):
        torch.save({"model": {}}, tmp_path / "classifier.pt")
        load_detector(tmp_path / "classifier.pt")


def test_profile_prints_table8_beside_the_paper(capsys) -> None:
    assert main(["detect", "profile", "--preset", "table8", "--backbone", "mobilenet_v1", "--json"]) == 0
    records = json.loads(capsys.readouterr().out)
    assert [(r["detector"], r["attention"]) for r in records] == [
        ("ssd300", "none"), ("stairnet300", "none"), ("stairnet300", "se"), ("stairnet300", "cbam"),
    ]  # fmt: skip
    assert [r["paper_params_m"] for r in records] == [5.81, 5.98, 5.99, 6.0]
    assert all(abs(r["params"] / 1e6 - r["paper_params_m"]) < 0.03 for r in records)


def test_compare_trains_each_row_and_tabulates_it_beside_the_paper(coco_folder: Path, tmp_path: Path, capsys) -> None:
    args = ["detect", "compare", "--preset", "table7", "--data", str(coco_folder), "--recipe", "cluttered-digits",
            "--backbone", "resnet18", "--epochs", "1", "--batch-size", "4", "--workers", "0",
            "--detector-arg", "batch_norm='train'", "--output", str(tmp_path / "cmp")]  # fmt: skip
    assert main(args) == 0
    table = (tmp_path / "cmp" / "comparison.md").read_text()
    assert "| faster_rcnn_c4 resnet18 " in table and "| faster_rcnn_c4 resnet18 + cbam " in table
    assert "| ResNet50 + CBAM " in table, "the paper's row each one stands for"
    assert "| 27.0 " in table and "| 28.1 " in table, "the paper's mAP beside ours"
    assert (tmp_path / "cmp" / "faster_rcnn_c4-resnet18-cbam" / "best.pt").is_file()
    assert main(args) == 0, "a finished comparison is read back, not retrained"


def test_the_voc_stairnet_recipe_runs_end_to_end_on_a_voc_folder(tmp_path: Path, capsys) -> None:
    """The paper's Table 8 recipe, shrunk: StairNet + CBAM on MobileNet at 128 px, scored with VOC07 AP."""
    voc = write_voc_folder(tmp_path / "voc")
    args = ["detect", "train", "--preset", "voc-stairnet", "--backbone", "mobilenet_v1", "--attention", "cbam",
            "--detector-arg", "size=128", "--data", str(voc), "--epochs", "1", "--batch-size", "4", "--workers", "0",
            "--output", str(tmp_path / "run")]  # fmt: skip
    assert main(args) == 0
    state = torch.load(tmp_path / "run" / "last.pt", weights_only=True)
    assert state["config"]["detector"] == "stairnet300" and state["config"]["metric"] == "voc07"
    assert len(state["classes"]) == 20 and "val_map50" in state["history"][-1]
    capsys.readouterr()
    assert main(["detect", "eval", "--checkpoint", str(tmp_path / "run" / "last.pt"), "--json"]) == 0
    report = json.loads(capsys.readouterr().out, parse_constant=_refuse_non_json)
    assert report["images"] == 4 and set(report["per_class"]) == set(state["classes"])
    assert report["per_class"]["cow"] is None, "a class without ground truth has no AP: null, not NaN"
    assert report["map50"] == pytest.approx(state["history"][-1]["val_map50"], abs=1e-9)


def test_corrupt_images_are_skipped_and_counted(coco_folder: Path, tmp_path: Path) -> None:
    (coco_folder / "train" / "003.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    (coco_folder / "val" / "001.png").write_bytes(b"not an image")
    run = fit_detector(_config(coco_folder, tmp_path / "run", epochs=1))
    assert run.history[-1]["skipped_images"] == 2


def test_a_loss_that_is_no_longer_finite_stops_the_run_with_a_reason(coco_folder, tmp_path, monkeypatch) -> None:
    import cbam.detection.engine as engine

    class Diverged(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.weight = torch.nn.Parameter(torch.ones(1))

        def forward(self, images, targets=None):
            return {"loss_classifier": self.weight * float("nan"), "loss_box_reg": self.weight}

    monkeypatch.setattr(engine, "build_detector", lambda *args, **kwargs: Diverged())
    with pytest.raises(TrainingError, match=r"the loss became nan .*the last checkpoint is kept"):
        fit_detector(_config(coco_folder, tmp_path / "run", epochs=1))
    assert not list((tmp_path / "run").glob("*.pt")), "nothing half-written"
