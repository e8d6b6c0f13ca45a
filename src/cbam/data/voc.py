"""PASCAL VOC annotation files: one reader for detection data and for localisation boxes."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

from cbam.data.loading import DataError


@dataclass(frozen=True)
class VocObject:
    """One object of a VOC annotation: class name, box in continuous pixels, the `difficult` flag."""

    name: str
    box: tuple[float, float, float, float]  # continuous xyxy: (xmin - 1, ymin - 1, xmax, ymax)
    difficult: bool


def read_voc_xml(path: Path) -> tuple[tuple[int, int] | None, list[VocObject]]:
    """The (h, w) from `<size>` (None when absent or zero) and the objects of one VOC annotation file.

    VOC corners are 1-based and inclusive: (xmin, ymin, xmax, ymax) becomes (xmin - 1, ymin - 1, xmax, ymax), so
    a plain IoU of converted boxes equals the devkit's "+1" IoU of the raw ones.
    """
    if not path.is_file():
        raise DataError(f"VOC annotation file {path} does not exist")
    try:
        root = ET.parse(path).getroot()
        width, height = (int(float(root.findtext(f"size/{k}") or 0)) for k in ("width", "height"))
        objects = []
        for obj in root.iter("object"):
            xmin, ymin, xmax, ymax = (float(obj.findtext(f"bndbox/{k}")) for k in ("xmin", "ymin", "xmax", "ymax"))
            name = (obj.findtext("name") or "").strip()
            difficult = bool(int(float(obj.findtext("difficult") or 0)))
            objects.append(VocObject(name, (xmin - 1.0, ymin - 1.0, xmax, ymax), difficult))
    except (OSError, ET.ParseError, TypeError, ValueError) as err:
        raise DataError(f"cannot read VOC annotation {path}: {type(err).__name__}: {err}") from None
    return ((height, width) if width > 0 and height > 0 else None), objects
