"""Detection metrics by their trusted definitions: COCO mAP through pycocotools (paper Table 7) and the
PASCAL VOC 2007 devkit's mAP@.5 with 11-point interpolation (Table 8), matched exactly.

Boxes everywhere are continuous xyxy pixels of the original image. VOC annotates 1-based inclusive pixels
(a box covers columns xmin..xmax, width xmax - xmin + 1), and the devkit scores them with "+1" widths. The
dataset reader turns a raw box into the continuous (xmin - 1, ymin - 1, xmax, ymax), whose plain width
xmax - (xmin - 1) is that same xmax - xmin + 1, and whose intersection with another converted box is
min(xmax) - max(xmin - 1) = min(xmax) - max(xmin) + 1: the devkit's. So the plain continuous IoU used here
on converted boxes equals the devkit's IoU on the raw ones, to the last bit for integer coordinates.

Conventions, where the definitions leave a choice:
- VOC matching is the devkit's: a detection is compared to the ground truth of highest IoU in its image
  (matched or not), and is a true positive only when that IoU is strictly greater than the threshold
  (`ovmax > ovthresh`) and the box is not matched yet; a second hit on a matched box is a false positive,
  a hit on a `difficult` box is ignored (neither true nor false positive) and difficult boxes are not
  counted as positives. Scores are sorted with a stable sort (the devkit's quicksort leaves ties in an
  unspecified order). A class without any non-difficult ground truth has no AP: NaN in `per_class`, and
  left out of the mean.
- For COCO scoring of non-COCO data, `coco_ground_truth` marks difficult boxes `iscrowd=1`, pycocotools'
  only "ignore" flag: they are not counted and detections on them are not penalised, as in VOC. Unlike
  VOC, pycocotools measures overlap with a crowd box as intersection over the detection's area, and lets
  any number of detections fall on it.
- pycocotools' -1 ("no ground truth in this area range") is reported as NaN.
"""

from __future__ import annotations

import contextlib
import io
import math
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from torchvision.ops import box_convert

from cbam.errors import unknown_name

COCO_METRIC_NAMES = (
    "map",
    "map50",
    "map75",
    "map_small",
    "map_medium",
    "map_large",
    "mar_1",
    "mar_10",
    "mar_100",
    "mar_small",
    "mar_medium",
    "mar_large",
)  # the order of COCOeval.stats
METRICS = ("coco", "voc07", "voc")


# --- COCO -------------------------------------------------------------------------------------------------------


def coco_results(
    detections: Sequence[dict[str, torch.Tensor]], image_ids: Sequence[int], category_ids: Sequence[int]
) -> list[dict[str, Any]]:
    """Torchvision-style detections (labels 1..K) as COCO results: one JSON-ready dict per box, bbox [x, y, w, h]."""
    if len(detections) != len(image_ids):
        raise ValueError(f"{len(detections)} detections for {len(image_ids)} image ids; give one per image")
    results = []
    for image_id, det in zip(image_ids, detections, strict=True):
        boxes = det["boxes"].detach().cpu().double().reshape(-1, 4)
        labels = _labels(det["labels"], len(category_ids), "detection")
        scores = det["scores"].detach().cpu().double().reshape(-1)
        xywh = box_convert(boxes, "xyxy", "xywh")
        for box, label, score in zip(xywh.tolist(), labels.tolist(), scores.tolist(), strict=True):
            results.append(
                {"image_id": int(image_id), "category_id": int(category_ids[label - 1]), "bbox": box, "score": score}
            )
    return results


def detections_from_results(
    results: Sequence[dict[str, Any]], image_ids: Sequence[int], category_ids: Sequence[int]
) -> list[dict[str, torch.Tensor]]:
    """COCO results back as torchvision-style detections (xyxy boxes, labels 1..K, scores), one per image of
    `image_ids`: the inverse of `coco_results`, for scoring saved detections again."""
    label_of = {int(c): k + 1 for k, c in enumerate(category_ids)}
    per_image: dict[int, list[dict[str, Any]]] = {int(i): [] for i in image_ids}
    for r in results:
        if int(r["image_id"]) not in per_image:
            raise ValueError(f"a result for image id {r['image_id']}, which is not among the images scored")
        if int(r["category_id"]) not in label_of:
            raise ValueError(f"a result of category id {r['category_id']}, not one of {list(category_ids)}")
        per_image[int(r["image_id"])].append(r)
    detections = []
    for image_id in image_ids:
        found = per_image[int(image_id)]
        boxes = torch.tensor([r["bbox"] for r in found], dtype=torch.float64).reshape(-1, 4)
        detections.append({
            "boxes": box_convert(boxes, "xywh", "xyxy"),
            "labels": torch.tensor([label_of[int(r["category_id"])] for r in found], dtype=torch.int64),
            "scores": torch.tensor([float(r["score"]) for r in found], dtype=torch.float64),
        })  # fmt: skip
    return detections


