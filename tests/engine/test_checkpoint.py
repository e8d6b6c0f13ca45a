import pickle

import pytest
import torch
from torch import nn

from cbam.engine.checkpoint import (
    CheckpointError,
    load_checkpoint,
    load_safetensors,
    save_checkpoint,
    save_safetensors,
)


def test_checkpoint_round_trip(tmp_path):
    state = {"model": {"w": torch.arange(4.0)}, "epoch": 3, "config": {"arch": "resnet18"}}
    save_checkpoint(tmp_path / "last.pt", state)
    loaded = load_checkpoint(tmp_path / "last.pt")
    assert loaded["epoch"] == 3 and torch.equal(loaded["model"]["w"], torch.arange(4.0))


def test_truncated_checkpoint_gets_a_readable_error(tmp_path):
    path = tmp_path / "last.pt"
    save_checkpoint(path, {"model": {"w": torch.randn(1000)}})
    path.write_bytes(path.read_bytes()[:500])
    with pytest.raises(CheckpointError, match="can read safely: it is truncated, corrupt or not a PyTorch file"):
        load_checkpoint(path)


def test_missing_and_foreign_files_are_refused(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "nope.pt")
    torch.save({"weights": torch.zeros(1)}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="not a cbam checkpoint"):
        load_checkpoint(tmp_path / "other.pt")


class RunsCode:
    def __reduce__(self):
        return (print, ("this ran on load",))


def test_a_checkpoint_that_would_run_code_is_refused_without_running_it(tmp_path, capsys):
    path = tmp_path / "evil.pt"
    torch.save({"model": {}, "payload": RunsCode()}, path, pickle_module=pickle)
    with pytest.raises(CheckpointError, match=r"holds Python objects .* could run code") as refused:
        load_checkpoint(path)
    assert "weights_only" not in str(refused.value)
    assert "this ran on load" not in capsys.readouterr().out


def test_safetensors_round_trip_with_metadata(tmp_path):
    model = nn.Linear(3, 2)
    save_safetensors(tmp_path / "w.safetensors", model, {"arch": "x", "classes": ["a", "b"]})
    tensors, meta = load_safetensors(tmp_path / "w.safetensors")
    assert torch.equal(tensors["weight"], model.weight.detach())
    assert meta == {"arch": "x", "classes": ["a", "b"]}
    (tmp_path / "bad.safetensors").write_bytes(b"\x00" * 10)
    with pytest.raises(CheckpointError, match="cannot be read"):
        load_safetensors(tmp_path / "bad.safetensors")


def test_written_files_get_the_usual_permissions(tmp_path):
    import os

    save_checkpoint(tmp_path / "last.pt", {"model": {}})
    umask = os.umask(0)
    os.umask(umask)
    assert (tmp_path / "last.pt").stat().st_mode & 0o777 == 0o666 & ~umask
