import copy
import json
import math

import numpy as np
import pytest
import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from torchvision.ops import box_iou

from cbam.detection.evaluator import (
    DetectionEvaluator,
    _box_iou,
    coco_ground_truth,
    coco_metrics,
    coco_metrics_leaving_out,
    coco_results,
    detections_from_results,
    voc_ap,
    voc_metrics,
)

CATEGORY_IDS = [3, 7, 18]  # non-contiguous, as COCO's
CLASS_NAMES = ["cat", "dog", "bird"]


def det(boxes, labels, scores):
    return {
        "boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
        "labels": torch.tensor(labels, dtype=torch.int64),
        "scores": torch.tensor(scores, dtype=torch.float32),
    }


def gt(boxes, labels, difficult=None, image_id=0):
    record = {
        "image_id": image_id,
        "boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
        "labels": torch.tensor(labels, dtype=torch.int64),
        "orig_size": (480, 640),
    }
    if difficult is not None:
        record["difficult"] = torch.tensor(difficult, dtype=torch.bool)
    return record


ONE = pytest.approx(1.0, abs=1e-12)  # both references sum rounded terms: the devkit 11 times 1/11, pycocotools
# divides by tp + fp + eps, so a perfect score is 1 within a few ulps, as theirs is

# --- COCO -------------------------------------------------------------------------------------------------------

# (image id, category id, [x, y, w, h], iscrowd); every size range (small < 32², large > 96²) holds objects
ANNOTATIONS = [
    (11, 3, [10, 10, 50, 40], 0),
    (11, 7, [200, 150, 150, 120], 0),
    (12, 3, [30, 40, 20, 20], 0),
    (12, 18, [300, 300, 60, 50], 0),
    (12, 7, [0, 0, 300, 200], 1),
    (15, 7, [100, 100, 80, 60], 0),
    (15, 7, [400, 200, 120, 150], 0),
    (20, 18, [50, 60, 25, 20], 0),
    (20, 3, [300, 100, 200, 200], 0),
]
IMAGE_IDS = [11, 12, 15, 20]


def coco_fixture() -> dict:
    """A COCO dict without "info" or "licenses", which pycocotools' loadRes would otherwise want."""
    annotations = [
        {"id": i + 1, "image_id": im, "category_id": c, "bbox": b, "area": b[2] * b[3], "iscrowd": crowd}
        for i, (im, c, b, crowd) in enumerate(ANNOTATIONS)
    ]
    return {
        "images": [{"id": i, "height": 480, "width": 640} for i in IMAGE_IDS],
        "annotations": annotations,
        "categories": [{"id": c, "name": n} for c, n in zip(CATEGORY_IDS, CLASS_NAMES, strict=True)],
    }


def xyxy(b, dx=0.0, dy=0.0, grow=0.0):
    return [b[0] + dx, b[1] + dy, b[0] + b[2] + dx + grow, b[1] + b[3] + dy + grow]


def model_outputs() -> list[dict]:
    """Detections per image of IMAGE_IDS: jittered hits, misses, false positives, a duplicate, one on the crowd."""
    a = [b for _, _, b, _ in ANNOTATIONS]
    return [
        det([xyxy(a[0], 2, 1), xyxy(a[1], -6, 4, 10), xyxy(a[1], 30, 30)], [1, 2, 2], [0.9, 0.8, 0.75]),
        det(
            [xyxy(a[2], 1, 1), xyxy(a[3], 3), [10, 10, 120, 90], [500, 400, 600, 470]],
            [1, 3, 2, 1],
            [0.6, 0.95, 0.7, 0.65],
        ),
        det([xyxy(a[5], 5, 5), [0, 0, 50, 50]], [2, 3], [0.85, 0.3]),  # the large dog is missed
        det([xyxy(a[7], 4, -3), xyxy(a[8], 20, 10, -15), xyxy(a[8], 0, 0, 5)], [3, 1, 1], [0.55, 0.5, 0.45]),
    ]


