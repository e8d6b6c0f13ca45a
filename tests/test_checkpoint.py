"""The checkpoint schema: what is written is what is read, bad files get one readable error, nothing runs code."""

import json
import pickle

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from cbam.checkpoint import (
    FORMAT,
    SAFETENSORS_KEYS,
    VERSION,
    Checkpoint,
    read_checkpoint,
    read_safetensors,
    save_checkpoint,
    save_weights,
)
from cbam.errors import CheckpointError


def checkpoint(**changes) -> Checkpoint:
    values = dict(
        task="classification",
        config={"arch": "resnet18", "attention": "cbam"},
        classes=["a", "b"],
        epoch=3,
        model={"w": torch.arange(4.0)},
        metadata={"source": "test"},
        best={"metric": "val_top1_error", "value": 12.5, "epoch": 2},
        history=[{"epoch": 1, "val_top1_error": 20.0}],
        training={"optimizer": {"state": {}, "param_groups": []}},
    )
    return Checkpoint(**{**values, **changes})


def test_checkpoint_round_trip_keeps_every_field_of_the_schema(tmp_path):
    saved = checkpoint()
    save_checkpoint(tmp_path / "last.pt", saved)
    raw = torch.load(tmp_path / "last.pt", weights_only=True)
    assert (raw["format"], raw["version"]) == (FORMAT, VERSION)
    loaded = read_checkpoint(tmp_path / "last.pt")
    assert torch.equal(loaded.model["w"], saved.model["w"])
    assert {k: v for k, v in loaded.__dict__.items() if k != "model"} == {
        k: v for k, v in saved.__dict__.items() if k != "model"
    }
    assert loaded.num_classes == 2


def test_weights_file_holds_the_schema_as_json_metadata_and_reads_back(tmp_path):
    saved = checkpoint()
    save_weights(tmp_path / "w.safetensors", saved)
    with safe_open(str(tmp_path / "w.safetensors"), framework="pt") as handle:
        meta = handle.metadata()
    assert sorted(meta) == sorted(SAFETENSORS_KEYS)
    assert json.loads(meta["config"]) == saved.config and json.loads(meta["task"]) == "classification"
    loaded = read_checkpoint(tmp_path / "w.safetensors")
    assert (loaded.task, loaded.config, loaded.classes, loaded.epoch, loaded.metadata) == (
        saved.task, saved.config, saved.classes, saved.epoch, saved.metadata,
    )  # fmt: skip
    assert torch.equal(loaded.model["w"], saved.model["w"]) and loaded.training is None


def test_a_newer_version_is_refused_naming_both_versions(tmp_path):
    torch.save({**checkpoint().to_dict(), "version": VERSION + 1}, tmp_path / "future.pt")
    with pytest.raises(CheckpointError, match=f"checkpoint version {VERSION + 1}; this cbam reads up to {VERSION}"):
        read_checkpoint(tmp_path / "future.pt")


def test_truncated_checkpoint_gets_a_readable_error(tmp_path):
    path = tmp_path / "last.pt"
    save_checkpoint(path, checkpoint(model={"w": torch.randn(1000)}))
    path.write_bytes(path.read_bytes()[:500])
    with pytest.raises(CheckpointError, match="can read safely: it is truncated, corrupt or not a PyTorch file"):
        read_checkpoint(path)


def test_missing_and_foreign_files_are_refused_pointing_at_load_pretrained(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        read_checkpoint(tmp_path / "nope.pt")
    torch.save({"weights": torch.zeros(1)}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match=r"not a cbam checkpoint .*cbam\.load_pretrained"):
        read_checkpoint(tmp_path / "other.pt")
    save_file({"w": torch.zeros(1)}, str(tmp_path / "bare.safetensors"))
    with pytest.raises(CheckpointError, match=r"without cbam's metadata; load it with cbam\.load_pretrained"):
        read_checkpoint(tmp_path / "bare.safetensors")


class RunsCode:
    def __reduce__(self):
        return (print, ("this ran on load",))


def test_a_checkpoint_that_would_run_code_is_refused_without_running_it(tmp_path, capsys):
    path = tmp_path / "evil.pt"
    torch.save({"model": {}, "payload": RunsCode()}, path, pickle_module=pickle)
    with pytest.raises(CheckpointError, match=r"holds Python objects .* could run code") as refused:
        read_checkpoint(path)
    assert "weights_only" not in str(refused.value)
    assert "this ran on load" not in capsys.readouterr().out


def test_unreadable_safetensors_is_refused(tmp_path):
    (tmp_path / "bad.safetensors").write_bytes(b"\x00" * 10)
    with pytest.raises(CheckpointError, match="cannot be read"):
        read_safetensors(tmp_path / "bad.safetensors")


def test_written_files_get_the_usual_permissions(tmp_path):
    import os

    save_checkpoint(tmp_path / "last.pt", checkpoint())
    umask = os.umask(0)
    os.umask(umask)
    assert (tmp_path / "last.pt").stat().st_mode & 0o777 == 0o666 & ~umask


FULL_DISK = """
import resource, signal, sys
import torch
from cbam.checkpoint import Checkpoint, save_checkpoint
from cbam.errors import UserError

signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG instead of killing us
resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 16, resource.RLIM_INFINITY))
big = Checkpoint("classification", {}, ["a", "b"], 2, {"w": torch.zeros(1 << 16)})  # 256 KiB of weights
try:
    save_checkpoint(sys.argv[1], big)
except UserError as err:
    print(f"{type(err).__name__}: {err}")
"""


def test_a_full_disk_gives_one_line_naming_the_file_and_keeps_the_previous_checkpoint(tmp_path):
    import subprocess
    import sys

    path = tmp_path / "last.pt"
    save_checkpoint(path, checkpoint())
    before = path.read_bytes()
    done = subprocess.run([sys.executable, "-c", FULL_DISK, str(path)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    line = done.stdout.strip()
    assert line.startswith(f"OutputError: cannot write {path}: ") and "full?" in line and "\n" not in line
    assert path.read_bytes() == before and read_checkpoint(path).epoch == checkpoint().epoch
    assert not list(tmp_path.glob(".last.pt.*")), "no temporary file left behind"
