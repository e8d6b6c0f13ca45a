"""Detection through torchrun: 2 processes (gloo, CPU) train, write once, and score every validation image once."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from cbam.cli import main


@pytest.mark.slow
def test_two_processes_train_and_score_what_one_process_scores(coco_folder: Path, tmp_path: Path, capsys) -> None:
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    args = ["-m", "cbam", "detect", "train", "--recipe", "cluttered-digits", "--data", str(coco_folder),
            "--attention", "cbam", "--epochs", "1", "--batch-size", "4", "--workers", "0",
            "--detector-arg", "batch_norm='frozen'", "--output", str(tmp_path / "two")]  # fmt: skip
    done = subprocess.run([*launcher, *args], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    state = torch.load(tmp_path / "two" / "last.pt", weights_only=True)
    assert state["epoch"] == 1 and not list((tmp_path / "two").glob("*.tmp"))
    assert (tmp_path / "two" / "last.safetensors").is_file(), "written once, by rank 0"
    assert main(["detect", "eval", "--checkpoint", str(tmp_path / "two" / "last.pt"), "--json"]) == 0
    alone = json.loads(capsys.readouterr().out)
    assert alone["images"] == 6
    assert state["history"][-1]["val_map"] == pytest.approx(alone["map"], abs=1e-9)