def pycocotools_stats(gt_path, results, image_ids=None) -> np.ndarray:
    """COCOeval run directly, the way its README does, as the reference."""
    coco_gt = COCO(str(gt_path))
    coco_dt = coco_gt.loadRes(copy.deepcopy(results))
    evaluator = COCOeval(coco_gt, coco_dt, "bbox")
    if image_ids is not None:
        evaluator.params.imgIds = image_ids
    evaluator.evaluate()
    evaluator.accumulate()
    evaluator.summarize()
    return evaluator.stats


@pytest.fixture
def gt_file(tmp_path):
    path = tmp_path / "instances.json"
    path.write_text(json.dumps({"info": {}, "licenses": [], **coco_fixture()}))
    return path


def test_coco_results_format():
    results = coco_results([det([[10, 20, 40, 60]], [3], [0.5])], [42], CATEGORY_IDS)
    assert results == [{"image_id": 42, "category_id": 18, "bbox": [10.0, 20.0, 30.0, 40.0], "score": 0.5}]
    json.dumps(results)  # plain Python numbers
    with pytest.raises(ValueError, match=r"1\.\.3"):
        coco_results([det([[0, 0, 1, 1]], [0], [0.5])], [1], CATEGORY_IDS)


@pytest.mark.parametrize("image_ids", [None, [11, 12]])
def test_coco_metrics_equal_pycocotools(gt_file, image_ids, capsys):
    results = coco_results(model_outputs(), IMAGE_IDS, CATEGORY_IDS)
    reference = pycocotools_stats(gt_file, results, image_ids)
    capsys.readouterr()
    for ground_truth in (coco_fixture(), gt_file):
        metrics = coco_metrics(ground_truth, results, image_ids=image_ids)
        for key, i in (("map", 0), ("map50", 1), ("map75", 2), ("map_small", 3), ("map_medium", 4), ("map_large", 5)):
            assert metrics[key] == pytest.approx(reference[i], abs=1e-12)
    assert 0.0 < metrics["map"] < metrics["map50"] < 1.0
    assert capsys.readouterr().out == ""  # pycocotools' printing is swallowed


def test_coco_perfect_and_empty():
    truth = [[a for a in ANNOTATIONS if a[0] == i and not a[3]] for i in IMAGE_IDS]
    perfect = [
        det([xyxy(b) for _, _, b, _ in t], [CATEGORY_IDS.index(c) + 1 for _, c, _, _ in t], [1.0] * len(t))
        for t in truth
    ]
    metrics = coco_metrics(coco_fixture(), coco_results(perfect, IMAGE_IDS, CATEGORY_IDS))
    assert [metrics["map"], metrics["map50"], metrics["map75"]] == [ONE, ONE, ONE]
    nothing = coco_metrics(coco_fixture(), [])
    assert all(nothing[k] == 0.0 for k in ("map", "map50", "map75", "map_small", "map_medium", "map_large"))


def test_coco_ground_truth_marks_difficult_as_crowd():
    record = gt([[10, 20, 40, 60], [0, 0, 5, 5]], [3, 1], difficult=[False, True], image_id=9)
    data = coco_ground_truth([record], CLASS_NAMES, CATEGORY_IDS)
    assert data["images"] == [{"id": 9, "height": 480, "width": 640}]
    assert [(a["category_id"], a["bbox"], a["area"], a["iscrowd"]) for a in data["annotations"]] == [
        (18, [10.0, 20.0, 30.0, 40.0], 1200.0, 0),
        (3, [0.0, 0.0, 5.0, 5.0], 25.0, 1),
    ]
    # a detection on the difficult box is neither a hit nor a false alarm
    hits = det([[10, 20, 40, 60]], [3], [0.9])
    with_extra = det([[10, 20, 40, 60], [0, 0, 5, 5]], [3, 1], [0.9, 0.95])
    assert coco_metrics(data, coco_results([hits], [9], CATEGORY_IDS))["map"] == ONE
    assert coco_metrics(data, coco_results([with_extra], [9], CATEGORY_IDS))["map"] == ONE


# --- PASCAL VOC -------------------------------------------------------------------------------------------------

# three "cat" boxes: two in image A, one in image B
GT_A = [[0, 0, 10, 10], [20, 20, 40, 40]]
GT_B = [[5, 5, 25, 25]]


