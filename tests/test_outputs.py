"""Where commands write: atomic files, and paths refused before any work starts."""

import pytest

from cbam.checkpoint import Checkpoint, read_checkpoint, save_checkpoint
from cbam.errors import OutputError
from cbam.outputs import atomic_write, check_output_file, check_writable_folder


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "last.pt"
    save_checkpoint(target, Checkpoint("classification", {}, None, 1, {}))

    def crash(tmp):
        tmp.write_bytes(b"half a checkpoint")
        raise KeyboardInterrupt  # the process is killed mid-write

    with pytest.raises(KeyboardInterrupt):
        atomic_write(target, crash)
    assert read_checkpoint(target).epoch == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]


def test_a_write_that_cannot_happen_names_the_users_path_not_a_temporary_file(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(OutputError, match=r"cannot write .*file/out\.csv") as refused:
        atomic_write(tmp_path / "file" / "out.csv", lambda tmp: tmp.write_text("a"))
    assert ".tmp" not in str(refused.value)


def test_output_files_are_checked_before_any_work(tmp_path):
    (tmp_path / "taken.png").write_text("keep")
    (tmp_path / "folder.png").mkdir()
    (tmp_path / "file").write_text("x")
    with pytest.raises(OutputError, match=r"taken\.png exists; pass --force to replace it"):
        check_output_file(tmp_path / "taken.png")
    assert check_output_file(tmp_path / "taken.png", force=True) == tmp_path / "taken.png"
    with pytest.raises(OutputError, match="is a folder; give the path of the file"):
        check_output_file(tmp_path / "folder.png", force=True)
    with pytest.raises(OutputError, match="file is not a folder"):
        check_output_file(tmp_path / "file" / "deep" / "x.png")
    check_writable_folder(tmp_path / "new" / "deeper")  # may be created later: nothing is created now
    assert not (tmp_path / "new").exists()