def coco_ground_truth(
    records: Sequence[dict[str, Any]], class_names: Sequence[str], category_ids: Sequence[int] | None = None
) -> dict[str, Any]:
    """A COCO annotation dict from ground-truth records, so any data can be scored by pycocotools.

    Difficult boxes become `iscrowd=1` (neither counted nor penalised); `area` is the box's w * h.
    """
    category_ids = _category_ids(class_names, category_ids)
    images, annotations, seen = [], [], set()
    for record in records:
        image_id = int(record["image_id"])
        if image_id in seen:
            raise ValueError(f"image id {image_id} appears twice in the ground-truth records")
        seen.add(image_id)
        image = {"id": image_id}
        if record.get("orig_size") is not None:
            image["height"], image["width"] = (int(v) for v in record["orig_size"])
        images.append(image)
        xywh = box_convert(record["boxes"].detach().cpu().double().reshape(-1, 4), "xyxy", "xywh")
        labels = _labels(record["labels"], len(class_names), "ground-truth")
        difficult = _difficult(record, len(labels))
        for box, label, hard in zip(xywh.tolist(), labels.tolist(), difficult.tolist(), strict=True):
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": category_ids[label - 1],
                    "bbox": box,
                    "area": box[2] * box[3],
                    "iscrowd": int(hard),
                }
            )
    categories = [{"id": int(c), "name": name} for c, name in zip(category_ids, class_names, strict=True)]
    return {"info": {}, "licenses": [], "images": images, "annotations": annotations, "categories": categories}


def _coco_evaluated(
    ground_truth: str | os.PathLike | dict[str, Any] | COCO,
    results: Sequence[dict[str, Any]],
    image_ids: Sequence[int] | None,
) -> COCOeval:
    """COCOeval of `results` on the images of `ground_truth` (or only `image_ids`), matched image by image
    (`evaluate`), not yet accumulated; pycocotools' printing is swallowed."""
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = _load_coco(ground_truth)
        known = set(coco_gt.getImgIds())
        ids = sorted(known) if image_ids is None else sorted({int(i) for i in image_ids})
        if not ids:
            raise ValueError("no images to evaluate: the ground truth (or image_ids) is empty")
        if missing := set(ids) - known:
            raise ValueError(f"image ids not in the ground truth: {sorted(missing)[:10]}")
        if stray := {int(r["image_id"]) for r in results} - known:
            raise ValueError(f"results for image ids not in the ground truth: {sorted(stray)[:10]}")
        wanted = set(ids)
        kept = [dict(r) for r in results if int(r["image_id"]) in wanted]  # loadRes writes into each dict
        coco_dt = coco_gt.loadRes(kept) if kept else _empty_results(coco_gt)
        evaluator = COCOeval(coco_gt, coco_dt, iouType="bbox")
        evaluator.params.imgIds = ids
        evaluator.evaluate()
    return evaluator


def _coco_summary(evaluator: COCOeval) -> dict[str, float]:
    with contextlib.redirect_stdout(io.StringIO()):
        evaluator.accumulate()
        evaluator.summarize()
    return {name: float(v) if v >= 0 else math.nan for name, v in zip(COCO_METRIC_NAMES, evaluator.stats, strict=True)}


def coco_metrics(
    ground_truth: str | os.PathLike | dict[str, Any] | COCO,
    results: Sequence[dict[str, Any]],
    image_ids: Sequence[int] | None = None,
) -> dict[str, float]:
    """COCO box mAP@[.5:.95], mAP@.5, mAP@.75, by object size, and recalls (`COCO_METRIC_NAMES`) from COCOeval.

    Scores the images of `ground_truth` (an annotation JSON path, a COCO dict or a loaded COCO), or only
    `image_ids`; pycocotools' printing is swallowed.
    """
    return _coco_summary(_coco_evaluated(ground_truth, results, image_ids))