def voc07(detections, ground_truths, names=("cat",), **kw):
    return voc_metrics(detections, ground_truths, list(names), **kw)


def hand_case(extra_a=None, extra_gt_a=None):
    """By score: 0.9 hits A's first box, 0.8 misses in B, 0.7 hits B's box, 0.6 misses in A; A's second is missed."""
    boxes_a, labels_a, scores_a = [[0, 0, 10, 10], [70, 0, 90, 20]], [1, 1], [0.9, 0.6]
    if extra_a is not None:
        boxes_a, labels_a, scores_a = [*boxes_a, extra_a[0]], [*labels_a, 1], [*scores_a, extra_a[1]]
    gts_a, difficult = GT_A, [False, False]
    if extra_gt_a is not None:
        gts_a, difficult = [*GT_A, extra_gt_a[0]], [*difficult, extra_gt_a[1]]
    detections = [det(boxes_a, labels_a, scores_a), det([[50, 50, 60, 60], [5, 5, 25, 25]], [1, 1], [0.8, 0.7])]
    return detections, [gt(gts_a, [1] * len(gts_a), difficult), gt(GT_B, [1])]


def test_voc07_hand_computed():
    # TP, FP, TP, FP over 3 positives: precision 1/1, 1/2, 2/3, 2/4; recall 1/3, 1/3, 2/3, 2/3.
    # 11 points: t = 0, .1, .2, .3 reach recall >= t at every point -> max precision 1;
    # t = .4, .5, .6 only at recall 2/3 -> max(2/3, 1/2) = 2/3; t = .7 .. 1 never -> 0.
    expected = (4 * 1.0 + 3 * (2 / 3)) / 11  # = 6/11
    result = voc07(*hand_case())
    assert result["map50"] == pytest.approx(expected, abs=1e-12)
    assert result["per_class"] == {"cat": pytest.approx(6 / 11, abs=1e-12)}


def test_voc_all_points_hand_computed():
    # monotone precision envelope: 1 up to recall 1/3, 2/3 up to 2/3, then 0 -> area 1/3 * 1 + 1/3 * 2/3 = 5/9
    assert voc07(*hand_case(), use_07_metric=False)["map50"] == pytest.approx(5 / 9, abs=1e-12)


def test_voc_perfect_detections():
    detections = [det(GT_A, [1, 1], [0.9, 0.8]), det(GT_B, [1], [0.7])]
    ground_truths = [gt(GT_A, [1, 1]), gt(GT_B, [1])]
    assert voc07(detections, ground_truths)["map50"] == ONE
    assert voc07(detections, ground_truths, use_07_metric=False)["map50"] == ONE


def test_voc_difficult_neither_counted_nor_penalised():
    hard_box = [60, 60, 80, 80]
    missed = voc07(*hand_case(extra_gt_a=(hard_box, True)))["map50"]
    found = voc07(*hand_case(extra_a=(hard_box, 0.95), extra_gt_a=(hard_box, True)))["map50"]
    assert missed == found == pytest.approx(6 / 11, abs=1e-12)
    # the same detection with no box under it is a false positive first: precision 0, 1/2, 1/3, 2/4, 2/5
    # at recall 0, 1/3, 1/3, 2/3, 2/3 -> 7 thresholds (0 .. .6) reach max precision 1/2 -> 7/22
    penalised = voc07(*hand_case(extra_a=(hard_box, 0.95)))["map50"]
    assert penalised == pytest.approx(7 / 22, abs=1e-12)


def test_voc_duplicate_is_false_positive():
    # two boxes; TP (0.9), duplicate of it (0.8), TP (0.7): precision 1, 1/2, 2/3 at recall 1/2, 1/2, 1
    # 11 points: t = 0 .. .5 -> 1 (6 thresholds); t = .6 .. 1 -> 2/3 (5 thresholds) -> (6 + 10/3) / 11 = 28/33
    boxes = [[0, 0, 10, 10], [50, 50, 70, 70]]
    detections = [det([boxes[0], [0, 0, 10, 9], boxes[1]], [1, 1, 1], [0.9, 0.8, 0.7])]
    assert voc07(detections, [gt(boxes, [1, 1])])["map50"] == pytest.approx(28 / 33, abs=1e-12)


