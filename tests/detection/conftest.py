"""A tiny COCO-layout detection folder: 64 px images with one or two coloured squares of two classes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

# non-contiguous category ids, as COCO's are
CATEGORIES = [{"id": 3, "name": "red"}, {"id": 7, "name": "blue"}]


def write_coco_folder(root: Path, train: int = 16, val: int = 6, size: int = 64, seed: int = 0) -> Path:
    """`root/annotations/instances_{train,val}.json` and `root/{train,val}/*.png`: squares of 14-24 px on
    noise, red (category 3) or blue (category 7), so that a detector learns them in a few steps."""
    rng = np.random.default_rng(seed)
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    for split, count in (("train", train), ("val", val)):
        (root / split).mkdir(exist_ok=True)
        images, annotations = [], []
        for i in range(count):
            pixels = rng.integers(0, 60, (size, size, 3), dtype=np.uint8)
            for _ in range(1 + i % 2):
                side = int(rng.integers(14, 25))
                x, y = (int(v) for v in rng.integers(0, size - side, 2))
                category = CATEGORIES[int(rng.integers(0, 2))]
                pixels[y : y + side, x : x + side] = (220, 30, 30) if category["id"] == 3 else (30, 30, 220)
                annotations.append(
                    {"id": len(annotations) + 1, "image_id": i + 1, "category_id": category["id"],
                     "bbox": [x, y, side, side], "area": side * side, "iscrowd": 0}
                )  # fmt: skip
            Image.fromarray(pixels).save(root / split / f"{i:03d}.png")
            images.append({"id": i + 1, "file_name": f"{i:03d}.png", "width": size, "height": size})
        content = {"images": images, "annotations": annotations, "categories": CATEGORIES}
        (root / "annotations" / f"instances_{split}.json").write_text(json.dumps(content))
    return root


@pytest.fixture
def coco_folder(tmp_path: Path) -> Path:
    return write_coco_folder(tmp_path / "squares")


def write_voc_folder(root: Path, trainval: int = 8, test: int = 4, size: int = 96, seed: int = 0) -> Path:
    """`root/VOCdevkit/VOC2007` with red cars and blue dogs (one `difficult`) on noise, JPEG and XML."""
    rng = np.random.default_rng(seed)
    base = root / "VOCdevkit" / "VOC2007"
    for folder in ("JPEGImages", "Annotations", "ImageSets/Main"):
        (base / folder).mkdir(parents=True, exist_ok=True)
    names = [f"{i:06d}" for i in range(1, trainval + test + 1)]
    for i, name in enumerate(names):
        pixels = rng.integers(0, 60, (size, size, 3), dtype=np.uint8)
        side = int(rng.integers(20, 40))
        x, y = (int(v) for v in rng.integers(0, size - side, 2))
        label = ("car", "dog")[i % 2]
        pixels[y : y + side, x : x + side] = (220, 30, 30) if label == "car" else (30, 30, 220)
        Image.fromarray(pixels).save(base / "JPEGImages" / f"{name}.jpg", quality=95)
        difficult = int(i == 1)
        (base / "Annotations" / f"{name}.xml").write_text(
            f"<annotation><size><width>{size}</width><height>{size}</height><depth>3</depth></size>"
            f"<object><name>{label}</name><difficult>{difficult}</difficult><bndbox><xmin>{x + 1}</xmin>"
            f"<ymin>{y + 1}</ymin><xmax>{x + side}</xmax><ymax>{y + side}</ymax></bndbox></object></annotation>"
        )
    (base / "ImageSets" / "Main" / "trainval.txt").write_text("\n".join(names[:trainval]) + "\n")
    (base / "ImageSets" / "Main" / "test.txt").write_text("\n".join(names[trainval:]) + "\n")
    return root
