"""Detection datasets: COCO JSON (through pycocotools) and PASCAL VOC XML, read into one record format.

A sample is `(image, target)`: `image` a float32 `tv_tensors.Image` (3, H, W) in [0, 1] (models normalise
internally), `target` a dict of `boxes` (`tv_tensors.BoundingBoxes`, XYXY, absolute pixels), `labels` (int64,
1..K; 0 is the background), `difficult` (bool), `image_id` (int) and `orig_size` ((h, w) of the file).
`ground_truth(index)` gives the un-augmented record in original pixels for evaluation.

Annotations are checked once, when a dataset is opened: boxes reaching outside the image are clipped to it,
boxes left without width or height are dropped, and one `AnnotationWarning` per annotation source gives the
counts. An unreadable image becomes a `Skipped` sample (reported by `collate_detection`), as in
`cbam.data.loading`. Augmentation of sample i in epoch e is seeded from (seed, e, i), so resume is exact.

`open_detection_data(data, split)` accepts:

    cluttered-digits           the embedded default; splits train, val, test
    a VOC folder               <data>/VOCdevkit/VOC2007/{Annotations,JPEGImages,ImageSets/Main} (or <data> is
                               VOCdevkit); train = VOC2007 trainval + VOC2012 trainval ("07+12") when both are
                               there, else VOC2007 trainval; val and test = VOC2007 test
    a COCO folder              <data>/annotations/instances_<split>.json with images in <data>/<split>/, or
                               <data>/annotations/<split>.json (cluttered-digits' own layout), or COCO's
                               instances_<split>2017.json + <split>2017/ (then 2014): split "train", "val", or
                               any name with its own annotation file
"""

from __future__ import annotations

import contextlib
import io
import logging
import re
import warnings
from bisect import bisect_right
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from pycocotools.coco import COCO
from torch import Tensor
from torch.utils.data import ConcatDataset, Dataset
from torchvision import tv_tensors
from torchvision.ops import box_convert, clip_boxes_to_image
from torchvision.transforms.v2 import functional as F

from cbam.data import cluttered_digits
from cbam.data.loading import IMAGE_ERRORS, DataError, Skipped, sample_seed
from cbam.data.voc import read_voc_xml
from cbam.errors import unknown_name

log = logging.getLogger(__name__)

VOC_CLASSES: tuple[str, ...] = (
    "aeroplane",
    "bicycle",
    "bird",
    "boat",
    "bottle",
    "bus",
    "car",
    "cat",
    "chair",
    "cow",
    "diningtable",
    "dog",
    "horse",
    "motorbike",
    "person",
    "pottedplant",
    "sheep",
    "sofa",
    "train",
    "tvmonitor",
)  # the devkit's order: label k is VOC_CLASSES[k - 1]
VOC_SPLITS: tuple[str, ...] = ("train", "val", "test")
NAMED_DATA: tuple[str, ...] = ("cluttered-digits",)

Transforms = Callable[[tv_tensors.Image, dict[str, Any]], tuple[tv_tensors.Image, dict[str, Any]]]
Sample = tuple[tv_tensors.Image, dict[str, Any]]


class AnnotationWarning(UserWarning):
    """Boxes of an annotation source were clipped to their image or dropped as degenerate."""


@dataclass(frozen=True)
class ImageRecord:
    """One image's annotation as read, cleaned, in the original image's pixels."""

    path: Path
    image_id: int
    size: tuple[int, int]  # (h, w) of the original image
    boxes: Tensor  # (N, 4) float32 continuous xyxy, inside [0, w] x [0, h], positive width and height
    labels: Tensor  # (N,) int64 in 1..K
    difficult: Tensor  # (N,) bool: VOC's "difficult" flag
    crowd: Tensor  # (N,) bool: COCO's iscrowd=1; never a training target


