"""Detection data: exact VOC and COCO boxes, one report per source, cluttered-digits, aligned and reproducible
augmentation, skipped corrupt images, DataError for missing paths."""

import io
import json
import logging
import re
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.datasets import load_digits
from torchvision import tv_tensors

import cbam.data.cluttered_digits as cd
from cbam.data.loading import DataError, Skipped
from cbam.data.voc import read_voc_xml
from cbam.detection.data import (
    VOC_CLASSES,
    AnnotationWarning,
    CocoDetection,
    DetectionConcat,
    DetectionDataset,
    ImageRecord,
    VocDetection,
    collate_detection,
    open_detection_data,
    voc_union,
)
from cbam.detection.transforms import (
    boxes_to_original,
    rcnn_train_transforms,
    ssd_eval_transforms,
    ssd_train_transforms,
)

pytestmark = pytest.mark.filterwarnings("ignore::cbam.detection.data.AnnotationWarning")  # asserted where it matters

DOG, PERSON, CAR, CAT = (VOC_CLASSES.index(name) + 1 for name in ("dog", "person", "car", "cat"))


def _voc_xml(width: int, height: int, objects: list[tuple[str, tuple[int, int, int, int], int]]) -> str:
    parts = [f"<annotation><size><width>{width}</width><height>{height}</height><depth>3</depth></size>"]
    for name, (xmin, ymin, xmax, ymax), difficult in objects:
        parts.append(
            f"<object><name>{name}</name><difficult>{difficult}</difficult><bndbox><xmin>{xmin}</xmin>"
            f"<ymin>{ymin}</ymin><xmax>{xmax}</xmax><ymax>{ymax}</ymax></bndbox></object>"
        )
    return "".join(parts) + "</annotation>"


def _jpeg(width: int, height: int) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.full((height, width, 3), 90, dtype=np.uint8)).save(buffer, format="JPEG")
    return buffer.getvalue()


def _voc_year(devkit: Path, year: str, sets: dict[str, list[str]], images: dict[str, tuple[int, int, list]]) -> None:
    base = devkit / f"VOC{year}"
    for folder in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (base / folder).mkdir(parents=True)
    for name, (width, height, objects) in images.items():
        (base / "Annotations" / f"{name}.xml").write_text(_voc_xml(width, height, objects))
        (base / "JPEGImages" / f"{name}.jpg").write_bytes(_jpeg(width, height))
    for image_set, names in sets.items():
        (base / "ImageSets" / "Main" / f"{image_set}.txt").write_text("".join(f"{n}\n" for n in names))


@pytest.fixture
def voc_root(tmp_path: Path) -> Path:
    """VOC2007 trainval (two images: a difficult object, a box reaching outside, two degenerate boxes), a VOC2007
    test image whose JPEG is truncated, and one VOC2012 trainval image."""
    devkit = tmp_path / "VOCdevkit"
    first = [("dog", (10, 5, 20, 15), 0), ("person", (1, 1, 40, 30), 1), ("car", (30, 20, 55, 35), 0)]
    second = [("cat", (5, 5, 25, 25), 0), ("bottle", (60, 10, 70, 20), 0), ("bottle", (12, 10, 10, 20), 0)]
    images = {"000001": (40, 30, first), "000002": (50, 40, second), "000003": (40, 30, [("dog", (2, 2, 9, 9), 0)])}
    _voc_year(devkit, "2007", {"trainval": ["000001", "000002"], "test": ["000003"]}, images)
    truncated = devkit / "VOC2007" / "JPEGImages" / "000003.jpg"
    truncated.write_bytes(truncated.read_bytes()[:200])
    _voc_year(devkit, "2012", {"trainval": ["2008_000001"]}, {"2008_000001": (20, 20, [("cat", (3, 4, 12, 16), 0)])})
    return tmp_path


def _open_voc(root: Path, *args) -> tuple[VocDetection, list[warnings.WarningMessage]]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        dataset = VocDetection(root, *args)
    return dataset, [w for w in caught if issubclass(w.category, AnnotationWarning)]


