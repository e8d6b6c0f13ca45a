"""Boxes from COCO JSON and VOC XML, and through the evaluation crop, with known coordinates."""

from __future__ import annotations

import json

import pytest
import torch

from cbam.data.loading import DataError
from cbam.explain.boxes import boxes_after_eval_transform, read_coco_boxes, read_voc_boxes, split_boxes


def test_coco_boxes_become_corners_with_their_category_names(tmp_path) -> None:
    coco = {
        "images": [{"id": 7, "file_name": "3/000007.png"}],
        "annotations": [{"image_id": 7, "category_id": 4, "bbox": [10, 20, 5, 6]}],
        "categories": [{"id": 4, "name": "3"}],
    }
    (tmp_path / "val.json").write_text(json.dumps(coco))
    assert read_coco_boxes(tmp_path / "val.json") == {"3/000007.png": [("3", (10.0, 20.0, 15.0, 26.0))]}


def test_voc_boxes_are_one_based_and_inclusive(tmp_path) -> None:
    (tmp_path / "ILSVRC2012_val_00000001.xml").write_text(
        "<annotation><object><name>n01751748</name><bndbox><xmin>1</xmin><ymin>11</ymin>"
        "<xmax>50</xmax><ymax>60</ymax></bndbox></object></annotation>"
    )
    boxes = read_voc_boxes(tmp_path, ["n01751748/ILSVRC2012_val_00000001.JPEG"])
    assert boxes == {"n01751748/ILSVRC2012_val_00000001.JPEG": [("n01751748", (0.0, 10.0, 50.0, 60.0))]}


def test_boxes_follow_the_resize_and_centre_crop() -> None:
    # 100 x 50 image: the short side 50 -> 32 (scale 0.64), width 64, centre crop 32 drops 16 columns on the left
    mapped = boxes_after_eval_transform([(30.0, 10.0, 60.0, 40.0), (0.0, 0.0, 10.0, 10.0)], 100, 50, 32, 32)
    torch.testing.assert_close(mapped[0], torch.tensor([3.2, 6.4, 22.4, 25.6], dtype=torch.float64))
    torch.testing.assert_close(mapped[1], torch.tensor([0.0, 0.0, 0.0, 6.4], dtype=torch.float64))


def test_missing_or_broken_boxes_get_a_readable_error(tmp_path) -> None:
    with pytest.raises(DataError, match="give --boxes"):
        split_boxes(tmp_path, "val", [])
    (tmp_path / "broken.json").write_text("{not json")
    with pytest.raises(DataError, match="cannot read COCO boxes"):
        read_coco_boxes(tmp_path / "broken.json")