@dataclass
class BoxCheck:
    """Clips boxes to their image and drops degenerate ones, counting both for one report per source."""

    clipped: int = 0
    dropped: int = 0
    examples: list[str] = field(default_factory=list)

    def clean(self, boxes: Tensor, size: tuple[int, int], where: str) -> tuple[Tensor, Tensor]:
        """The clipped `boxes` (N, 4) xyxy that keep a positive width and height, and the mask of those kept."""
        clipped = clip_boxes_to_image(boxes, size)
        keep = (clipped[:, 2] > clipped[:, 0]) & (clipped[:, 3] > clipped[:, 1])
        moved = (clipped != boxes).any(dim=1) & keep
        if (~keep).any() or moved.any():
            self.dropped += int((~keep).sum())
            self.clipped += int(moved.sum())
            if len(self.examples) < 3:
                self.examples.append(where)
        return clipped[keep], keep

    def report(self, source: str) -> None:
        if self.clipped or self.dropped:
            warnings.warn(
                f"{source}: {self.clipped} boxes clipped to their image, {self.dropped} degenerate boxes dropped "
                f"(e.g. {', '.join(self.examples)})",
                AnnotationWarning,
                stacklevel=3,
            )


def read_image(path: Path) -> tv_tensors.Image:
    """The file at `path` as a uint8 RGB image (3, H, W); PIL's errors (IMAGE_ERRORS) pass through."""
    with Image.open(path) as image:
        return tv_tensors.Image(F.pil_to_tensor(image.convert("RGB")))


class DetectionDataset(Dataset):
    """Images with boxes: `records` read once, `transforms` seeded per (seed, epoch, index)."""

    def __init__(
        self,
        records: list[ImageRecord],
        class_names: Sequence[str],
        category_ids: Sequence[int],
        annotation_file: Path | None,
        transforms: Transforms | None = None,
        seed: int = 0,
    ) -> None:
        self.records = records
        self.class_names = list(class_names)
        self.category_ids = list(category_ids)
        self.annotation_file = annotation_file
        self.transforms = transforms
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> Sample | Skipped:
        return self.sample(index, seed_index=index)

    def sample(self, index: int, seed_index: int) -> Sample | Skipped:
        """Sample `index`, augmented with the seed of (seed, epoch, `seed_index`); unreadable images become Skipped."""
        record = self.records[index]
        try:
            image = read_image(record.path)
        except IMAGE_ERRORS as err:
            return Skipped(str(record.path), f"{type(err).__name__}: {err}")
        if tuple(image.shape[-2:]) != record.size:
            found, expected = image.shape[-2:], record.size
            return Skipped(
                str(record.path),
                f"the image is {found[1]}x{found[0]} but its annotation says {expected[1]}x{expected[0]}",
            )
        train = ~record.crowd
        target = {
            "boxes": tv_tensors.BoundingBoxes(record.boxes[train], format="XYXY", canvas_size=record.size),
            "labels": record.labels[train],
            "difficult": record.difficult[train],
            "image_id": record.image_id,
            "orig_size": record.size,
        }
        if self.transforms is not None:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(sample_seed(self.seed, self.epoch, seed_index))
                image, target = self.transforms(image, target)
        if not image.is_floating_point():
            image = F.to_dtype(image, torch.float32, scale=True)
        return image, target

    def ground_truth(self, index: int) -> dict[str, Any]:
        """The un-augmented boxes of image `index` in original pixels; COCO crowd regions come as `difficult`,
        VOC's and pycocotools' one "ignore" flag."""
        record = self.records[index]
        return {
            "image_id": record.image_id,
            "boxes": record.boxes.clone(),
            "labels": record.labels.clone(),
            "difficult": record.difficult | record.crowd,
            "orig_size": record.size,
        }


# --- COCO ----------------------------------------------------------------------------------------------------------


def _load_coco(path: Path) -> COCO:
    if not path.is_file():
        raise DataError(f"COCO annotation file {path} does not exist")
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its progress
            return COCO(str(path))
    except (OSError, ValueError, KeyError, TypeError, AssertionError) as err:
        raise DataError(f"cannot read COCO annotations {path}: {type(err).__name__}: {err}") from None