def test_voc_matches_best_box_even_when_taken():
    # the devkit compares a detection with its best-overlap box only: the 0.8 detection overlaps the taken
    # box by 0.82 and the free one by 0.54, so it is a false positive (TP, FP over 2 positives -> 6/11)
    boxes = [[0, 0, 10, 10], [4, 0, 14, 10]]
    detections = [det([boxes[0], [1, 0, 11, 10]], [1, 1], [0.9, 0.8])]
    assert voc07(detections, [gt(boxes, [1, 1])])["map50"] == pytest.approx(6 / 11, abs=1e-12)


def test_voc_overlap_must_exceed_threshold():
    ground_truths = [gt([[0, 0, 10, 10]], [1])]
    assert voc07([det([[0, 0, 10, 5]], [1], [0.9])], ground_truths)["map50"] == 0.0  # IoU exactly 0.5
    assert voc07([det([[0, 0, 10, 5.01]], [1], [0.9])], ground_truths)["map50"] == ONE


def test_voc_class_without_ground_truth_left_out():
    detections = [det([[0, 0, 10, 10], [30, 30, 40, 40]], [1, 2], [0.9, 0.8])]
    result = voc07(detections, [gt([[0, 0, 10, 10]], [1])], names=("cat", "dog"))
    assert result["per_class"]["cat"] == ONE
    assert math.isnan(result["per_class"]["dog"])
    assert result["map50"] == ONE


def test_voc_ap_uses_devkit_thresholds():
    # np.arange(0, 1.1, 0.1)[3] is 0.30000000000000004, so a recall of exactly 0.3 reaches 3 thresholds, not 4
    assert voc_ap([0.3], [1.0]) == pytest.approx(3 / 11, abs=1e-15)
    assert voc_ap([], []) == 0.0


def test_converted_boxes_give_devkit_iou():
    # raw VOC boxes are 1-based inclusive pixels; the devkit's IoU adds 1 to every width and height
    raw_a = torch.randint(1, 200, (50, 2)).repeat(1, 2) + torch.cat(
        [torch.zeros(50, 2), torch.randint(0, 120, (50, 2))], 1
    )
    raw_b = torch.randint(1, 200, (40, 2)).repeat(1, 2) + torch.cat(
        [torch.zeros(40, 2), torch.randint(0, 120, (40, 2))], 1
    )
    a, b = raw_a.double().numpy(), raw_b.double().numpy()
    iw = np.maximum(np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0]) + 1.0, 0.0)
    ih = np.maximum(np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1]) + 1.0, 0.0)
    inters = iw * ih
    uni = (
        ((a[:, 2] - a[:, 0] + 1.0) * (a[:, 3] - a[:, 1] + 1.0))[:, None]
        + ((b[:, 2] - b[:, 0] + 1.0) * (b[:, 3] - b[:, 1] + 1.0))[None, :]
        - inters
    )
    devkit = inters / uni
    assert (devkit > 0).sum() > 100  # enough overlapping pairs to mean something

    shift = torch.tensor([1.0, 1.0, 0.0, 0.0], dtype=torch.float64)
    conv_a, conv_b = raw_a.double() - shift, raw_b.double() - shift  # (xmin - 1, ymin - 1, xmax, ymax)
    np.testing.assert_array_equal(_box_iou(conv_a.numpy(), conv_b.numpy()), devkit)
    np.testing.assert_allclose(box_iou(conv_a, conv_b).numpy(), devkit, rtol=0, atol=1e-12)


# --- the accumulator --------------------------------------------------------------------------------------------


def fixture_records() -> list[dict]:
    records = []
    for image_id in IMAGE_IDS:
        anns = [a for a in ANNOTATIONS if a[0] == image_id]
        records.append(
            {
                "image_id": image_id,
                "boxes": torch.tensor([xyxy(b) for _, _, b, _ in anns]),
                "labels": torch.tensor([CATEGORY_IDS.index(c) + 1 for _, c, _, _ in anns]),
                "difficult": torch.tensor([bool(crowd) for *_, crowd in anns]),
                "orig_size": (480, 640),
            }
        )
    return records


