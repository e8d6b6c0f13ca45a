"""`cbam train`, `cbam eval` and `cbam compare` end to end on real files."""

import json
import os

import pytest
import torch

import cbam
from cbam.classification.task import ClassificationConfig
from cbam.cli import main
from cbam.data.loading import default_workers

TINY = [
    "--arch", "wide_resnet18", "--model-arg", "widen_factor=0.25", "--attention", "cbam",
    "--batch-size", "8", "--lr", "0.8", "--image-size", "16", "--eval-resize", "16",
    "--crop-scale", "0.5", "1", "--workers", "0",
]  # fmt: skip


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_train_then_eval_json_then_resume(capsys, image_folder, tmp_path):
    out_dir = tmp_path / "run"
    code, out, err = run(capsys, "train", "--data", image_folder, "--output", out_dir, "--epochs", "1", *TINY)
    assert code == 0 and "epoch 1/1" in err and "done: val top-1 error" in out
    code, out, _ = run(capsys, "eval", "--checkpoint", out_dir / "last.pt", "--json", "--workers", "0")
    report = json.loads(out)
    assert code == 0 and set(report) >= {"top1_error", "top5_error", "loss", "images"} and report["images"] == 18
    # another scale than the run's: what `--image-size` asks for reaches the evaluation, and changes the result
    from cbam.classification.evaluate import evaluate_checkpoint

    code, out, _ = run(capsys, "eval", "--checkpoint", out_dir / "last.pt", "--json", "--workers", "0",
                       "--image-size", "32", "--eval-resize", "32")  # fmt: skip
    larger = evaluate_checkpoint(out_dir / "last.pt", workers=0, image_size=32, eval_resize=32)
    assert code == 0 and json.loads(out)["loss"] == pytest.approx(larger.loss) and larger.loss != report["loss"]
    code, out, err = run(capsys, "train", "--output", out_dir, "--epochs", "2", "--resume")
    assert code == 0 and "epoch 2/2" in err and "epoch 1/2" not in err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--arch", "resnet5"], "unknown model 'resnet5'; did you mean resnet50"),
        (["--attention", "cbma"], "unknown attention 'cbma'"),
        (["--recipe", "imagent"], "unknown classification recipe 'imagent'"),
        (["--lr-schedule", "poly"], "unknown lr_schedule"),
    ],
)
def test_bad_training_input_gets_one_line_and_exit_code_2(capsys, image_folder, tmp_path, argv, message):
    code, _, err = run(capsys, "train", "--data", image_folder, "--output", tmp_path / "run", *TINY, *argv)
    assert code == 2 and message in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


def test_missing_data_folder_and_missing_resume_are_reported(capsys, tmp_path):
    code, _, err = run(capsys, "train", "--data", tmp_path / "nowhere", "--output", tmp_path / "run", *TINY)
    assert code == 2 and "does not exist" in err
    code, _, err = run(capsys, "train", "--output", tmp_path / "run", "--resume")
    assert code == 2 and "nothing to resume" in err
    code, _, err = run(capsys, "eval", "--checkpoint", tmp_path / "missing.pt")
    assert code == 2 and "does not exist" in err
    code, _, err = run(capsys, "train", "--data", "imagenett", "--output", tmp_path / "run", *TINY)
    assert code == 2 and "unknown dataset 'imagenett'" in err
    assert not (tmp_path / "run").exists()


def test_a_bad_network_is_refused_before_the_data_is_opened(capsys, tmp_path):
    code, _, err = run(capsys, "train", "--data", tmp_path / "nowhere", "--output", tmp_path / "run", *TINY,
                       "--arch", "resnet5")  # fmt: skip
    assert code == 2 and "unknown model 'resnet5'" in err


def test_resume_takes_the_command_that_started_the_run_and_refuses_only_real_changes(capsys, image_folder, tmp_path):
    recipe = tmp_path / "mine.yaml"
    recipe.write_text("label_smoothing: 0.1\n")
    start = ["train", "--data", image_folder, "--output", tmp_path / "run", "--recipe", recipe, *TINY]
    assert run(capsys, *start, "--epochs", "1")[0] == 0
    code, _, err = run(capsys, *start, "--epochs", "2", "--resume")
    assert code == 0 and "epoch 2/2" in err, err
    code, _, err = run(capsys, *start, "--epochs", "3", "--resume", "--lr", "0.1")
    assert code == 2 and "lr 0.8 -> 0.1" in err and "Only download, epochs" in err