class CocoDetection(DetectionDataset):
    """A COCO annotation JSON and its image folder; labels 1..K follow the sorted category ids.

    Crowd boxes (iscrowd=1) are no training targets; `ground_truth` keeps them as `difficult` (ignored).
    Images without objects stay, with boxes of shape (0, 4).
    """

    def __init__(
        self, images_dir: str | Path, annotation_json: str | Path, transforms: Transforms | None = None, seed: int = 0
    ) -> None:
        images_dir, annotation_json = Path(images_dir), Path(annotation_json)
        coco = _load_coco(annotation_json)
        if not images_dir.is_dir():
            raise DataError(f"COCO image folder {images_dir} does not exist")
        category_ids = sorted(coco.getCatIds())
        if not category_ids:
            raise DataError(f"{annotation_json} has no categories")
        label_of = {category: k for k, category in enumerate(category_ids, start=1)}
        check = BoxCheck()
        records = []
        try:
            for image_id in sorted(coco.getImgIds()):
                info = coco.imgs[image_id]
                size = (int(info["height"]), int(info["width"]))
                annotations = coco.imgToAnns.get(image_id, [])
                for a in annotations:
                    if len(a["bbox"]) != 4:
                        raise ValueError(f"annotation {a.get('id')} has bbox {a['bbox']}, not [x, y, width, height]")
                    if a["category_id"] not in label_of:
                        raise DataError(
                            f"{annotation_json}: annotation {a.get('id')} has category_id {a['category_id']}, "
                            f"which is not among its categories {category_ids}"
                        )
                xywh = torch.tensor([[float(v) for v in a["bbox"]] for a in annotations], dtype=torch.float32)
                boxes, keep = check.clean(box_convert(xywh.view(-1, 4), "xywh", "xyxy"), size, f"image {image_id}")
                labels = torch.tensor([label_of[a["category_id"]] for a in annotations], dtype=torch.int64)
                crowd = torch.tensor([bool(a.get("iscrowd", 0)) for a in annotations], dtype=torch.bool)
                records.append(
                    ImageRecord(
                        path=images_dir / info["file_name"],
                        image_id=int(image_id),
                        size=size,
                        boxes=boxes,
                        labels=labels[keep],
                        difficult=torch.zeros(len(boxes), dtype=torch.bool),
                        crowd=crowd[keep],
                    )
                )
        except (KeyError, TypeError, ValueError, RuntimeError) as err:
            raise DataError(f"cannot read COCO annotations {annotation_json}: {type(err).__name__}: {err}") from None
        if not records:
            raise DataError(f"{annotation_json} lists no images")
        check.report(str(annotation_json))
        names = [str(coco.cats[c]["name"]) for c in category_ids]
        super().__init__(records, names, category_ids, annotation_json, transforms, seed)


# --- PASCAL VOC ------------------------------------------------------------------------------------------------------


def _voc_devkit(voc_root: Path) -> Path:
    """`voc_root/VOCdevkit` when it exists, else `voc_root` itself (given as the VOCdevkit folder)."""
    return voc_root / "VOCdevkit" if (voc_root / "VOCdevkit").is_dir() else voc_root


def _voc_image_ids(names: list[str]) -> list[int]:
    """VOC's names as integers ("000005" -> 5, "2008_000008" -> 2008000008: unique across 2007 and 2012);
    other names get their position, 1-based."""
    if all(re.fullmatch(r"\d+(_\d+)?", name) for name in names):
        return [int(name.replace("_", "")) for name in names]
    return list(range(1, len(names) + 1))


def _image_size(path: Path, xml: Path) -> tuple[int, int]:
    try:
        with Image.open(path) as image:
            return image.height, image.width
    except IMAGE_ERRORS as err:
        raise DataError(f"{xml} gives no <size> and its image {path} cannot be read: {err}") from None


