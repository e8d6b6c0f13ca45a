from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cbam.engine.config import build_config


def write_image_folder(
    root: Path, classes: int = 3, train: int = 16, val: int = 6, size: int = 16, seed: int = 0
) -> Path:
    """An ImageNet-layout folder whose classes differ by colour, so a network learns them in a few steps."""
    rng = np.random.default_rng(seed)
    for split, count in (("train", train), ("val", val)):
        for c in range(classes):
            folder = root / split / f"class{c}"
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                pixels = rng.integers(0, 80, (size, size, 3), dtype=np.uint8)
                pixels[..., c % 3] += 120
                Image.fromarray(pixels).save(folder / f"{i:03d}.png")
    return root


@pytest.fixture
def image_folder(tmp_path: Path) -> Path:
    return write_image_folder(tmp_path / "data")


def tiny_config(data: Path, output: Path, **overrides):
    """A whole training run that takes seconds on a CPU: a quarter-width ResNet-18 with CBAM on 16 px images."""
    values = dict(
        data=str(data),
        output=str(output),
        arch="wide_resnet18",
        model_kwargs={"widen_factor": 0.25},
        attention="cbam",
        epochs=2,
        batch_size=8,
        lr=0.8,
        image_size=16,
        eval_resize=16,
        crop_scale=(0.5, 1.0),
        workers=0,
        seed=0,
    )
    values.update(overrides)
    return build_config(None, **values)
