"""Cluttered digits: scikit-learn's handwritten 8x8 digits placed at random on cluttered RGB canvases.

The embedded default dataset, in the spirit of cluttered-MNIST: the digit is small, anywhere on the canvas and
surrounded by fragments of other digits, so a classifier gains from attending to *where* it is. Nothing is
downloaded; `sklearn.datasets.load_digits` ships the 1,797 source images. The tree is written once, atomically:

    <root>/train/<digit>/<image_id>.png, <root>/val/..., <root>/test/...   ImageFolder: folder "3" is label 3
    <root>/annotations/{train,val,test}.json                               COCO boxes, category_id = digit + 1
    <root>/meta.json                                                       format version, config, counts

Category ids start at 1 because COCO tools treat 0 as background. The same config gives byte-identical files
under the same numpy and Pillow versions.
"""

from __future__ import annotations

import colorsys
import hashlib
import json
import os
import shutil
import uuid
from collections.abc import Sequence
from contextlib import suppress
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from cbam.errors import ConfigError
from cbam.extras import import_optional

DATASET_NAME = "cluttered-digits"
FORMAT_VERSION = 1
SPLITS: tuple[str, ...] = ("train", "val", "test")
CLASS_NAMES: tuple[str, ...] = tuple(str(d) for d in range(10))

INK_FLOOR, INK_FULL = 0.2, 0.6  # contrast stretch of the upsampled ink: faint smudges vanish, strokes become solid
INK_THRESHOLD = 0.2  # upsampled ink above this is visible: it defines the box and where fragments are cut
NOISE_AMPLITUDE = 0.04  # per-pixel background noise, uniform in +-this, as a fraction of full scale
MAX_OVERLAP = 0.5  # a fragment may lie under the digit's square by at most this fraction of its own area
_PLACEMENT_TRIES = 10

Box = tuple[int, int, int, int]  # COCO [x, y, width, height] in canvas pixels


def _is_tuple_of(value: object, length: int, kind: type | tuple[type, ...]) -> bool:
    return isinstance(value, tuple | list) and len(value) == length and all(isinstance(v, kind) for v in value)


def _check_range(name: str, value: tuple[int, int], lowest: int) -> None:
    if not (_is_tuple_of(value, 2, int) and lowest <= value[0] <= value[1]):
        raise ConfigError(f"{name} must be two integers (low, high) with {lowest} <= low <= high, got {value!r}")


@dataclass(frozen=True)
class ClutteredDigitsConfig:
    """How the dataset is rendered. Ranges are inclusive (low, high); the triples are (train, val, test).

    Every field is part of the cache folder's name, so changing any of them gives a new dataset.
    """

    seed: int = 0
    canvas: int = 64
    digit_size: tuple[int, int] = (20, 32)
    clutter: tuple[int, int] = (4, 8)
    fragment_size: tuple[int, int] = (6, 12)
    split_fractions: tuple[float, float, float] = (0.7, 0.15, 0.15)
    placements: tuple[int, int, int] = (5, 4, 1)  # 4 renderings per validation digit: one image is < 0.1 points

    def __post_init__(self) -> None:
        if not isinstance(self.seed, int) or self.seed < 0:
            raise ConfigError(f"seed must be a non-negative integer, got {self.seed!r}")
        _check_range("digit_size", self.digit_size, lowest=8)
        if not isinstance(self.canvas, int) or self.canvas <= self.digit_size[1]:
            raise ConfigError(
                f"canvas must be an integer above the largest digit_size {self.digit_size[1]}, got {self.canvas!r}"
            )
        _check_range("clutter", self.clutter, lowest=0)
        _check_range("fragment_size", self.fragment_size, lowest=1)
        if self.fragment_size[1] > self.digit_size[0]:
            raise ConfigError(
                f"fragment_size {self.fragment_size} must not exceed the smallest digit_size "
                f"{self.digit_size[0]}: fragments are crops of upsampled digits"
            )
        fractions = self.split_fractions
        if not (_is_tuple_of(fractions, 3, (int, float)) and min(fractions) > 0 and abs(sum(fractions) - 1) < 1e-9):
            raise ConfigError(
                f"split_fractions must be three positive numbers (train, val, test) summing to 1, got {fractions!r}"
            )
        placements = self.placements
        if not (_is_tuple_of(placements, 3, int) and min(placements) >= 1):
            raise ConfigError(f"placements must be three integers >= 1 (train, val, test), got {placements!r}")

    def as_dict(self) -> dict[str, Any]:
        """The fields as plain JSON values (tuples become lists), as stored in meta.json."""
        return json.loads(json.dumps(asdict(self)))

    def folder_name(self) -> str:
        """The cache folder's name: `cluttered-digits-v1-s0-c64-<hash of every field>`."""
        digest = hashlib.sha256(json.dumps(self.as_dict(), sort_keys=True).encode()).hexdigest()[:10]
        return f"{DATASET_NAME}-v{FORMAT_VERSION}-s{self.seed}-c{self.canvas}-{digest}"


