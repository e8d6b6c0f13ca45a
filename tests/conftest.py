import logging
import os
import random
import signal
import subprocess
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cbam.classification.task import ClassificationConfig
from cbam.engine.config import build_config

SEED_VARIABLE = "CBAM_TEST_SEED"


def random_seed() -> int:
    """The seed of every test's random draws: `$CBAM_TEST_SEED`, else 0. Rerun with another to vary the draws."""
    return int(os.environ.get(SEED_VARIABLE, "0") or 0)


def pytest_report_header(config: pytest.Config) -> str:
    return f"random seed: {random_seed()} (python, numpy, torch; set {SEED_VARIABLE} to change it)"


@pytest.fixture(autouse=True)
def _deterministic():
    """Seed `random`, numpy and torch before each test, so no test depends on an unseeded draw."""
    seed = random_seed()
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    warnings.filterwarnings("ignore", message=".*torch.jit.script.*is deprecated", category=FutureWarning)
    yield


@pytest.fixture
def cbam_log(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    """caplog holding every record of the `cbam` loggers, DEBUG up."""
    caplog.set_level(logging.DEBUG, logger="cbam")
    return caplog


def randomize_(module: torch.nn.Module) -> torch.nn.Module:
    """Give every parameter and BatchNorm buffer random values, so no term of a formula hides behind a 0 or 1."""
    with torch.no_grad():
        for p in module.parameters():
            p.normal_(0, 0.5)
        for name, b in module.named_buffers():
            if name.endswith("running_mean"):
                b.normal_(0, 0.5)
            elif name.endswith("running_var"):
                b.uniform_(0.5, 2.0)
    return module


def kill_after_first_checkpoint(argv: list[str], last: Path, timeout_s: float = 300) -> None:
    """Run a training command and SIGKILL it as soon as `last` (its first checkpoint) is on disk."""
    process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + timeout_s
    while not last.exists() and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()


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
    return build_config(ClassificationConfig, None, **values)
