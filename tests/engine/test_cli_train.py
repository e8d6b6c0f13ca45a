"""`cbam train`, `cbam eval` and `cbam compare` end to end on real files."""

import json

import pytest

from cbam.cli import main

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
    code, out, _ = run(capsys, "train", "--data", image_folder, "--output", out_dir, "--epochs", "1", *TINY)
    assert code == 0 and "epoch 1/1" in out and "done: val top-1 error" in out
    code, out, _ = run(capsys, "eval", "--checkpoint", out_dir / "last.pt", "--json", "--workers", "0")
    report = json.loads(out)
    assert code == 0 and set(report) >= {"top1_error", "top5_error", "loss", "images"} and report["images"] == 18
    code, out, _ = run(capsys, "train", "--output", out_dir, "--epochs", "2", "--resume")
    assert code == 0 and "epoch 2/2" in out and "epoch 1/2" not in out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--arch", "resnet5"], "unknown model 'resnet5'; did you mean resnet50"),
        (["--attention", "cbma"], "unknown attention 'cbma'"),
        (["--recipe", "imagent"], "unknown recipe 'imagent'"),
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


def test_resume_refuses_a_changed_recipe(capsys, image_folder, tmp_path):
    run(capsys, "train", "--data", image_folder, "--output", tmp_path / "run", "--epochs", "1", *TINY)
    code, _, err = run(capsys, "train", "--output", tmp_path / "run", "--epochs", "2", "--resume", "--lr", "0.1")
    assert code == 2 and "cannot change lr" in err


def test_compare_prints_and_writes_the_table(capsys, image_folder, tmp_path):
    tiny = TINY[6:]  # the recipe flags, without the model
    code, out, err = run(
        capsys, "compare", "--preset", "table4", "--arch", "resnet18", "--data", image_folder,
        "--output", tmp_path / "cmp", "--epochs", "1", *tiny,
    )  # fmt: skip
    assert code == 0, err
    assert "| ResNet18 + CBAM" in out and (tmp_path / "cmp" / "comparison.csv").exists()