def test_voc_boxes_are_converted_clipped_and_flagged_exactly(voc_root):
    dataset, reports = _open_voc(voc_root)
    assert len(dataset) == 2 and dataset.class_names == list(VOC_CLASSES) and dataset.category_ids == list(range(1, 21))
    assert dataset.annotation_file is None
    truth = dataset.ground_truth(0)
    assert truth["boxes"].tolist() == [[9, 4, 20, 15], [0, 0, 40, 30], [29, 19, 40, 30]]  # (xmin-1, ymin-1, xmax, ymax)
    assert truth["labels"].tolist() == [DOG, PERSON, CAR] and truth["difficult"].tolist() == [False, True, False]
    assert truth["image_id"] == 1 and truth["orig_size"] == (30, 40)
    second = dataset.ground_truth(1)
    assert second["boxes"].tolist() == [[4, 4, 25, 25]] and second["labels"].tolist() == [CAT]

    [report] = reports  # once per source, when opened, with both counts
    assert "VOC2007 trainval" in str(report.message) and "Annotations" in str(report.message)
    assert "1 boxes clipped" in str(report.message) and "2 degenerate boxes dropped" in str(report.message)

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # reading samples reports nothing more
        image, target = dataset[0]
    assert isinstance(image, tv_tensors.Image) and image.dtype == torch.float32 and image.shape == (3, 30, 40)
    assert image.min() >= 0.0 and image.max() <= 1.0
    assert isinstance(target["boxes"], tv_tensors.BoundingBoxes) and target["boxes"].canvas_size == (30, 40)
    assert torch.equal(target["boxes"].as_subclass(torch.Tensor), truth["boxes"])
    assert target["labels"].dtype == torch.int64 and target["difficult"].tolist() == [False, True, False]
    assert target["image_id"] == 1 and target["orig_size"] == (30, 40)


def test_read_voc_xml_gives_size_and_raw_objects(voc_root):
    size, objects = read_voc_xml(voc_root / "VOCdevkit/VOC2007/Annotations/000002.xml")
    assert size == (40, 50) and [o.box for o in objects][1] == (59.0, 9.0, 70.0, 20.0)


def test_voc_union_and_splits_by_name(voc_root):
    union = voc_union(voc_root)
    assert isinstance(union, DetectionConcat) and len(union) == 3 and union.class_names == list(VOC_CLASSES)
    assert union.ground_truth(2)["image_id"] == 2008000001 and union.ground_truth(-1)["boxes"].tolist() == [
        [2, 3, 12, 16]
    ]
    union.set_epoch(4)
    assert all(part.epoch == 4 for part in union.datasets)
    train = open_detection_data(str(voc_root), "train")  # 07+12 when both are there
    assert len(train) == 3 and train[2][1]["image_id"] == 2008000001
    assert open_detection_data(str(voc_root / "VOCdevkit"), "val").ground_truth(0)["image_id"] == 3  # 2007 test
    with pytest.raises(DataError, match="unknown VOC split 'trainval'"):
        open_detection_data(str(voc_root), "trainval")


def test_corrupt_images_are_skipped_with_one_line_not_raised(voc_root, caplog):
    test_set = open_detection_data(str(voc_root), "test")
    item = test_set[0]
    assert isinstance(item, Skipped) and item.path.endswith("000003.jpg")
    train = VocDetection(voc_root)
    with caplog.at_level(logging.WARNING, logger="cbam"):
        images, targets = collate_detection([train[0], item, train[1]])
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1 and re.search(r"skipping unreadable image .*000003\.jpg", lines[0])
    assert len(images) == 2 and [t["image_id"] for t in targets] == [1, 2]


def test_bad_voc_data_raises_data_error_naming_the_path(voc_root, tmp_path):
    with pytest.raises(DataError, match="VOC2010"):
        VocDetection(voc_root, year="2010")
    with pytest.raises(DataError, match=r"ImageSets/Main/val\.txt does not exist"):
        VocDetection(voc_root, image_set="val")
    xml = voc_root / "VOCdevkit/VOC2007/Annotations/000002.xml"
    xml.write_text(_voc_xml(50, 40, [("kitten", (1, 1, 5, 5), 0)]))
    with pytest.raises(DataError, match=r"000002\.xml: unknown VOC class 'kitten'"):
        VocDetection(voc_root)
    xml.write_text("<annotation><size>")
    with pytest.raises(DataError, match=r"cannot read VOC annotation .*000002\.xml"):
        VocDetection(voc_root)
    xml.unlink()
    with pytest.raises(DataError, match=r"000002\.xml does not exist"):
        VocDetection(voc_root)
    with pytest.raises(DataError, match="does not exist"):
        open_detection_data(str(tmp_path / "nowhere" / "data"), "train")
    with pytest.raises(DataError, match="unknown detection data 'cluttered-digit'; did you mean cluttered-digits"):
        open_detection_data("cluttered-digit", "train")


