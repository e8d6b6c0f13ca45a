"""cluttered-digits: determinism, leak-free splits, agreeing folders and COCO files, exact boxes, the cache."""

import hashlib
import json
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from sklearn.datasets import load_digits
from torchvision.datasets import ImageFolder

import cbam.data.cluttered_digits as cd
from cbam.data.cluttered_digits import (
    CLASS_NAMES,
    SPLITS,
    ClutteredDigitsConfig,
    default_cache_dir,
    ensure_cluttered_digits,
    generate_cluttered_digits,
    ink_box,
    render_sample,
)

DEFAULT = ClutteredDigitsConfig()
SMALL = ClutteredDigitsConfig(placements=(1, 1, 1))
DIGITS = load_digits()


@pytest.fixture(scope="module")
def default_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate_cluttered_digits(tmp_path_factory.mktemp("cluttered") / "default")


@pytest.fixture
def few_digits(monkeypatch: pytest.MonkeyPatch) -> None:
    """Generate from the first 150 source digits only, so each generation takes a fraction of a second."""
    monkeypatch.setattr(cd, "_load_sources", lambda: (DIGITS.images[:150], DIGITS.target[:150]))


def _coco(root: Path, split: str) -> dict:
    return json.loads((root / "annotations" / f"{split}.json").read_text())


