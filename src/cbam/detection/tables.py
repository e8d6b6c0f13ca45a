"""The rows of the paper's detection tables (7: Faster R-CNN on COCO; 8: SSD/StairNet on VOC 2007) and their
parameter counts; `cbam.detection.compare` trains them over seeds."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from cbam.detection.detectors import create_detector
from cbam.errors import unknown_name
from cbam.paper import load_tables

DETECT_TABLES: tuple[str, ...] = ("table7", "table8")
BACKBONES = {"ResNet50": "resnet50", "ResNet101": "resnet101", "VGG16": "vgg16", "MobileNet": "mobilenet_v1"}
DETECTORS = {"SSD": ("ssd300", "none"), "StairNet": ("stairnet300", "none"), "StairNet+SE": ("stairnet300", "se"),
             "StairNet+CBAM": ("stairnet300", "cbam")}  # fmt: skip
CLASSES = {"table7": 80, "table8": 20}
COLUMNS = {"map": "mAP@[.5:.95]", "map50": "mAP@.5", "map75": "mAP@.75"}
PAPER_KEYS = {"table7": ("map", "map50", "map75"), "table8": ("map50",)}  # what each table prints


def metric_keys(metric: str) -> tuple[str, ...]:
    """The figures a metric gives: COCO's three mAPs, or VOC's mAP@.5."""
    return PAPER_KEYS["table7"] if metric == "coco" else PAPER_KEYS["table8"]


@dataclass(frozen=True)
class DetectRow:
    """One detector of a paper table, with the paper's figures for it."""

    name: str
    description: str
    detector: str
    backbone: str
    attention: str
    paper: dict[str, float]


def table_rows(table: str, backbones: list[str] | None = None) -> list[DetectRow]:
    """The rows of Table 7 or 8; `backbones` keeps only those (or, for a backbone the table lacks, puts it in
    place of the table's, e.g. resnet18 on small data)."""
    if table not in DETECT_TABLES:
        raise unknown_name("detection table", table, DETECT_TABLES)
    rows = []
    if table == "table7":
        for entry in load_tables()["table7_coco_faster_rcnn"]:
            paper = {k: entry[k] for k in ("map", "map50", "map75")}
            backbone, attention = BACKBONES[entry["backbone"]], entry["attention"]
            description = f"{entry['backbone']}{' + CBAM' if attention == 'cbam' else ''}"
            rows.append(DetectRow("", description, "faster_rcnn_c4", backbone, attention, paper))
    else:
        for entry in load_tables()["table8_voc2007_stairnet"]:
            detector, attention = DETECTORS[entry["detector"]]
            paper = {"map50": entry["map50"], "params_m": entry["params_m"]}
            rows.append(DetectRow("", f"{entry['detector']} ({entry['backbone']})", detector,
                                  BACKBONES[entry["backbone"]], attention, paper))  # fmt: skip
    if backbones:
        present = [r for r in rows if r.backbone in backbones]
        if not present:  # another backbone in the place of the table's first
            first = rows[0].backbone
            present = [dataclasses.replace(r, backbone=b) for b in backbones for r in rows if r.backbone == first]
        rows = present
    return [
        dataclasses.replace(r, name=f"{r.detector}-{r.backbone}" + ("" if r.attention == "none" else f"-{r.attention}"))
        for r in rows
    ]


def count_parameters(row: DetectRow, num_classes: int, **kwargs: Any) -> int:
    model = create_detector(row.detector, backbone=row.backbone, attention=row.attention,
                            num_classes=num_classes + 1, **kwargs)  # fmt: skip
    return sum(p.numel() for p in model.parameters())


def profile_table(table: str, backbones: list[str] | None = None) -> tuple[list[str], list[list[str]], list[dict]]:
    """Parameters of each row at the table's class count, beside the paper's (Table 8 prints them)."""
    header = ["Detector", "Backbone", "Attention", "Params (M)", "Paper params (M)", "Difference (M)"]
    rows, records = [], []
    for row in table_rows(table, backbones):
        params = count_parameters(row, CLASSES[table]) / 1e6
        paper = row.paper.get("params_m")
        difference = "-" if paper is None else f"{params - paper:+.2f}"
        rows.append([row.detector, row.backbone, row.attention, f"{params:.2f}",
                     "-" if paper is None else f"{paper:.2f}", difference])  # fmt: skip
        records.append({"name": row.name, "detector": row.detector, "backbone": row.backbone,
                        "attention": row.attention, "params": params * 1e6, "paper_params_m": paper})  # fmt: skip
    return header, rows, records