def upsample(digit: np.ndarray, side: int) -> np.ndarray:
    """A (side, side) ink image in 0..1 from an 8x8 digit in 0..16: bilinear resize, then a contrast stretch."""
    grey = Image.fromarray(np.asarray(digit, dtype=np.float32) / 16.0)
    smooth = np.asarray(grey.resize((side, side), Image.Resampling.BILINEAR))
    return np.clip((smooth - INK_FLOOR) / (INK_FULL - INK_FLOOR), 0.0, 1.0)


def ink_box(ink: np.ndarray, x: int, y: int) -> Box:
    """The COCO box of the visible ink (above INK_THRESHOLD) of an ink image drawn with its top-left at (x, y)."""
    visible = ink > INK_THRESHOLD
    rows, cols = np.flatnonzero(visible.any(axis=1)), np.flatnonzero(visible.any(axis=0))
    if rows.size == 0:
        raise ValueError("the ink image has no visible ink")
    return x + int(cols[0]), y + int(rows[0]), int(cols[-1] - cols[0]) + 1, int(rows[-1] - rows[0]) + 1


def _bright_colour(rng: np.random.Generator) -> np.ndarray:
    """A random saturated, bright RGB colour in 0..1; digits and fragments share it, so colour is no cue."""
    return np.array(colorsys.hsv_to_rgb(rng.uniform(), rng.uniform(0.5, 1.0), rng.uniform(0.8, 1.0)), np.float32)


def _paint(canvas: np.ndarray, ink: np.ndarray, colour: np.ndarray, x: int, y: int) -> None:
    """Blend `colour` into `canvas` (H, W, 3) in place with `ink` as the alpha, top-left at (x, y)."""
    height, width = ink.shape
    region = canvas[y : y + height, x : x + width]
    region += ink[..., None] * (colour - region)