def _hashes(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in root.rglob("*") if p.is_file()
    }


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"seed": -1}, "seed must be"),
        ({"canvas": 32}, "canvas must be an integer above the largest digit_size 32"),
        ({"digit_size": (30, 20)}, "digit_size must be two integers"),
        ({"digit_size": (4, 20)}, "8 <= low"),
        ({"clutter": (-1, 3)}, "clutter must be"),
        ({"fragment_size": (6, 24)}, "must not exceed the smallest digit_size 20"),
        ({"split_fractions": (0.8, 0.15, 0.15)}, "summing to 1"),
        ({"split_fractions": (1.0, 0.0, 0.0)}, "three positive numbers"),
        ({"placements": (1, 0, 1)}, "placements must be three integers >= 1"),
    ],
)
def test_invalid_config_raises_a_readable_error(change: dict, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        ClutteredDigitsConfig(**change)


def test_default_layout_counts_and_meta(default_root: Path) -> None:
    meta = json.loads((default_root / "meta.json").read_text())
    assert meta["format_version"] == cd.FORMAT_VERSION and meta["config"] == DEFAULT.as_dict()
    for split, placements in zip(SPLITS, DEFAULT.placements, strict=True):
        assert sorted(p.name for p in (default_root / split).iterdir()) == list(CLASS_NAMES)
        assert meta["counts"][split]["images"] == meta["counts"][split]["sources"] * placements
    assert sum(c["sources"] for c in meta["counts"].values()) == len(DIGITS.images)


def test_images_are_rgb_uint8_of_canvas_size(default_root: Path) -> None:
    paths = sorted(default_root.glob("*/*/*.png"))
    assert len(paths) == sum(len(_coco(default_root, s)["images"]) for s in SPLITS)
    for path in paths:
        with Image.open(path) as image:
            assert (image.mode, image.size) == ("RGB", (DEFAULT.canvas, DEFAULT.canvas))
    pixels = np.asarray(Image.open(paths[0]))
    assert pixels.dtype == np.uint8 and pixels.shape == (DEFAULT.canvas, DEFAULT.canvas, 3)


def test_splits_partition_the_source_digits(default_root: Path) -> None:
    sources = {split: Counter(im["source_index"] for im in _coco(default_root, split)["images"]) for split in SPLITS}
    for split, placements in zip(SPLITS, DEFAULT.placements, strict=True):
        assert set(sources[split].values()) == {placements}
    train, val, test = (set(sources[split]) for split in SPLITS)
    assert not (train & val or train & test or val & test)
    assert train | val | test == set(range(len(DIGITS.images)))
    for digit in range(10):
        in_class = int(np.sum(DIGITS.target == digit))
        for split, fraction in zip(SPLITS, DEFAULT.split_fractions, strict=True):
            count = sum(1 for s in sources[split] if DIGITS.target[s] == digit)
            assert abs(count - fraction * in_class) <= 1.5


def test_folders_and_annotations_list_the_same_images(default_root: Path) -> None:
    for split in SPLITS:
        coco = _coco(default_root, split)
        assert coco["categories"] == [{"id": d + 1, "name": str(d), "supercategory": "digit"} for d in range(10)]
        on_disk = {str(p.relative_to(default_root / split)) for p in (default_root / split).glob("*/*.png")}
        assert on_disk == {im["file_name"] for im in coco["images"]}
        assert [a["image_id"] for a in coco["annotations"]] == [im["id"] for im in coco["images"]]
        for image, annotation in zip(coco["images"], coco["annotations"], strict=True):
            digit = annotation["category_id"] - 1
            assert image["file_name"].split("/")[0] == CLASS_NAMES[digit]
            assert DIGITS.target[image["source_index"]] == digit


def test_imagefolder_labels_equal_digit_values(default_root: Path) -> None:
    dataset = ImageFolder(str(default_root / "val"))
    assert dataset.class_to_idx == {str(d): d for d in range(10)}
    coco = _coco(default_root, "val")
    labels = {im["file_name"]: a["category_id"] - 1 for im, a in zip(coco["images"], coco["annotations"], strict=True)}
    assert {str(Path(p).relative_to(default_root / "val")): t for p, t in dataset.samples} == labels


def test_boxes_lie_inside_the_canvas(default_root: Path) -> None:
    largest = DEFAULT.digit_size[1]
    for split in SPLITS:
        for annotation in _coco(default_root, split)["annotations"]:
            x, y, w, h = annotation["bbox"]
            assert 0 <= x <= x + w <= DEFAULT.canvas and 0 <= y <= y + h <= DEFAULT.canvas
            assert 1 <= w <= largest and 1 <= h <= largest
            assert annotation["area"] == w * h and annotation["iscrowd"] == 0


def test_ink_box_is_the_tight_box_of_visible_ink() -> None:
    ink = np.zeros((12, 12), np.float32)
    ink[2:5, 3:8] = 1.0
    ink[10, 10] = 0.1  # too faint to count
    assert ink_box(ink, x=20, y=30) == (23, 32, 5, 3)


@pytest.mark.parametrize("clutter", [(0, 0), (4, 8)])
def test_box_is_exactly_a_solid_digit_drawn_on_top(clutter: tuple[int, int]) -> None:
    config = ClutteredDigitsConfig(clutter=clutter)
    solid = np.full((8, 8), 16.0)
    for seed in range(10):
        image, (x, y, w, h) = render_sample(solid, DIGITS.images, np.random.default_rng(seed), config)
        assert w == h and config.digit_size[0] <= w <= config.digit_size[1]
        inside = image[y : y + h, x : x + w].reshape(-1, 3).astype(int)
        assert np.ptp(inside, axis=0).max() <= 1  # one colour: nothing is drawn over the digit
        grown = image[max(y - 1, 0) : y + h + 1, max(x - 1, 0) : x + w + 1].astype(int)
        ring = np.ones(grown.shape[:2], bool)
        ring[y - max(y - 1, 0) : y - max(y - 1, 0) + h, x - max(x - 1, 0) : x - max(x - 1, 0) + w] = False
        assert np.abs(grown[ring] - inside[0]).max(axis=1).min() > 8  # the digit's colour stops at the box


def test_generation_is_deterministic(few_digits: None, tmp_path: Path) -> None:
    first = _hashes(generate_cluttered_digits(tmp_path / "a", SMALL))
    assert _hashes(generate_cluttered_digits(tmp_path / "b", SMALL)) == first
    other = _hashes(generate_cluttered_digits(tmp_path / "c", ClutteredDigitsConfig(seed=1, placements=(1, 1, 1))))
    png = {name: digest for name, digest in first.items() if name.endswith(".png")}
    assert not set(png.values()) & {d for n, d in other.items() if n.endswith(".png")}


def test_generate_needs_an_absent_or_empty_folder(few_digits: None, tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    assert (generate_cluttered_digits(tmp_path / "empty", SMALL) / "meta.json").is_file()
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not empty"):
        generate_cluttered_digits(tmp_path / "taken", SMALL)


def test_interrupted_generation_leaves_nothing_behind(
    few_digits: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = iter(range(5))
    render = cd.render_sample

    def render_then_die(*args: object) -> tuple:
        if next(calls, None) is None:
            raise KeyboardInterrupt
        return render(*args)

    monkeypatch.setattr(cd, "render_sample", render_then_die)
    with pytest.raises(KeyboardInterrupt):
        generate_cluttered_digits(tmp_path / "data", SMALL)
    assert list(tmp_path.iterdir()) == []


def test_ensure_reuses_a_matching_cache_and_regenerates_for_another_config(
    few_digits: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = ensure_cluttered_digits(SMALL, tmp_path)
    assert root == tmp_path / SMALL.folder_name()
    other_config = ClutteredDigitsConfig(seed=1, placements=(1, 1, 1))
    other = ensure_cluttered_digits(other_config, tmp_path)
    assert other != root and json.loads((other / "meta.json").read_text())["config"] == other_config.as_dict()
    before = _hashes(root)

    def must_not_run(*args: object) -> Path:
        raise AssertionError("the cache should have been reused")

    monkeypatch.setattr(cd, "generate_cluttered_digits", must_not_run)
    assert ensure_cluttered_digits(SMALL, tmp_path) == root and _hashes(root) == before
    assert ensure_cluttered_digits(other_config, tmp_path) == other


def test_a_leftover_partial_folder_is_not_a_cache(few_digits: None, tmp_path: Path) -> None:
    partial = tmp_path / f".{SMALL.folder_name()}.1234-deadbeef.partial"
    (partial / "train" / "3").mkdir(parents=True)
    (partial / "meta.json").write_text(json.dumps({"format_version": cd.FORMAT_VERSION, "config": SMALL.as_dict()}))
    root = ensure_cluttered_digits(SMALL, tmp_path)
    assert root == tmp_path / SMALL.folder_name() and len(list(root.glob("*/*/*.png"))) > 100


def test_ensure_uses_the_winner_of_a_race(few_digits: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    publish = cd._publish

    def lose_the_race(staging: Path, root: Path) -> None:
        monkeypatch.setattr(cd, "_publish", publish)
        generate_cluttered_digits(root, SMALL)  # another process finishes first
        publish(staging, root)

    monkeypatch.setattr(cd, "_publish", lose_the_race)
    root = ensure_cluttered_digits(SMALL, tmp_path)
    assert json.loads((root / "meta.json").read_text())["config"] == SMALL.as_dict()
    assert [p.name for p in tmp_path.iterdir()] == [SMALL.folder_name()]  # the loser's partial folder is gone


def test_ensure_refuses_a_foreign_folder_under_the_cache_name(tmp_path: Path) -> None:
    foreign = tmp_path / SMALL.folder_name()
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="delete it to regenerate"):
        ensure_cluttered_digits(SMALL, tmp_path)


def test_cache_location_and_folder_name(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("CBAM_CACHE", str(tmp_path))
    assert default_cache_dir() == tmp_path
    monkeypatch.delenv("CBAM_CACHE")
    assert default_cache_dir() == Path.home() / ".cache" / "cbam"
    assert re.fullmatch(r"cluttered-digits-v1-s0-c64-[0-9a-f]{10}", DEFAULT.folder_name())
    assert ClutteredDigitsConfig().folder_name() == DEFAULT.folder_name() != SMALL.folder_name()


def test_the_validation_split_resolves_a_tenth_of_a_point_and_groups_renderings_by_source_digit(default_root):
    from cbam.classification.predictions import image_groups

    meta = json.loads((default_root / "meta.json").read_text())["counts"]["val"]
    assert meta["images"] >= 1000, "one validation image moves the error by at most 0.1 points"
    files = [i["file_name"] for i in _coco(default_root, "val")["images"]]
    groups = image_groups(str(default_root), "val", files)
    assert len(set(groups.tolist())) == meta["sources"] and len(groups) == meta["images"]
    assert np.bincount(groups).tolist() == [DEFAULT.placements[1]] * meta["sources"], "each digit's renderings"