def _coco_fixture(root: Path) -> Path:
    """Category ids 7, 3, 1 (not contiguous, not sorted), a crowd box, a box reaching outside, a zero-width box,
    and an image without objects."""
    images = [(10, 32, 24), (20, 16, 16), (5, 16, 16)]  # (id, width, height)
    (root / "train").mkdir(parents=True)
    for image_id, width, height in images:
        Image.new("RGB", (width, height), (10, 200, 30)).save(root / "train" / f"{image_id}.png")
    annotations = [
        {"id": 1, "image_id": 10, "category_id": 7, "bbox": [2, 3, 10, 5], "iscrowd": 0},
        {"id": 2, "image_id": 10, "category_id": 3, "bbox": [0, 0, 8, 8], "iscrowd": 1},
        {"id": 3, "image_id": 10, "category_id": 1, "bbox": [28, 20, 10, 10], "iscrowd": 0},
        {"id": 4, "image_id": 5, "category_id": 3, "bbox": [4, 4, 0, 6], "iscrowd": 0},
    ]
    categories = [{"id": 7, "name": "seven"}, {"id": 3, "name": "three"}, {"id": 1, "name": "one"}]
    coco = {
        "images": [{"id": i, "file_name": f"{i}.png", "width": w, "height": h} for i, w, h in images],
        "annotations": annotations,
        "categories": categories,
    }
    (root / "annotations").mkdir()
    path = root / "annotations" / "instances_train.json"
    path.write_text(json.dumps(coco))
    return path


def test_coco_labels_are_contiguous_and_crowds_are_not_targets(tmp_path):
    annotation = _coco_fixture(tmp_path)
    with pytest.warns(AnnotationWarning, match="instances_train.json: 1 boxes clipped .* 1 degenerate") as caught:
        dataset = open_detection_data(str(tmp_path), "train")
    assert len(caught) == 1 and isinstance(dataset, CocoDetection) and dataset.annotation_file == annotation
    assert dataset.class_names == ["one", "three", "seven"] and dataset.category_ids == [1, 3, 7]
    assert [dataset.ground_truth(i)["image_id"] for i in range(3)] == [5, 10, 20]  # sorted ids
    image, target = dataset[1]
    assert image.shape == (3, 24, 32)
    assert target["boxes"].tolist() == [[2, 3, 12, 8], [28, 20, 32, 24]] and target["labels"].tolist() == [3, 1]
    truth = dataset.ground_truth(1)  # the crowd region stays for evaluation, as an ignored box
    assert truth["labels"].tolist() == [3, 2, 1] and truth["difficult"].tolist() == [False, True, False]
    for empty in (0, 2):  # the degenerate box's image and the image without objects
        assert dataset[empty][1]["boxes"].shape == (0, 4) and dataset[empty][1]["labels"].shape == (0,)


def test_bad_coco_data_raises_data_error_naming_the_path(tmp_path):
    annotation = _coco_fixture(tmp_path)
    with pytest.raises(DataError, match=r"no annotations for split 'val'.*found \['instances_train.json'\]"):
        open_detection_data(str(tmp_path), "val")
    with pytest.raises(DataError, match=r"image folder .*pictures does not exist"):
        CocoDetection(tmp_path / "pictures", annotation)
    with pytest.raises(DataError, match=r"missing\.json does not exist"):
        CocoDetection(tmp_path / "train", tmp_path / "missing.json")
    annotation.write_text('{"images": [')
    with pytest.raises(DataError, match=r"cannot read COCO annotations .*instances_train\.json"):
        CocoDetection(tmp_path / "train", annotation)


def test_cluttered_digits_opens_with_one_digit_box_per_image(tmp_path, monkeypatch):
    digits = load_digits()
    monkeypatch.setenv("CBAM_CACHE", str(tmp_path))
    monkeypatch.setattr(cd, "_load_sources", lambda: (digits.images[:150], digits.target[:150]))
    dataset = open_detection_data("cluttered-digits", "val")
    assert dataset.class_names == [str(d) for d in range(10)] and dataset.category_ids == list(range(1, 11))
    assert dataset.annotation_file is not None and dataset.annotation_file.name == "val.json"
    for index in range(len(dataset)):
        image, target = dataset[index]
        boxes = target["boxes"]
        assert image.shape == (3, 64, 64) and boxes.shape == (1, 4) and target["orig_size"] == (64, 64)
        assert 0 <= boxes[0, 0] < boxes[0, 2] <= 64 and 0 <= boxes[0, 1] < boxes[0, 3] <= 64
        folder_digit = int(dataset.records[index].path.parent.name)
        assert target["labels"].tolist() == [folder_digit + 1]
    with pytest.raises(DataError, match="unknown cluttered-digits split 'trainval'"):
        open_detection_data("cluttered-digits", "trainval")