def coco_metrics_leaving_out(
    ground_truth: str | os.PathLike | dict[str, Any] | COCO,
    results: Sequence[dict[str, Any]],
    folds: Sequence[Sequence[int]],
    image_ids: Sequence[int] | None = None,
) -> list[dict[str, float]]:
    """`coco_metrics` with each fold's images left out in turn (a delete-a-group jackknife). Images are matched
    once; each fold only accumulates the others' per-image matches, so this costs little more than one score."""
    evaluator = _coco_evaluated(ground_truth, results, image_ids)
    matched = list(evaluator.evalImgs)
    scores = []
    for fold in folds:
        left_out = {int(i) for i in fold}
        evaluator.evalImgs = [e if e is not None and e["image_id"] not in left_out else None for e in matched]
        scores.append(_coco_summary(evaluator))
    evaluator.evalImgs = matched
    return scores


def _load_coco(ground_truth: str | os.PathLike | dict[str, Any] | COCO) -> COCO:
    if isinstance(ground_truth, COCO):
        coco = ground_truth
    elif isinstance(ground_truth, dict):
        coco = COCO()
        coco.dataset = _complete(ground_truth)
        coco.createIndex()
    else:
        coco = COCO(os.fspath(ground_truth))
    coco.dataset.setdefault("info", {})  # loadRes copies these; hand-made dicts often lack them
    coco.dataset.setdefault("licenses", [])
    return coco


def _complete(dataset: dict[str, Any]) -> dict[str, Any]:
    """A copy of a hand-made COCO dict with the fields COCOeval reads: annotation id, area, iscrowd."""
    annotations = []
    for i, ann in enumerate(dataset.get("annotations", [])):
        w, h = ann["bbox"][2], ann["bbox"][3]
        annotations.append({"id": i + 1, "area": w * h, "iscrowd": 0, **ann})
    return {**dataset, "annotations": annotations}


def _empty_results(coco_gt: COCO) -> COCO:
    """A results object with no detections (loadRes fails on an empty list), so every AP scores 0."""
    empty = COCO()
    empty.dataset = {
        "info": {},
        "images": list(coco_gt.dataset["images"]),
        "categories": list(coco_gt.dataset["categories"]),
        "annotations": [],
    }
    empty.createIndex()
    return empty


# --- PASCAL VOC -------------------------------------------------------------------------------------------------


def voc_ap(
    recall: Sequence[float] | np.ndarray, precision: Sequence[float] | np.ndarray, use_07_metric: bool = True
) -> float:
    """Area under a precision/recall curve: the VOC2007 devkit's 11-point mean, or VOC2010+'s all-points area."""
    rec = np.asarray(recall, dtype=np.float64)
    prec = np.asarray(precision, dtype=np.float64)
    if use_07_metric:
        ap = 0.0
        for t in np.arange(0.0, 1.1, 0.1):  # the devkit's thresholds, 0.30000000000000004 included
            reached = rec >= t
            ap += (float(prec[reached].max()) if reached.any() else 0.0) / 11.0
        return ap
    mrec = np.concatenate([[0.0], rec, [1.0]])
    mpre = np.concatenate([[0.0], prec, [0.0]])
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]  # precision made monotone: the best at any higher recall
    steps = np.flatnonzero(mrec[1:] != mrec[:-1])
    return float(np.sum((mrec[steps + 1] - mrec[steps]) * mpre[steps + 1]))


