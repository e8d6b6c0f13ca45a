"""A study folder: the questions of a survey and, kept server-side, which model each side shows.

    STUDY/study.json      questions, labels, image names and the left/right assignment (never served)
    STUDY/images/*.png    the full images and the regions, under random names (the only files served)
    STUDY/votes.sqlite    the votes (written by `cbam survey serve`)

Each question shows the full image, its ground-truth label, and for each model the region where its
Grad-CAM of that label is at least 0.6, the rest blacked out (the paper's Fig. 5).
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from cbam.data.loading import class_names, open_split
from cbam.data.transforms import eval_transform
from cbam.errors import UserError
from cbam.explain.cam import grad_cam
from cbam.explain.figure import Network, choose_images, load_networks
from cbam.explain.localize import DISPLAY_THRESHOLD

STUDY_FILE = "study.json"
IMAGES = "images"
FORMAT_VERSION = 1
MODELS = ("baseline", "cbam")
CHOICES = ("left", "right", "equal")
DISPLAY_SIDE = 224  # regions are enlarged by a whole factor to at least this side, pixels kept sharp


class StudyError(UserError):
    """A study folder that cannot be built or read."""


@dataclass(frozen=True)
class Question:
    """One question: the image shown, its label, the two regions and which model each side shows."""

    id: int
    label: str
    image: str
    left: str
    right: str
    left_model: str
    right_model: str
    index: int
    probs: dict[str, float]

    def preferred(self, choice: str) -> str:
        """The model a choice prefers: "baseline", "cbam", or "equal"."""
        return {"left": self.left_model, "right": self.right_model, "equal": "equal"}[choice]


@dataclass(frozen=True)
class Study:
    """A built study: its questions in the order respondents see them, and where they came from."""

    folder: Path
    questions: list[Question]
    source: dict[str, Any]

    def question(self, question_id: int) -> Question | None:
        """The question with this id, or None."""
        return next((q for q in self.questions if q.id == question_id), None)

    @property
    def images_dir(self) -> Path:
        return self.folder / IMAGES

    @property
    def votes_path(self) -> Path:
        return self.folder / "votes.sqlite"


def load_study(folder: Path) -> Study:
    """The study in `folder`; a missing or unreadable study.json raises StudyError naming it."""
    path = Path(folder) / STUDY_FILE
    if not path.is_file():
        raise StudyError(f"{folder} is not a study folder (no {STUDY_FILE}); build one with `cbam survey build`")
    try:
        content = json.loads(path.read_text())
        questions = [Question(**q) for q in content["questions"]]
    except (json.JSONDecodeError, KeyError, TypeError) as err:
        raise StudyError(f"{path} is not a readable study ({err})") from None
    if content.get("format") != FORMAT_VERSION:
        raise StudyError(f"{path} has format {content.get('format')!r}; this version reads {FORMAT_VERSION}")
    return Study(Path(folder), questions, content.get("source", {}))


def region(image: np.ndarray, cam: np.ndarray, threshold: float = DISPLAY_THRESHOLD) -> np.ndarray:
    """The image where the CAM is at least `threshold`, black elsewhere (HxWx3 uint8, CAM at the same HxW)."""
    return np.where((cam >= threshold)[..., None], image, 0).astype(np.uint8)


def _enlarge(array: np.ndarray) -> Image.Image:
    """The picture enlarged by the smallest whole factor that makes its short side at least DISPLAY_SIDE."""
    picture = Image.fromarray(array)
    factor = max(1, -(-DISPLAY_SIDE // min(picture.size)))
    return picture.resize((picture.width * factor, picture.height * factor), Image.NEAREST)


def _save_png(array: np.ndarray, folder: Path) -> str:
    """Save under a random name that says nothing about the content; returns the name."""
    name = f"{secrets.token_hex(8)}.png"
    _enlarge(array).save(folder / name, format="PNG")
    return name


def _question(
    networks: dict[str, Network], dataset: Any, names: list[str], index: int, question_id: int, images: Path,
    shuffle: secrets.SystemRandom,
) -> Question:  # fmt: skip
    """Grad-CAM of the ground-truth class for both models, their regions, and a random side for each."""
    image, label = dataset[index]
    rgb = image.convert("RGB")
    geometry = next(iter(networks.values()))
    resize, crop = eval_transform(geometry.image_size, geometry.resize).transforms[:2]
    shown = np.asarray(crop(resize(rgb)))
    regions, probs = {}, {}
    for model, network in networks.items():
        x = network.transform()(rgb).unsqueeze(0)
        cams, p = grad_cam(network.model, x, targets=[label])
        cam = np.asarray(Image.fromarray(cams[0].numpy()).resize(shown.shape[1::-1], Image.BILINEAR))
        regions[model] = region(shown, cam)
        probs[model] = round(float(p[0]), 4)
    left_model, right_model = shuffle.sample(MODELS, 2)
    return Question(
        id=question_id, label=names[label], image=_save_png(shown, images), left=_save_png(regions[left_model], images),
        right=_save_png(regions[right_model], images), left_model=left_model, right_model=right_model,
        index=index, probs=probs,
    )  # fmt: skip


def _check_output(output: Path) -> None:
    if output.exists() and (not output.is_dir() or any(output.iterdir())):
        raise StudyError(f"{output} exists and is not empty; a study is never overwritten (its votes would be lost)")


def build_study(
    baseline: Path, cbam: Path, output: Path, *, data: str | None = None, split: str = "val", questions: int = 50,
    seed: int = 0,
) -> Study:  # fmt: skip
    """Pick `questions` images of `split` that both checkpoints classify correctly (seeded), and write the study.

    The seed picks the images; the left/right shuffle and the file names come from the OS's random source,
    so that nobody can work out the assignment from the seed. The folder appears complete or not at all.
    """
    output = Path(output)
    _check_output(output)
    if questions < 1:
        raise StudyError(f"--questions must be at least 1, got {questions}")
    loaded, trained_on = load_networks([Path(baseline), Path(cbam)])
    data = data or trained_on
    if not data:
        raise StudyError("give --data: the checkpoints do not record their dataset")
    networks = dict(zip(MODELS, loaded, strict=True))
    dataset = open_split(data, split)
    names = class_names(dataset)
    chosen = choose_images(dataset, loaded, None, questions, seed, correct_only=True)
    if len(chosen) < questions:
        raise StudyError(
            f"only {len(chosen)} images of {data} ({split}) are classified correctly by both models; "
            f"ask for --questions {len(chosen)} or fewer"
        )
    output.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{output.name}.", dir=output.parent))
    try:
        (staging / IMAGES).mkdir()
        shuffle = secrets.SystemRandom()
        built = [
            _question(networks, dataset, names, index, k + 1, staging / IMAGES, shuffle)
            for k, index in enumerate(chosen)
        ]
        source = {
            "baseline": str(baseline), "cbam": str(cbam), "data": data, "split": split, "seed": seed,
            "threshold": DISPLAY_THRESHOLD, "method": "gradcam",
        }  # fmt: skip
        content = {"format": FORMAT_VERSION, "source": source, "questions": [asdict(q) for q in built]}
        (staging / STUDY_FILE).write_text(json.dumps(content, indent=2) + "\n")
        os.chmod(staging, 0o755)
        if output.exists():
            output.rmdir()
        staging.rename(output)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return load_study(output)
