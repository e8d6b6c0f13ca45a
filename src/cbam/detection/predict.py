"""`cbam detect predict`: a checkpoint's detections drawn on images (PNG) and listed in detections.json."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torchvision import tv_tensors
from torchvision.io import write_png
from torchvision.utils import draw_bounding_boxes

from cbam.data.loading import IMAGE_ERRORS, DataError
from cbam.detection.data import read_image
from cbam.detection.task import eval_transforms, to_original
from cbam.engine.distributed import resolve_device
from cbam.errors import CheckpointError, OutputError
from cbam.outputs import atomic_write, check_writable_folder
from cbam.runs import LoadedModel, load_model


@dataclass(frozen=True)
class Evaluation:
    """A detector scored on a split: its metrics, the evaluator holding every detection, and what was read."""

    metrics: dict[str, Any]
    evaluator: Any
    metric: str
    images: int
    skipped: int
    ground_truth: str
    config: Any


def evaluate_checkpoint(
    path: Path,
    *,
    data: str | None = None,
    split: str | None = None,
    metric: str | None = None,
    batch_size: int = 8,
    workers: int | None = None,
    device: str = "auto",
) -> Evaluation | None:
    """A saved detector scored on `split` of `data` (default: its own validation data and metric), across every
    process of a torchrun; None on all but the main process."""
    from cbam.data.loading import default_workers
    from cbam.detection.data import collate_detection_skipping, open_detection_data
    from cbam.detection.task import collect_detections, score
    from cbam.engine.batches import SkipLog, eval_loader
    from cbam.engine.distributed import init_distributed

    dist = init_distributed(device)
    loaded = load_model(Path(path), dist.device, task="detection")
    config = loaded.config
    data, split = data or config.data, split or config.val_split
    dataset = open_detection_data(data, split, eval_transforms(config), config.seed)
    if list(dataset.class_names) != loaded.classes:
        raise CheckpointError(
            f"the checkpoint detects {len(loaded.classes)} classes ({', '.join(loaded.classes[:5])}, ...); "
            f"{data} has {len(dataset.class_names)} ({', '.join(dataset.class_names[:5])}, ...)"
        )
    metric = metric or config.metric
    skips = SkipLog()
    loader = eval_loader(dataset, batch_size, default_workers() if workers is None else workers,
                         collate_detection_skipping, dist)  # fmt: skip
    found = collect_detections(loaded.model, loader, dist, skips)
    if not dist.is_main:
        return None
    metrics, evaluator = score(found, dataset, metric, loaded.classes, loaded.metadata["category_ids"])
    ground_truth = str(dataset.annotation_file) if dataset.annotation_file else f"{data} ({split})"
    return Evaluation(metrics, evaluator, metric, len(found), skips.count, ground_truth, config)


@torch.no_grad()
def detect(loaded: LoadedModel, images: list[Tensor], device: torch.device | str = "cpu") -> list[dict[str, Tensor]]:
    """Detections of a loaded detector for uint8 or [0, 1] float (3, H, W) images, in each image's own pixels."""
    transform = eval_transforms(loaded.config)
    inputs, targets = [], []
    for image in images:
        prepared = transform(tv_tensors.Image(image))
        inputs.append(prepared.as_subclass(Tensor).to(device))
        targets.append({"orig_size": tuple(image.shape[-2:])})
    return to_original(loaded.model(inputs), inputs, targets)


def _check_outputs(images: list[Path], output: Path, force: bool) -> None:
    """Refuse before any work: an output that is a file, two images that would be drawn to one name, or files
    of an earlier prediction unless `force`."""
    check_writable_folder(output)
    stems = [Path(p).stem for p in images]
    repeated = sorted({s for s in stems if stems.count(s) > 1})
    if repeated:
        raise DataError(f"images with the same name would overwrite each other in {output}: {', '.join(repeated)}")
    existing = [str(f) for f in [*(output / f"{s}.png" for s in stems), output / "detections.json"] if f.exists()]
    if existing and not force:
        raise OutputError(f"{output} already holds {', '.join(existing[:3])}; pass --force to replace them")


def predict_files(
    checkpoint: Path, images: list[Path], output: Path, *, score_threshold: float = 0.5, device: str = "auto",
    force: bool = False,
) -> list[Path]:  # fmt: skip
    """Detect on each image, draw the boxes scoring at least `score_threshold` with label and score, and write
    `output/<name>.png` per image and `output/detections.json` (all of them, in the image's pixels); files of an
    earlier prediction are replaced only with `force`."""
    missing = [str(p) for p in images if not Path(p).is_file()]
    if missing:
        raise DataError(f"no such image file: {', '.join(missing)}")
    _check_outputs(images, output, force)
    target = resolve_device(device)
    loaded = load_model(checkpoint, target, task="detection")
    listing, written = [], []
    for path in images:
        try:
            image = read_image(Path(path))
        except IMAGE_ERRORS as err:
            raise DataError(f"{path} is not a readable image ({type(err).__name__}: {err})") from None
        found = detect(loaded, [image], target)[0]
        keep = found["scores"] >= score_threshold
        boxes, labels, scores = found["boxes"][keep], found["labels"][keep], found["scores"][keep]
        captions = [f"{loaded.classes[int(k) - 1]} {s:.2f}" for k, s in zip(labels, scores, strict=True)]
        drawn = draw_bounding_boxes(image.as_subclass(torch.Tensor), boxes, captions, colors="red", width=2)
        destination = output / f"{Path(path).stem}.png"
        atomic_write(destination, lambda tmp, drawn=drawn: write_png(drawn, str(tmp)))
        written.append(destination)
        listing.append(
            {
                "image": str(path),
                "drawn": str(destination),
                "detections": [
                    {"box": [round(float(v), 2) for v in box], "label": loaded.classes[int(k) - 1], "score": float(s)}
                    for box, k, s in zip(found["boxes"], found["labels"], found["scores"], strict=True)
                ],
            }
        )
    atomic_write(output / "detections.json", lambda tmp: tmp.write_text(json.dumps(listing, indent=2)))
    return written