def test_a_folder_holding_a_run_is_never_replaced_silently(capsys, image_folder, tmp_path):
    out_dir = tmp_path / "run"
    assert run(capsys, "train", "--data", image_folder, "--output", out_dir, "--epochs", "1", *TINY)[0] == 0
    before = {name: (out_dir / name).read_bytes() for name in ("best.pt", "last.pt", "config.yaml")}
    plain = [*TINY, "--attention", "none"]
    code, _, err = run(capsys, "train", "--data", image_folder, "--output", out_dir, "--epochs", "1", *plain)
    assert code == 2 and "already holds a run" in err and "--resume" in err and "--exist-ok" in err
    assert f"--output {out_dir}-2" in err
    assert {name: (out_dir / name).read_bytes() for name in before} == before
    code, _, err = run(capsys, "train", "--data", image_folder, "--output", out_dir, "--epochs", "1", *plain,
                       "--exist-ok")  # fmt: skip
    assert code == 0 and "attention: none" in (out_dir / "config.yaml").read_text()


def test_a_run_that_fails_before_its_first_checkpoint_leaves_no_folder(capsys, image_folder, tmp_path):
    out_dir = tmp_path / "deep" / "run"
    code, _, err = run(capsys, "train", "--data", image_folder, "--output", out_dir, "--epochs", "1", *TINY,
                       "--batch-size", "1000")  # fmt: skip
    assert code == 2 and "fewer than one batch" in err
    assert not (tmp_path / "deep").exists()


def test_a_run_records_its_data_folder_so_it_evaluates_from_anywhere(capsys, image_folder, tmp_path, monkeypatch):
    monkeypatch.chdir(image_folder.parent)
    assert run(capsys, "train", "--data", image_folder.name, "--output", "run", "--epochs", "1", *TINY)[0] == 0
    monkeypatch.chdir(tmp_path.parent)
    code, out, err = run(capsys, "eval", "--checkpoint", tmp_path / "run" / "best.pt", "--json")
    assert code == 0, err
    assert json.loads(out)["images"] == 18


def test_a_truncated_image_is_skipped_named_once_and_never_ends_the_run(capsys, image_folder, tmp_path):
    # At 16 px the last stage's maps are 1 x 1: a batch of one image would stop BatchNorm in training
    bad = image_folder / "train" / "class0" / "000.png"
    bad.write_bytes(bad.read_bytes()[:40])
    code, _, err = run(capsys, "train", "--data", image_folder, "--output", tmp_path / "run", "--epochs", "1",
                       *TINY, "--batch-size", "2")  # fmt: skip
    assert code == 0, err
    assert err.count(f"skipping unreadable image {bad}") == 1 and "warn" not in err
    history = (tmp_path / "run" / "metrics.csv").read_text().splitlines()
    header, last = history[0].split(","), history[-1].split(",")
    assert last[header.index("skipped_images")] == "1"


def test_compare_prints_and_writes_the_table(capsys, image_folder, tmp_path):
    tiny = TINY[6:]  # the recipe flags, without the model
    code, out, err = run(
        capsys, "compare", "--table", "table4", "--arch", "resnet18", "--data", image_folder,
        "--output", tmp_path / "cmp", "--epochs", "1", *tiny,
    )  # fmt: skip
    assert code == 0, err
    assert "| ResNet18 + CBAM" in out and (tmp_path / "cmp" / "comparison.csv").exists()
    again = [*argv_compare(image_folder, tmp_path, tiny)]
    code, out, err = run(capsys, *again)
    assert code == 0 and err.count("kept the finished run") == 3 and "| ResNet18 + CBAM" in out
    code, out, err = run(capsys, *again, "--lr", "0.4")
    assert code == 2 and "holds a run of another config (lr 0.8 -> 0.4)" in err


def argv_compare(image_folder, tmp_path, tiny):
    return ["compare", "--table", "table4", "--arch", "resnet18", "--data", image_folder,
            "--output", tmp_path / "cmp", "--epochs", "1", *tiny]  # fmt: skip


def test_a_file_torch_refuses_never_passes_on_the_advice_to_load_it_unsafely(capsys, tmp_path):
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(bytes(range(256)) * 8)
    unsafe = tmp_path / "object.pt"
    torch.save(cbam.create_model, unsafe)  # a pickled function: loading it unsafely would import and run code
    for path, why in ((garbage, "truncated, corrupt or not a PyTorch file"), (unsafe, "could run code")):
        code, _, err = run(capsys, "eval", "--checkpoint", path)
        assert code == 2 and "not a checkpoint cbam can read safely" in err and why in err
        assert "weights_only" not in err and len(err.strip().splitlines()) == 1


def test_workers_default_to_the_cpus_this_process_may_use(monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    assert default_workers() == 2 and ClassificationConfig().workers == 2
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")  # torchrun with 4 processes on this machine
    assert default_workers() == 1
