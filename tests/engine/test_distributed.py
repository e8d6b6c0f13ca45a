"""Data parallel through torchrun: 2 processes (gloo, CPU) take the same steps as 1 process.

On the CPU, BatchNorm would normalise each process's half of the batch (SyncBatchNorm is
GPU-only), which changes every gradient; with `--freeze-bn-stats` the batch statistics drop out
and the two runs must take the same steps.
"""

import subprocess
import sys

import pytest
import torch

from cbam.checkpoint import read_checkpoint
from cbam.classification.task import ClassificationConfig, ClassificationTask
from cbam.engine.config import config_from_dict

ARGS = [
    "train", "--arch", "wide_resnet18", "--model-arg", "widen_factor=0.25", "--attention", "cbam",
    "--batch-size", "16", "--lr", "0.05", "--image-size", "16", "--eval-resize", "16", "--crop-scale", "0.5", "1",
    "--workers", "0", "--epochs", "2",
]  # fmt: skip


def train(processes: int, data, output, *extra: str) -> None:
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}"]
    command = [*launcher, "-m", "cbam", *ARGS, *extra, "--data", str(data), "--output", str(output)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]


@pytest.mark.slow
def test_two_processes_take_the_same_steps_as_one_process(image_folder, tmp_path):
    train(1, image_folder, tmp_path / "one", "--freeze-bn-stats")
    train(2, image_folder, tmp_path / "two", "--freeze-bn-stats")
    one = read_checkpoint(tmp_path / "one" / "last.pt")
    two = read_checkpoint(tmp_path / "two" / "last.pt")
    torch.manual_seed(0)
    start = ClassificationTask.build_model(config_from_dict(ClassificationConfig, one.config), 3).state_dict()
    moved = [k for k, v in one.model.items() if v.is_floating_point() and not torch.equal(v, start[k])]
    assert len(moved) > 20  # the runs trained
    for key, value in one.model.items():
        torch.testing.assert_close(two.model[key], value, atol=1e-5, rtol=1e-4, msg=key)
    # metrics are summed over processes: both runs evaluated every validation image once
    for key in ("val_loss", "val_top1_error", "train_loss"):
        assert two.history[-1][key] == pytest.approx(one.history[-1][key], rel=1e-4), key
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == sorted(p.name for p in (tmp_path / "one").iterdir())


@pytest.mark.slow
def test_two_processes_with_per_process_batchnorm_train_and_write_once(image_folder, tmp_path):
    train(2, image_folder, tmp_path / "two")
    state = read_checkpoint(tmp_path / "two" / "last.pt")
    assert state.epoch == 2 and state.history[-1]["skipped_images"] == 0
    assert not list(tmp_path.glob("two/*.tmp")) and (tmp_path / "two" / "summary.json").exists()


@pytest.mark.slow
def test_sync_bn_on_the_cpu_is_refused_with_a_reason(image_folder, tmp_path):
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    command = [*launcher, "-m", "cbam", *ARGS, "--sync-bn", "--data", str(image_folder), "--output", str(tmp_path)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode != 0 and "sync_bn needs CUDA" in done.stderr


@pytest.mark.slow
def test_a_truncated_image_in_one_process_share_neither_hangs_nor_stops_the_run(image_folder, tmp_path):
    # batches of 2 per process at 16 px: the batch that loses the file is merged into the next, so that
    # process takes one step fewer in the epoch; torch's Join keeps the other from waiting for it
    bad = image_folder / "train" / "class1" / "003.png"
    bad.write_bytes(bad.read_bytes()[:40])
    train(2, image_folder, tmp_path / "two", "--batch-size", "4", "--epochs", "1")
    state = read_checkpoint(tmp_path / "two" / "last.pt")
    assert state.epoch == 1 and state.history[-1]["skipped_images"] == 1


@pytest.mark.slow
def test_fine_tuning_a_pretrained_torchvision_network_under_torchrun_takes_the_same_steps(image_folder, tmp_path):
    """`torchrun ... cbam train --arch torchvision:resnet18 --weights FILE --attention cbam` with the fine-tuning
    knobs: 2 processes end where 1 does, and the frozen stem is where the file left it."""
    import torchvision

    pretrained = torchvision.models.resnet18().state_dict()
    torch.save(pretrained, tmp_path / "r18.pth")
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    flags = ["-m", "cbam", "train", "--arch", "torchvision:resnet18", "--weights", str(tmp_path / "r18.pth"),
             "--attention", "cbam", "--attention-lr-mult", "10", "--freeze", "conv1.*", "bn1.*", "--freeze-bn-stats",
             "--batch-size", "16", "--lr", "0.05", "--image-size", "16", "--eval-resize", "16", "--workers", "0",
             "--epochs", "2", "--data", str(image_folder)]  # fmt: skip
    for processes in (1, 2):
        command = [*launcher, f"--nproc_per_node={processes}", *flags, "--output", str(tmp_path / str(processes))]
        done = subprocess.run(command, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]
    one, two = read_checkpoint(tmp_path / "1" / "last.pt"), read_checkpoint(tmp_path / "2" / "last.pt")
    assert torch.equal(one.model["conv1.weight"], pretrained["conv1.weight"]), "the frozen stem did not move"
    gates = [k for k in one.model if k.endswith(".gate")]
    assert len(gates) == 8 and all(one.model[k].item() != 0 for k in gates), "attention opened while fine-tuning"
    for key, value in one.model.items():
        torch.testing.assert_close(two.model[key], value, atol=1e-5, rtol=1e-4, msg=key)