class VocDetection(DetectionDataset):
    """One PASCAL VOC image set: `VOCdevkit/VOC<year>/{Annotations,JPEGImages,ImageSets/Main/<image_set>.txt}`.

    Labels follow VOC_CLASSES; `difficult` flags are kept (training may drop them, evaluation ignores them).
    """

    def __init__(
        self,
        voc_root: str | Path,
        year: str = "2007",
        image_set: str = "trainval",
        transforms: Transforms | None = None,
        seed: int = 0,
    ) -> None:
        base = _voc_devkit(Path(voc_root)) / f"VOC{year}"
        listing = base / "ImageSets" / "Main" / f"{image_set}.txt"
        for needed in (base, base / "Annotations", base / "JPEGImages"):
            if not needed.is_dir():
                raise DataError(f"VOC folder {needed} does not exist; expected VOCdevkit/VOC{year}/ under {voc_root}")
        if not listing.is_file():
            raise DataError(f"VOC image set {listing} does not exist")
        names = [line.split()[0] for line in listing.read_text().splitlines() if line.strip()]
        if not names:
            raise DataError(f"VOC image set {listing} lists no images")
        label_of = {name: k for k, name in enumerate(VOC_CLASSES, start=1)}
        check = BoxCheck()
        records = []
        for name, image_id in zip(names, _voc_image_ids(names), strict=True):
            xml, path = base / "Annotations" / f"{name}.xml", base / "JPEGImages" / f"{name}.jpg"
            size, objects = read_voc_xml(xml)
            size = size or _image_size(path, xml)
            for obj in objects:
                if obj.name not in label_of:
                    raise _unknown_class(xml, obj.name)
            raw = torch.tensor([obj.box for obj in objects], dtype=torch.float32).view(-1, 4)
            boxes, keep = check.clean(raw, size, xml.name)
            records.append(
                ImageRecord(
                    path=path,
                    image_id=image_id,
                    size=size,
                    boxes=boxes,
                    labels=torch.tensor([label_of[o.name] for o in objects], dtype=torch.int64)[keep],
                    difficult=torch.tensor([o.difficult for o in objects], dtype=torch.bool)[keep],
                    crowd=torch.zeros(len(boxes), dtype=torch.bool),
                )
            )
        check.report(f"VOC{year} {image_set} ({base / 'Annotations'})")
        super().__init__(records, VOC_CLASSES, range(1, len(VOC_CLASSES) + 1), None, transforms, seed)


def _unknown_class(xml: Path, name: str) -> DataError:
    return DataError(f"{xml}: {unknown_name('VOC class', name, VOC_CLASSES, VOC_CLASSES)}")


class DetectionConcat(ConcatDataset):
    """Several detection datasets of the same classes as one (VOC "07+12"); seeds follow the joint index."""

    def __init__(self, datasets: Sequence[DetectionDataset]) -> None:
        super().__init__(datasets)
        first = datasets[0]
        for other in datasets[1:]:
            if other.class_names != first.class_names:
                raise DataError(f"cannot join datasets of classes {first.class_names} and {other.class_names}")
        self.class_names = list(first.class_names)
        self.category_ids = list(first.category_ids)
        self.annotation_file: Path | None = None

    def set_epoch(self, epoch: int) -> None:
        for dataset in self.datasets:
            dataset.set_epoch(epoch)

    def _locate(self, index: int) -> tuple[DetectionDataset, int, int]:
        """The dataset holding joint `index`, the index within it, and the joint index made non-negative."""
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} samples")
        part = bisect_right(self.cumulative_sizes, index)
        return self.datasets[part], index - (self.cumulative_sizes[part - 1] if part else 0), index

    def __getitem__(self, index: int) -> Sample | Skipped:
        dataset, local, index = self._locate(index)
        return dataset.sample(local, seed_index=index)

    def ground_truth(self, index: int) -> dict[str, Any]:
        dataset, local, _ = self._locate(index)
        return dataset.ground_truth(local)


def voc_union(
    voc_root: str | Path,
    sets: Sequence[tuple[str, str]] = (("2007", "trainval"), ("2012", "trainval")),
    transforms: Transforms | None = None,
    seed: int = 0,
) -> DetectionConcat:
    """The union of VOC (year, image_set) pairs; the default is the paper's "07+12" training set (Sect. 4.6)."""
    return DetectionConcat([VocDetection(voc_root, year, image_set, transforms, seed) for year, image_set in sets])


