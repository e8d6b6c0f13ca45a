import signal
import subprocess
import time
import warnings
from pathlib import Path

import pytest
import torch


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)
    warnings.filterwarnings("ignore", message=".*torch.jit.script.*is deprecated", category=FutureWarning)
    yield


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