def voc_metrics(
    detections: Sequence[dict[str, torch.Tensor]],
    ground_truths: Sequence[dict[str, Any]],
    class_names: Sequence[str],
    iou_threshold: float = 0.5,
    use_07_metric: bool = True,
) -> dict[str, Any]:
    """VOC mean AP over classes (the key says the threshold: `map50` at 0.5) and `per_class` {name: AP}.

    `detections[i]` and `ground_truths[i]` belong to the same image; matching follows the devkit (module doc).
    """
    if len(detections) != len(ground_truths):
        raise ValueError(f"{len(detections)} detections for {len(ground_truths)} ground truths; give one per image")
    num_classes = len(class_names)
    scores: list[list[np.ndarray]] = [[] for _ in range(num_classes)]
    best_iou: list[list[np.ndarray]] = [[] for _ in range(num_classes)]
    best_gt: list[list[np.ndarray]] = [[] for _ in range(num_classes)]  # index into the class's gt over all images
    difficult: list[list[np.ndarray]] = [[] for _ in range(num_classes)]
    num_gt = [0] * num_classes
    for det, gt in zip(detections, ground_truths, strict=True):
        gt_boxes = gt["boxes"].detach().cpu().double().numpy().reshape(-1, 4)
        gt_labels = _labels(gt["labels"], num_classes, "ground-truth").numpy()
        gt_difficult = _difficult(gt, len(gt_labels)).numpy()
        det_boxes = det["boxes"].detach().cpu().double().numpy().reshape(-1, 4)
        det_labels = _labels(det["labels"], num_classes, "detection").numpy()
        det_scores = det["scores"].detach().cpu().double().numpy().reshape(-1)
        for label in np.unique(np.concatenate([gt_labels, det_labels])):
            c = int(label) - 1
            in_gt, in_det = gt_labels == label, det_labels == label
            boxes = gt_boxes[in_gt]
            if in_det.any():
                if len(boxes):
                    iou = _box_iou(det_boxes[in_det], boxes)  # (D, G)
                    j = iou.argmax(axis=1)  # first of equals, like the devkit's np.argmax
                    best_iou[c].append(iou[np.arange(len(j)), j])
                    best_gt[c].append(j + num_gt[c])
                else:
                    best_iou[c].append(np.full(int(in_det.sum()), -np.inf))
                    best_gt[c].append(np.zeros(int(in_det.sum()), dtype=np.int64))
                scores[c].append(det_scores[in_det])
            difficult[c].append(gt_difficult[in_gt])
            num_gt[c] += len(boxes)

    per_class = {}
    for c, name in enumerate(class_names):
        hard = np.concatenate(difficult[c]) if difficult[c] else np.zeros(0, dtype=bool)
        positives = int((~hard).sum())
        if positives == 0:
            per_class[name] = math.nan
            continue
        if not scores[c]:
            per_class[name] = 0.0
            continue
        order = np.argsort(-np.concatenate(scores[c]), kind="stable")
        ious, gts = np.concatenate(best_iou[c])[order], np.concatenate(best_gt[c])[order]
        tp, fp = np.zeros(len(order)), np.zeros(len(order))
        matched = np.zeros(len(hard), dtype=bool)
        for d, (iou, g) in enumerate(zip(ious.tolist(), gts.tolist(), strict=True)):
            if not iou > iou_threshold:  # strictly greater, as the devkit; NaN (degenerate boxes) misses
                fp[d] = 1
            elif hard[g]:
                continue  # ignored: neither a hit nor a false alarm
            elif matched[g]:
                fp[d] = 1
            else:
                tp[d], matched[g] = 1, True
        tp, fp = np.cumsum(tp), np.cumsum(fp)
        recall = tp / positives
        precision = tp / np.maximum(tp + fp, np.finfo(np.float64).eps)
        per_class[name] = voc_ap(recall, precision, use_07_metric)
    scored = [ap for ap in per_class.values() if not math.isnan(ap)]
    mean = sum(scored) / len(scored) if scored else math.nan
    return {f"map{round(iou_threshold * 100)}": mean, "per_class": per_class, "iou_threshold": iou_threshold}


def _box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(A, B) IoU of continuous xyxy boxes (A, 4) and (B, 4), in the devkit's order of operations."""
    iw = np.clip(np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0]), 0.0, None)
    ih = np.clip(np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1]), 0.0, None)
    inter = iw * ih
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    with np.errstate(divide="ignore", invalid="ignore"):
        return inter / (area_a[:, None] + area_b[None, :] - inter)


def _category_ids(class_names: Sequence[str], category_ids: Sequence[int] | None) -> list[int]:
    """The dataset's category id of each label 1..K: `category_ids`, by default the label itself."""
    ids = list(range(1, len(class_names) + 1)) if category_ids is None else list(category_ids)
    if len(ids) != len(class_names):
        raise ValueError(f"{len(ids)} category ids for {len(class_names)} class names; give one per class")
    return ids


def _labels(labels: torch.Tensor, num_classes: int, what: str) -> torch.Tensor:
    labels = labels.detach().cpu().long().reshape(-1)
    if len(labels) and (int(labels.min()) < 1 or int(labels.max()) > num_classes):
        raise ValueError(
            f"{what} labels must lie in 1..{num_classes} (0 is background); got {sorted(set(labels.tolist()))[:10]}"
        )
    return labels