# --- by name or folder -----------------------------------------------------------------------------------------------


def _is_voc(root: Path) -> bool:
    devkit = _voc_devkit(root)
    return any((devkit / f"VOC{year}").is_dir() for year in ("2007", "2012"))


def _voc_split(root: Path, split: str, transforms: Transforms | None, seed: int) -> DetectionDataset | DetectionConcat:
    if split not in VOC_SPLITS:
        raise DataError(str(unknown_name("VOC split", split, VOC_SPLITS)))
    if split != "train":
        return VocDetection(root, "2007", "test", transforms, seed)
    devkit = _voc_devkit(root)
    if (devkit / "VOC2012" / "ImageSets" / "Main" / "trainval.txt").is_file():
        return voc_union(root, transforms=transforms, seed=seed)
    return VocDetection(root, "2007", "trainval", transforms, seed)


def _coco_split(root: Path, split: str, transforms: Transforms | None, seed: int) -> CocoDetection:
    layouts = [
        (f"instances_{split}.json", split),
        (f"{split}.json", split),
        (f"instances_{split}2017.json", f"{split}2017"),
        (f"instances_{split}2014.json", f"{split}2014"),
    ]
    for annotation, images in layouts:
        if (root / "annotations" / annotation).is_file():
            return CocoDetection(root / images, root / "annotations" / annotation, transforms, seed)
    found = sorted(p.name for p in (root / "annotations").glob("*.json"))
    tried = ", ".join(f"annotations/{annotation}" for annotation, _ in layouts)
    raise DataError(f"{root} has no annotations for split {split!r}: tried {tried}; found {found or 'none'}")


def open_detection_data(
    data: str, split: str, transforms: Transforms | None = None, seed: int = 0
) -> DetectionDataset | DetectionConcat:
    """The detection dataset of one split of `data`: cluttered-digits, a VOC folder or a COCO folder (module doc)."""
    if data == "cluttered-digits":
        if split not in cluttered_digits.SPLITS:
            raise DataError(str(unknown_name("cluttered-digits split", split, cluttered_digits.SPLITS)))
        root = cluttered_digits.ensure_cluttered_digits()
        return CocoDetection(root / split, root / "annotations" / f"{split}.json", transforms, seed)
    root = Path(data)
    if not root.exists():
        if "/" not in data and "\\" not in data and data.replace("-", "").isalnum():
            choices = [*NAMED_DATA, "a VOC folder", "a COCO folder"]
            raise DataError(str(unknown_name("detection data", data, NAMED_DATA, choices)))
        raise DataError(f"detection data folder {root} does not exist")
    if _is_voc(root):
        return _voc_split(root, split, transforms, seed)
    if (root / "annotations").is_dir():
        return _coco_split(root, split, transforms, seed)
    raise DataError(
        f"{root} is neither a VOC folder (VOCdevkit/VOC2007/...) nor a COCO folder (annotations/instances_<split>.json)"
    )


# --- batching --------------------------------------------------------------------------------------------------------


def collate_detection_skipping(
    batch: Sequence[Sample | Skipped],
) -> tuple[list[tv_tensors.Image], list[dict[str, Any]], list[Skipped]]:
    """The readable images and targets as lists (sizes differ), and the unreadable samples beside them."""
    good = [item for item in batch if not isinstance(item, Skipped)]
    skipped = [item for item in batch if isinstance(item, Skipped)]
    return [image for image, _ in good], [target for _, target in good], skipped


def collate_detection(batch: Sequence[Sample | Skipped]) -> tuple[list[tv_tensors.Image], list[dict[str, Any]]]:
    """The readable images and targets as lists, the torchvision detection contract; each unreadable sample is
    left out with one logged line."""
    images, targets, skipped = collate_detection_skipping(batch)
    for item in skipped:
        log.warning("skipping unreadable image %s (%s)", item.path, item.reason)
    return images, targets
