"""`cbam detect compare` over seeds: each seed from its own backbone run, per-image detections saved, figures and
intervals computed from them, and the refusals and failures a user meets."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from cbam.checkpoint import read_checkpoint
from cbam.cli import main
from cbam.detection.compare import DETECTIONS_FILE, backbone_weights, row_configs
from cbam.detection.tables import table_rows
from cbam.detection.task import DetectionConfig
from cbam.engine.config import build_config
from cbam.runs import load_model
from tests.detection.test_rcnn import cbam_checkpoint

NARROW = {"stem": "cifar", "width_mult": 0.25}  # `make run`'s backbones


def backbone_folder(root: Path, runs: dict[str, tuple[int, ...]]) -> Path:
    """A `cbam compare` folder: `<row>/seed-<s>/best.pt` of narrow ResNet-18s, with or without CBAM."""
    for row, seeds in runs.items():
        for seed in seeds:
            folder = root / row / f"seed-{seed}"
            folder.mkdir(parents=True)
            cbam_checkpoint(folder, attention="cbam" if row.endswith("cbam") else "none", **NARROW)
            (folder / "last.pt").rename(folder / "best.pt")
    return root


def detect_compare(coco_folder: Path, runs: Path, output: Path, *extra: str) -> int:
    return main(["detect", "compare", "--table", "table7", "--backbone", "resnet18", "--data", str(coco_folder),
                 "--recipe", "cluttered-digits-compare", "--epochs", "1", "--batch-size", "4", "--workers", "0",
                 "--seeds", "2", "--backbone-runs", str(runs), "--output", str(output), *extra])  # fmt: skip


def test_seed_s_of_each_row_starts_from_seed_s_of_its_backbone_run(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    for row, seeds in (("resnet18", (0, 1, 2)), ("resnet18-cbam", (0, 2))):
        for seed in seeds:
            (runs / row / f"seed-{seed}").mkdir(parents=True)
            (runs / row / f"seed-{seed}" / "best.pt").write_bytes(b"")
    base = build_config(DetectionConfig, "cluttered-digits-compare")
    rows = table_rows("table7", ["resnet18"])
    configs, notes = row_configs(rows, base, tmp_path / "out", 3, runs)
    assert [[c.backbone_weights for c in row] for row in configs] == [
        [str(runs / "resnet18" / f"seed-{s}" / "best.pt") for s in (0, 1, 2)],
        [str(runs / "resnet18-cbam" / "seed-0" / "best.pt"), None, str(runs / "resnet18-cbam" / "seed-2" / "best.pt")],
    ]
    assert [[c.seed for c in row] for row in configs] == [[0, 1, 2], [0, 1, 2]]
    assert [c.output for c in configs[1]] == [str(tmp_path / "out" / "faster_rcnn_c4-resnet18-cbam" / f"seed-{s}")
                                              for s in (0, 1, 2)]  # fmt: skip
    assert len(notes) == 1 and "faster_rcnn_c4-resnet18-cbam seed 1" in notes[0] and "resnet18 seed" not in notes[0]
    (runs / "resnet18-cbam" / "best.pt").write_bytes(b"")  # a one-seed folder of the older layout serves every seed
    assert backbone_weights(rows[1], 1, runs) == runs / "resnet18-cbam" / "best.pt"


def test_detect_compare_over_seeds_from_cbam_backbones_with_frozen_batch_norm(coco_folder, tmp_path, capsys):
    runs = backbone_folder(tmp_path / "runs", {"resnet18": (0, 1), "resnet18-cbam": (0,)})
    output = tmp_path / "cmp"
    assert detect_compare(coco_folder, runs, output) == 0
    printed = capsys.readouterr().out
    assert "no backbone run" in printed and "faster_rcnn_c4-resnet18-cbam seed 1" in printed

    report = json.loads((output / "comparison.json").read_text())
    plain, with_cbam = report["rows"]
    assert (plain["name"], with_cbam["name"], with_cbam["baseline"]) == (
        "faster_rcnn_c4-resnet18", "faster_rcnn_c4-resnet18-cbam", "faster_rcnn_c4-resnet18")  # fmt: skip
    # every figure is of the saved detections: each run's mAP is what `cbam detect eval` gives its final network
    maps = {}
    for row in report["rows"]:
        for run in row["runs"]:
            folder = Path(run["output"])
            assert (folder / DETECTIONS_FILE).is_file()
            capsys.readouterr()
            assert main(["detect", "eval", "--checkpoint", str(folder / "last.pt"), "--json", "--workers", "0"]) == 0
            maps[row["name"], run["seed"]] = json.loads(capsys.readouterr().out)["map"]
    for row in report["rows"]:
        assert row["metrics"]["map"]["estimate"] == pytest.approx(np.mean([maps[row["name"], s] for s in (0, 1)]))
        assert row["metrics"]["map"]["seeds"] == 2 and row["metrics"]["map"]["low"] is not None
    difference = with_cbam["difference"]
    expected = np.mean([maps[with_cbam["name"], s] - maps[plain["name"], s] for s in (0, 1)])
    assert difference["estimate"] == pytest.approx(expected)
    assert difference["low"] <= difference["estimate"] <= difference["high"] and difference["p_value"] is not None
    assert with_cbam["verdict"].startswith(("no difference in mAP@[.5:.95]", "faster_rcnn_c4-resnet18-cbam"))
    table = (output / "comparison.md").read_text()
    assert "| Paper row (COCO) | Paper mAP@[.5:.95] (COCO) |" in table, "the paper's figures named as another dataset"

    # seed 0 of the CBAM row started from seed 0's CBAM backbone, its BatchNorm frozen: the statistics are the file's
    backbone = torch.load(runs / "resnet18-cbam" / "seed-0" / "best.pt", weights_only=True)["model"]
    detector = read_checkpoint(output / with_cbam["name"] / "seed-0" / "last.pt")
    assert detector.config["backbone_weights"] == str(runs / "resnet18-cbam" / "seed-0" / "best.pt")
    means = {k: v for k, v in detector.model.items() if k.endswith("bn1.running_mean")}
    assert means, "the detector keeps the backbone's BatchNorm statistics"
    for key, value in means.items():
        name = key[key.index("layer") :] if "layer" in key else "bn1.running_mean"
        torch.testing.assert_close(value, backbone[name], rtol=0, atol=0)
    spatial = [k for k in detector.model if "spatial" in k]
    assert spatial, "the CBAM backbone's attention came along"

    stamp = (output / plain["name"] / "seed-0" / "last.pt").stat().st_mtime_ns
    assert detect_compare(coco_folder, runs, output) == 0, "a finished comparison is read back"
    assert (output / plain["name"] / "seed-0" / "last.pt").stat().st_mtime_ns == stamp
    assert json.loads((output / "comparison.json").read_text())["rows"] == report["rows"]

    capsys.readouterr()
    assert detect_compare(coco_folder, runs, output, "--lr", "0.002") == 2, "another recipe in the same folder"
    assert "lr" in capsys.readouterr().err

    # the detector's config records the narrow backbone's shape: it rebuilds with the backbone file gone
    assert detector.config["detector_kwargs"]["backbone_kwargs"] == NARROW
    (runs / "resnet18-cbam" / "seed-0" / "best.pt").unlink()
    loaded = load_model(output / with_cbam["name"] / "seed-0" / "last.pt")
    assert loaded.model.state_dict()["backbone.conv1.weight"].shape == (16, 3, 3, 3)


def test_a_failed_run_is_named_with_its_log_and_the_rest_tabulated(coco_folder, tmp_path, capsys):
    runs = backbone_folder(tmp_path / "runs", {"resnet18": (0, 1), "resnet18-cbam": (0, 1)})
    (runs / "resnet18-cbam" / "seed-1" / "best.pt").write_bytes(b"not a checkpoint")
    output = tmp_path / "cmp"
    assert detect_compare(coco_folder, runs, output, "--jobs", "2") == 1
    printed = capsys.readouterr().out
    assert "failed: faster_rcnn_c4-resnet18-cbam seed 1 failed:" in printed and "log:" in printed
    report = json.loads((output / "comparison.json").read_text())
    assert report["rows"][0]["metrics"]["map"]["seeds"] == 2
    assert report["rows"][1]["metrics"]["map"]["seeds"] == 1 and report["rows"][1]["difference"]["seeds"] == 1
    with (output / "comparison.csv").open() as file:
        assert [row["Seeds"] for row in csv.DictReader(file)] == ["2/2", "1/2"]
