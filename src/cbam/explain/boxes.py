"""Ground-truth boxes for a split: COCO JSON (what cluttered-digits writes) or VOC XML (ImageNet's
validation boxes come in that format), keyed by the image's path relative to the split folder."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import torch
from torch import Tensor

from cbam.data.loading import DataError
from cbam.data.voc import read_voc_xml


class NoBoxes(DataError):
    """The data has no boxes for this split (so nothing to localise against): not a fault of the data."""


Boxes = dict[str, list[tuple[str, tuple[float, float, float, float]]]]
"""file -> [(class name, (x0, y0, x1, y1) in the original image's pixels, half-open))]."""


def read_coco_boxes(path: Path) -> Boxes:
    """Boxes of a COCO JSON file, with each category's name as the class."""
    try:
        coco = json.loads(Path(path).read_text())
        names = {c["id"]: str(c["name"]) for c in coco["categories"]}
        files = {image["id"]: image["file_name"] for image in coco["images"]}
        found: Boxes = defaultdict(list)
        for a in coco["annotations"]:
            x, y, w, h = (float(v) for v in a["bbox"])
            found[files[a["image_id"]]].append((names[a["category_id"]], (x, y, x + w, y + h)))
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise DataError(f"cannot read COCO boxes from {path}: {err}") from None
    return dict(found)


def read_voc_boxes(folder: Path, files: list[str]) -> Boxes:
    """Boxes of VOC XML files named like the images (`<stem>.xml`, flat or mirroring the class folders).

    VOC corners are 1-based and inclusive: (xmin, ymin, xmax, ymax) -> (xmin - 1, ymin - 1, xmax, ymax).
    """
    found: Boxes = {}
    for file in files:
        candidates = [folder / Path(file).with_suffix(".xml"), folder / (Path(file).stem + ".xml")]
        xml = next((c for c in candidates if c.is_file()), None)
        if xml is None:
            continue
        found[file] = [(obj.name, obj.box) for obj in read_voc_xml(xml)[1]]
    return found


def split_boxes(root: Path, split: str, files: list[str], boxes: Path | None = None) -> Boxes:
    """The boxes of a split: `boxes` (a COCO .json or a folder of VOC .xml), else
    `<root>/annotations/<split>.json`, else a `<root>/annotations/<split>/` VOC folder."""
    source = Path(boxes) if boxes is not None else root / "annotations" / f"{split}.json"
    if boxes is None and not source.exists():
        source = root / "annotations" / split
    if source.is_file():
        return read_coco_boxes(source)
    if source.is_dir():
        return read_voc_boxes(source, files)
    raise NoBoxes(f"no boxes for {split}: {source} is missing (give --boxes: a COCO .json or a VOC folder)")


def boxes_after_eval_transform(
    boxes: list[tuple[float, float, float, float]], width: int, height: int, image_size: int, resize: int
) -> Tensor:
    """Map boxes through `eval_transform` (short side to `resize`, centre crop `image_size`), clipped."""
    scale = resize / min(width, height)
    new_w, new_h = (resize, int(resize * height / width)) if width <= height else (int(resize * width / height), resize)
    left, top = round((new_w - image_size) / 2.0), round((new_h - image_size) / 2.0)
    mapped = torch.tensor(boxes, dtype=torch.float64).view(-1, 4) * scale
    mapped -= torch.tensor([left, top, left, top], dtype=torch.float64)
    return mapped.clamp(0, image_size)