def _difficult(record: dict[str, Any], n: int) -> torch.Tensor:
    flags = record.get("difficult")
    return torch.zeros(n, dtype=torch.bool) if flags is None else flags.detach().cpu().bool().reshape(-1)


# --- accumulation over an evaluation loop -----------------------------------------------------------------------


class DetectionEvaluator:
    """Collects detections and ground truths batch by batch, then scores them as COCO, VOC07 or VOC (all points).

    `category_ids[k - 1]` is the dataset's category id of label k (default k); `annotation_file` (COCO data)
    is the ground truth for "coco", else one is built from the collected records. An image id seen twice
    (a DistributedSampler pads by repeating images) is kept once.
    """

    def __init__(
        self,
        class_names: Sequence[str],
        category_ids: Sequence[int] | None = None,
        annotation_file: str | os.PathLike | None = None,
    ) -> None:
        self.class_names = list(class_names)
        self.category_ids = _category_ids(self.class_names, category_ids)
        self.annotation_file = annotation_file
        self.reset()

    def reset(self) -> None:
        self.image_ids: list[int] = []
        self.detections: list[dict[str, torch.Tensor]] = []
        self.ground_truths: list[dict[str, Any] | None] = []
        self._seen: set[int] = set()

    def __len__(self) -> int:
        return len(self.image_ids)

    def update(
        self,
        image_ids: Sequence[int] | torch.Tensor,
        detections: Sequence[dict[str, torch.Tensor]],
        ground_truths: Sequence[dict[str, Any]] | None = None,
    ) -> None:
        """Add one batch: model outputs (and ground-truth records, needed unless scoring COCO from its file)."""
        image_ids = [int(i) for i in image_ids]
        if len(detections) != len(image_ids) or (ground_truths is not None and len(ground_truths) != len(image_ids)):
            raise ValueError("image_ids, detections and ground_truths must have one entry per image")
        for k, image_id in enumerate(image_ids):
            if image_id in self._seen:
                continue
            self._seen.add(image_id)
            self.image_ids.append(image_id)
            self.detections.append({key: detections[k][key].detach().cpu() for key in ("boxes", "labels", "scores")})
            if ground_truths is None:
                self.ground_truths.append(None)
            else:
                gt = ground_truths[k]
                record = {key: gt[key].detach().cpu() for key in ("boxes", "labels", "difficult") if key in gt}
                record["image_id"] = image_id
                record["orig_size"] = gt.get("orig_size")
                self.ground_truths.append(record)

    def results(self) -> list[dict[str, Any]]:
        """Every collected detection in COCO results format (what `--save-predictions` writes)."""
        return coco_results(self.detections, self.image_ids, self.category_ids)

    def compute(self, metric: str = "coco", iou_threshold: float = 0.5) -> dict[str, Any]:
        """Scores of the collected images: `COCO_METRIC_NAMES` for "coco", `map50` and `per_class` for VOC."""
        return self.compute_leaving_out(metric, [()], iou_threshold)[0]

    def compute_leaving_out(
        self, metric: str, folds: Sequence[Sequence[int]], iou_threshold: float = 0.5
    ) -> list[dict[str, Any]]:
        """`compute` once per fold, that fold's image ids left out (a fold of none: every image)."""
        if metric not in METRICS:
            raise unknown_name("metric", metric, METRICS, METRICS)
        if not self.image_ids:
            raise ValueError("nothing to score: call update() with at least one image first")
        if metric == "coco" and self.annotation_file is not None:
            return coco_metrics_leaving_out(self.annotation_file, self.results(), folds, image_ids=self.image_ids)
        if any(gt is None for gt in self.ground_truths):
            raise ValueError(f"metric {metric!r} needs the ground truths: pass them to update()")
        if metric == "coco":
            ground_truth = coco_ground_truth(self.ground_truths, self.class_names, self.category_ids)
            return coco_metrics_leaving_out(ground_truth, self.results(), folds)
        scores = []
        for fold in folds:
            left_out = {int(i) for i in fold}
            kept = [k for k, image_id in enumerate(self.image_ids) if image_id not in left_out]
            scores.append(voc_metrics([self.detections[k] for k in kept], [self.ground_truths[k] for k in kept],
                                      self.class_names, iou_threshold=iou_threshold,
                                      use_07_metric=metric == "voc07"))  # fmt: skip
        return scores