def _striped_dataset(root: Path, transforms, count: int = 8) -> DetectionDataset:
    """200x160 images with a horizontally striped object (label 1) and a vertically striped one (label 2, difficult),
    so any output box can be checked for holding its own object, whatever the photometric changes."""
    pixels = np.zeros((160, 200, 3), dtype=np.uint8)
    rows, cols = np.indices((60, 70))
    pixels[20:80, 10:80] = ((rows // 12) % 2 * 255)[..., None]  # horizontal stripes
    pixels[90:150, 110:180] = ((cols // 12) % 2 * 255)[..., None]  # vertical stripes
    Image.fromarray(pixels).save(root / "striped.png")
    record = ImageRecord(
        path=root / "striped.png",
        image_id=1,
        size=(160, 200),
        boxes=torch.tensor([[10.0, 20.0, 80.0, 80.0], [110.0, 90.0, 180.0, 150.0]]),
        labels=torch.tensor([1, 2]),
        difficult=torch.tensor([False, True]),
        crowd=torch.tensor([False, False]),
    )
    return DetectionDataset([record] * count, ["across", "upright"], [1, 2], None, transforms, seed=3)


def test_ssd_train_transforms_keep_boxes_labels_and_difficult_aligned(tmp_path):
    dataset = _striped_dataset(tmp_path, ssd_train_transforms(300), count=12)
    checked = 0
    for index in range(len(dataset)):
        image, target = dataset[index]
        assert image.shape == (3, 300, 300) and image.dtype == torch.float32
        boxes, labels = target["boxes"], target["labels"]
        assert boxes.canvas_size == (300, 300) and len(boxes) == len(labels) == len(target["difficult"]) >= 1
        assert (boxes[:, :2] >= 0).all() and (boxes[:, 2:] <= 300).all() and (boxes[:, 2:] > boxes[:, :2]).all()
        assert torch.equal(target["difficult"], labels == 2)
        grey = image.mean(dim=0)
        for (x0, y0, x1, y1), label in zip(boxes.round().int().tolist(), labels.tolist(), strict=True):
            if min(x1 - x0, y1 - y0) < 12:
                continue  # too little of the object left to see its stripes
            inside = grey[y0 + 2 : y1 - 2, x0 + 2 : x1 - 2]
            across = inside.diff(dim=0).abs().mean()  # changes from row to row: horizontal stripes
            upright = inside.diff(dim=1).abs().mean()
            assert (across > 2 * upright) if label == 1 else (upright > 2 * across), (index, label)
            checked += 1
    assert checked >= 8


def test_augmentation_depends_only_on_seed_epoch_and_index(tmp_path):
    a, b = (_striped_dataset(tmp_path, ssd_train_transforms(96)) for _ in range(2))
    torch.manual_seed(1)
    image, target = a[5]
    torch.manual_seed(2)  # the global generator does not matter
    again, target_again = b[5]
    assert torch.equal(image, again) and torch.equal(target["boxes"], target_again["boxes"])
    b.set_epoch(1)
    assert any(not torch.equal(a[i][0], b[i][0]) for i in range(4))  # the epoch does


def test_flip_moves_boxes_to_the_mirrored_place(tmp_path):
    dataset = _striped_dataset(tmp_path, rcnn_train_transforms())
    plain = DetectionDataset(dataset.records, dataset.class_names, dataset.category_ids, None)
    original, truth = plain[0]
    mirrored = truth["boxes"].as_subclass(torch.Tensor)[:, [2, 1, 0, 3]] * torch.tensor([-1, 1, -1, 1]) + torch.tensor(
        [200, 0, 200, 0]
    )
    outcomes = set()
    for index in range(len(dataset)):
        image, target = dataset[index]
        boxes = target["boxes"].as_subclass(torch.Tensor)
        flipped = torch.equal(image, original.flip(-1))
        assert flipped or torch.equal(image, original)
        assert torch.equal(boxes, mirrored if flipped else truth["boxes"].as_subclass(torch.Tensor))
        outcomes.add(flipped)
    assert outcomes == {True, False}


def test_ssd_eval_boxes_map_back_to_the_original_image(tmp_path):
    dataset = _striped_dataset(tmp_path, ssd_eval_transforms(300))
    image, target = dataset[0]
    assert image.shape == (3, 300, 300)
    back = boxes_to_original(target["boxes"], (300, 300), target["orig_size"])
    assert torch.allclose(back, dataset.ground_truth(0)["boxes"], atol=1e-4)