def test_evaluator_round_trips_categories(gt_file):
    outputs, records = model_outputs(), fixture_records()
    from_file = DetectionEvaluator(CLASS_NAMES, CATEGORY_IDS, annotation_file=gt_file)
    from_records = DetectionEvaluator(CLASS_NAMES, CATEGORY_IDS)
    for evaluator in (from_file, from_records):
        evaluator.update(IMAGE_IDS[:2], outputs[:2], records[:2])
        evaluator.update(IMAGE_IDS[1:], outputs[1:], records[1:])  # image 12 again, as a padded sampler sends it
    assert len(from_file) == 4
    results = from_file.results()
    assert results == coco_results(outputs, IMAGE_IDS, CATEGORY_IDS)
    assert {r["category_id"] for r in results} == set(CATEGORY_IDS)
    assert results[1]["category_id"] == 7 and results[1]["image_id"] == 11  # label 2 -> id 7
    reference = pycocotools_stats(gt_file, results)
    for metrics in (from_file.compute("coco"), from_records.compute("coco")):
        assert [metrics["map"], metrics["map50"], metrics["map75"]] == pytest.approx(list(reference[:3]), abs=1e-12)


def test_evaluator_voc_and_errors():
    detections, ground_truths = hand_case()
    evaluator = DetectionEvaluator(["cat"])
    evaluator.update([1, 2], detections, ground_truths)
    assert evaluator.compute("voc07")["map50"] == pytest.approx(6 / 11, abs=1e-12)
    assert evaluator.compute("voc")["map50"] == pytest.approx(5 / 9, abs=1e-12)
    with pytest.raises(ValueError, match="coco, voc07, voc"):
        evaluator.compute("map")
    blind = DetectionEvaluator(["cat"])
    blind.update([1], detections[:1])
    with pytest.raises(ValueError, match="needs the ground truths"):
        blind.compute("voc07")


def test_scores_leaving_out_each_fold_equal_scores_of_the_other_images(gt_file):
    outputs, records = model_outputs(), fixture_records()
    results = coco_results(outputs, IMAGE_IDS, CATEGORY_IDS)
    folds = [[11], [12, 20], [15]]
    for fold, scores in zip(folds, coco_metrics_leaving_out(gt_file, results, folds), strict=True):
        others = [i for i in IMAGE_IDS if i not in fold]
        reference = pycocotools_stats(gt_file, results, others)
        assert [scores["map"], scores["map50"], scores["map75"]] == pytest.approx(list(reference[:3]), abs=1e-12)
    evaluator = DetectionEvaluator(CLASS_NAMES, CATEGORY_IDS)
    evaluator.update(IMAGE_IDS, outputs, records)
    assert evaluator.compute_leaving_out("coco", [[]])[0] == evaluator.compute("coco")
    for fold, scores in zip(folds, evaluator.compute_leaving_out("voc07", folds), strict=True):
        kept = [k for k, i in enumerate(IMAGE_IDS) if i not in fold]
        expected = voc_metrics([outputs[k] for k in kept], [records[k] for k in kept], CLASS_NAMES)
        assert scores["map50"] == expected["map50"]


def test_saved_results_read_back_score_as_the_detections_did(gt_file):
    outputs = model_outputs()
    results = json.loads(json.dumps(coco_results(outputs, IMAGE_IDS, CATEGORY_IDS)))  # as written to a file
    back = detections_from_results(results, IMAGE_IDS, CATEGORY_IDS)
    for original, read in zip(outputs, back, strict=True):
        assert torch.equal(original["labels"], read["labels"])
        torch.testing.assert_close(read["boxes"].float(), original["boxes"], rtol=0, atol=1e-4)
    again = coco_results(back, IMAGE_IDS, CATEGORY_IDS)
    assert coco_metrics(gt_file, again) == coco_metrics(gt_file, results)
    with pytest.raises(ValueError, match="image id 99"):
        detections_from_results([{**results[0], "image_id": 99}], IMAGE_IDS, CATEGORY_IDS)