def _fragment(source: np.ndarray, rng: np.random.Generator, config: ClutteredDigitsConfig) -> np.ndarray:
    """A square crop of `source` upsampled to a random digit size, centred on a random stroke pixel."""
    side = int(rng.integers(*config.digit_size, endpoint=True))
    size = int(rng.integers(*config.fragment_size, endpoint=True))
    ink = upsample(source, side)
    rows, cols = np.nonzero(ink > INK_THRESHOLD)
    pick = rng.integers(rows.size)
    top = int(np.clip(rows[pick] - size // 2, 0, side - size))
    left = int(np.clip(cols[pick] - size // 2, 0, side - size))
    return ink[top : top + size, left : left + size]


def _fragment_position(rng: np.random.Generator, size: int, canvas: int, digit_square: Box) -> tuple[int, int]:
    """A random top-left for a fragment, redrawn a few times while it hides too much under the digit's square."""
    dx, dy, dw, dh = digit_square
    for _ in range(_PLACEMENT_TRIES):
        fx, fy = (int(v) for v in rng.integers(0, canvas - size, size=2, endpoint=True))
        overlap_w = max(0, min(fx + size, dx + dw) - max(fx, dx))
        overlap_h = max(0, min(fy + size, dy + dh) - max(fy, dy))
        if overlap_w * overlap_h <= MAX_OVERLAP * size * size:
            break
    return fx, fy


def render_sample(
    digit: np.ndarray, others: np.ndarray, rng: np.random.Generator, config: ClutteredDigitsConfig
) -> tuple[np.ndarray, Box]:
    """One (canvas, canvas, 3) uint8 image of the 8x8 `digit` and its COCO box; clutter is cut from `others` (N, 8, 8).

    Fragments are drawn first, so the digit lies on top of them and stays readable.
    """
    size = config.canvas
    background = rng.uniform(0.0, 0.25, size=3)
    canvas = (background + rng.uniform(-NOISE_AMPLITUDE, NOISE_AMPLITUDE, size=(size, size, 3))).astype(np.float32)
    side = int(rng.integers(*config.digit_size, endpoint=True))
    x, y = (int(v) for v in rng.integers(0, size - side, size=2, endpoint=True))
    for _ in range(int(rng.integers(*config.clutter, endpoint=True))):
        piece = _fragment(others[rng.integers(len(others))], rng, config)
        fx, fy = _fragment_position(rng, piece.shape[0], size, (x, y, side, side))
        _paint(canvas, piece, _bright_colour(rng), fx, fy)
    ink = upsample(digit, side)
    _paint(canvas, ink, _bright_colour(rng), x, y)
    image = np.round(np.clip(canvas, 0.0, 1.0) * 255.0).astype(np.uint8)
    return image, ink_box(ink, x, y)


def _load_sources() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's bundled digits: images (1797, 8, 8) in 0..16 and labels (1797,)."""
    datasets = import_optional("sklearn.datasets", "digits", "cluttered-digits")  # takes seconds: only here

    digits = datasets.load_digits()
    return digits.images, digits.target


def _split_sources(labels: np.ndarray, fractions: Sequence[float], rng: np.random.Generator) -> list[np.ndarray]:
    """Sorted source indices per split, stratified by class: every source image lands in exactly one split."""
    parts: list[list[np.ndarray]] = [[] for _ in SPLITS]
    for digit in range(len(CLASS_NAMES)):
        members = rng.permutation(np.flatnonzero(labels == digit))
        n_train, n_val = round(fractions[0] * members.size), round(fractions[1] * members.size)
        for part, chunk in zip(parts, np.split(members, [n_train, n_train + n_val]), strict=True):
            if chunk.size == 0:
                raise ConfigError(f"split_fractions {tuple(fractions)} leave a split without any digit {digit}")
            part.append(chunk)
    return [np.sort(np.concatenate(part)) for part in parts]


def _categories() -> list[dict[str, Any]]:
    return [{"id": digit + 1, "name": name, "supercategory": "digit"} for digit, name in enumerate(CLASS_NAMES)]


def _coco_entries(
    image_id: int, file_name: str, source: int, digit: int, box: Box, canvas: int
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The COCO image record (with its `source_index` into load_digits) and its one box annotation."""
    image = {"id": image_id, "file_name": file_name, "width": canvas, "height": canvas, "source_index": source}
    annotation = {
        "id": image_id,
        "image_id": image_id,
        "category_id": digit + 1,
        "bbox": list(box),
        "area": box[2] * box[3],
        "iscrowd": 0,
    }
    return image, annotation


def _write_json(path: Path, content: dict[str, Any], indent: int | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(content, indent=indent) + "\n")


def _write_split(
    folder: Path,
    split: str,
    sources: np.ndarray,
    data: tuple[np.ndarray, np.ndarray],
    rng: np.random.Generator,
    config: ClutteredDigitsConfig,
) -> int:
    """Render every placement of every source digit of one split into `folder`; returns the image count."""
    images, labels = data
    placements = config.placements[SPLITS.index(split)]
    for name in CLASS_NAMES:
        (folder / split / name).mkdir(parents=True)
    pool = images[sources]
    records: list[dict[str, Any]] = []
    annotations: list[dict[str, Any]] = []
    for position, source in enumerate(sources):
        others = np.delete(pool, position, axis=0)  # clutter from the same split only, never the digit itself
        digit = int(labels[source])
        for _ in range(placements):
            image_id = len(records) + 1
            image, box = render_sample(images[source], others, rng, config)
            file_name = f"{CLASS_NAMES[digit]}/{image_id:06d}.png"
            Image.fromarray(image).save(folder / split / file_name)
            record, annotation = _coco_entries(image_id, file_name, int(source), digit, box, config.canvas)
            records.append(record)
            annotations.append(annotation)
    info = {"description": f"{DATASET_NAME} {split} split", "version": str(FORMAT_VERSION)}
    coco = {"info": info, "licenses": [], "images": records, "annotations": annotations, "categories": _categories()}
    _write_json(folder / "annotations" / f"{split}.json", coco)
    return len(records)


def _publish(staging: Path, root: Path) -> None:
    """Move the finished tree to `root` in one rename, so `root` is either absent or complete."""
    with suppress(OSError):
        root.rmdir()  # only an empty placeholder goes: rmdir never removes content
    try:
        os.replace(staging, root)
    except OSError as err:
        if root.exists():
            raise FileExistsError(f"{root} appeared while the dataset was being generated") from err
        raise


def generate_cluttered_digits(root: Path, config: ClutteredDigitsConfig = ClutteredDigitsConfig()) -> Path:
    """Write the dataset for `config` to exactly `root` (absent or empty) and return it.

    The tree is built in a hidden sibling folder and renamed into place, so an interrupted run leaves no `root`.
    """
    root = Path(root)
    if root.exists() and (not root.is_dir() or any(root.iterdir())):
        raise FileExistsError(f"{root} already exists and is not empty; choose another folder or delete it")
    data = _load_sources()
    seeds = np.random.SeedSequence(config.seed).spawn(1 + len(SPLITS))  # split streams stay independent
    splits = _split_sources(data[1], config.split_fractions, np.random.default_rng(seeds[0]))
    root.parent.mkdir(parents=True, exist_ok=True)
    staging = root.parent / f".{root.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.partial"
    staging.mkdir()
    try:
        counts = {}
        for split, sources, seed in zip(SPLITS, splits, seeds[1:], strict=True):
            images = _write_split(staging, split, sources, data, np.random.default_rng(seed), config)
            counts[split] = {"sources": int(sources.size), "images": images}
        meta = {
            "dataset": DATASET_NAME,
            "format_version": FORMAT_VERSION,
            "source": "sklearn.datasets.load_digits",
            "config": config.as_dict(),
            "class_names": list(CLASS_NAMES),
            "counts": counts,
        }
        _write_json(staging / "meta.json", meta, indent=2)
        _publish(staging, root)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return root


def default_cache_dir() -> Path:
    """Where generated datasets are kept: `$CBAM_CACHE` if set, else `~/.cache/cbam`."""
    return Path(os.environ.get("CBAM_CACHE") or Path.home() / ".cache" / "cbam").expanduser()


def _is_complete(root: Path, config: ClutteredDigitsConfig) -> bool:
    """True when `root` holds a finished dataset of this format version and config."""
    try:
        meta = json.loads((root / "meta.json").read_text())
    except (OSError, ValueError):
        return False
    if not isinstance(meta, dict):
        return False
    return meta.get("format_version") == FORMAT_VERSION and meta.get("config") == config.as_dict()


def ensure_cluttered_digits(
    config: ClutteredDigitsConfig = ClutteredDigitsConfig(), cache_dir: Path | None = None
) -> Path:
    """The dataset folder for `config` under `cache_dir` (default: `default_cache_dir()`), generated on first use.

    When two processes generate at once, the one that loses the final rename uses the winner's folder.
    """
    root = Path(cache_dir if cache_dir is not None else default_cache_dir()) / config.folder_name()
    if _is_complete(root, config):
        return root
    try:
        return generate_cluttered_digits(root, config)
    except FileExistsError as err:
        if _is_complete(root, config):
            return root
        raise FileExistsError(
            f"{root} exists but is not a finished dataset for this config; delete it to regenerate"
        ) from err
