"""Whole training runs at small size: learning, resume equivalence, checkpoints and bad input."""

import csv
import dataclasses
import json
import logging

import pytest
import torch

from cbam.checkpoint import read_checkpoint
from cbam.classification.evaluate import evaluate_checkpoint
from cbam.classification.task import ClassificationTask, lr_factor
from cbam.data.loading import DataError, Skipped
from cbam.engine.batches import SkipLog, merged_batches
from cbam.errors import CheckpointError, OutputError, TrainingError
from cbam.runs import fit, resume_config
from tests.conftest import kill_after_first_checkpoint, tiny_config, write_image_folder


def test_training_lowers_the_loss_and_writes_every_artefact(image_folder, tmp_path):
    run = fit(tiny_config(image_folder, tmp_path / "run", epochs=3))
    losses = [row["train_loss"] for row in run.history]
    assert losses[-1] < losses[0]
    assert run.final["val_top1_error"] < 100 * 2 / 3  # better than chance on 3 classes
    names = {p.name for p in (tmp_path / "run").iterdir()}
    assert {"last.pt", "best.pt", "last.safetensors", "best.safetensors", "metrics.csv", "config.yaml"} <= names
    rows = list(csv.DictReader((tmp_path / "run" / "metrics.csv").open()))
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3]
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["params"] == run.params and summary["best_epoch"] == run.best_epoch


def test_an_interrupted_run_resumed_ends_with_the_same_weights(image_folder, tmp_path):
    whole = tiny_config(image_folder, tmp_path / "whole", epochs=3)
    fit(whole)
    half = dataclasses.replace(whole, output=str(tmp_path / "half"), epochs=1)
    fit(half)
    resumed = resume_config(tmp_path / "half" / "last.pt", epochs=3)
    fit(resumed, resume=tmp_path / "half" / "last.pt")
    a = read_checkpoint(tmp_path / "whole" / "last.pt")
    b = read_checkpoint(tmp_path / "half" / "last.pt")
    assert a.epoch == b.epoch == 3
    for key, value in a.model.items():
        assert torch.equal(value, b.model[key]), key
    assert [r["val_loss"] for r in a.history] == [r["val_loss"] for r in b.history]
    assert [r["lr"] for r in a.history] == [r["lr"] for r in b.history]


def test_resume_refuses_to_change_the_recipe(image_folder, tmp_path):
    fit(tiny_config(image_folder, tmp_path / "run", epochs=1))
    with pytest.raises(ValueError, match=r"changes it: lr 0.8 -> 0.1\. Only download, epochs"):
        resume_config(tmp_path / "run" / "last.pt", lr=0.1)
    assert resume_config(tmp_path / "run" / "last.pt", lr=0.8, epochs=2).epochs == 2  # equal values are accepted


def test_evaluation_of_a_checkpoint_and_its_safetensors_agree(image_folder, tmp_path):
    fit(tiny_config(image_folder, tmp_path / "run", epochs=1))
    from_pt = evaluate_checkpoint(tmp_path / "run" / "best.pt", workers=0)
    from_st = evaluate_checkpoint(tmp_path / "run" / "best.safetensors", workers=0)
    assert from_pt == from_st
    assert from_pt.images == 18
    history = read_checkpoint(tmp_path / "run" / "best.pt").history
    assert from_pt.top1_error == pytest.approx(history[0]["val_top1_error"])


def test_a_class_count_that_does_not_match_the_checkpoint_is_refused(image_folder, tmp_path):
    fit(tiny_config(image_folder, tmp_path / "run", epochs=1))
    other = write_image_folder(tmp_path / "two-classes", classes=2)
    with pytest.raises(DataError, match=r"has 3 classes but .* has 2"):
        evaluate_checkpoint(tmp_path / "run" / "best.pt", str(other), workers=0)


def test_corrupt_images_are_skipped_with_one_log_line_each_and_counted(image_folder, tmp_path, caplog):
    broken = image_folder / "train" / "class0" / "broken.png"
    good = (image_folder / "train" / "class0" / "000.png").read_bytes()
    broken.write_bytes(good[: len(good) // 2])  # a truncated file
    (image_folder / "val" / "class1" / "not-an-image.png").write_text("hello")
    with caplog.at_level(logging.WARNING, logger="cbam"):
        run = fit(tiny_config(image_folder, tmp_path / "run", epochs=2, batch_size=4))
    paths = [r.getMessage() for r in caplog.records if "skipping unreadable" in r.getMessage()]
    assert sum(str(broken) in p for p in paths) == 1 and sum("not-an-image.png" in p for p in paths) == 1
    assert run.history[-1]["skipped_images"] >= 3  # the val file twice (each epoch), the train file at least once


def test_batches_that_skipping_leaves_too_small_are_merged_and_the_rest_counted():
    skips = SkipLog()
    bad = Skipped("x.png", "truncated")
    loader = [([1, 2], "ab", []), ([3], "c", [bad]), ([4, 5], "de", []), ([], "", [bad, bad]), ([6], "f", [bad])]
    merged = list(merged_batches(loader, skips, 2, len, lambda a, b: a + b))
    assert merged == [([1, 2], "ab"), ([3, 4, 5], "cde")]
    assert (skips.count, skips.dropped) == (4, 1)


def test_a_non_finite_loss_stops_the_run_and_keeps_the_last_checkpoint(image_folder, tmp_path, monkeypatch):
    real_build = ClassificationTask.build_model
    calls = {"n": 0}

    def poisoned(config, num_classes, fresh=True):
        model = real_build(config, num_classes, fresh=fresh)

        def hook(module, inputs, output):
            calls["n"] += 1
            return output * float("nan") if calls["n"] > 8 else output

        model.register_forward_hook(hook)
        return model

    monkeypatch.setattr(ClassificationTask, "build_model", staticmethod(poisoned))
    config = tiny_config(image_folder, tmp_path / "run", epochs=3)
    with pytest.raises(TrainingError, match=r"loss became nan.*last checkpoint is kept"):
        fit(config)
    assert read_checkpoint(tmp_path / "run" / "last.pt").epoch == 1


def test_missing_or_empty_data_and_unwritable_output_get_clear_errors(tmp_path, image_folder):
    with pytest.raises(DataError, match="does not exist"):
        fit(tiny_config(tmp_path / "nowhere", tmp_path / "run"))
    (tmp_path / "empty" / "train").mkdir(parents=True)
    (tmp_path / "empty" / "val").mkdir()
    with pytest.raises(DataError, match="holds no class folders"):
        fit(tiny_config(tmp_path / "empty", tmp_path / "run"))
    (tmp_path / "file").write_text("not a folder")
    with pytest.raises(OutputError, match="file is not a folder"):
        fit(tiny_config(image_folder, tmp_path / "file" / "run"))
    with pytest.raises(CheckpointError, match="not a checkpoint cbam can read safely"):
        (tmp_path / "junk.pt").write_bytes(b"junk")
        fit(tiny_config(image_folder, tmp_path / "run2"), resume=tmp_path / "junk.pt")


def test_amp_bf16_and_channels_last_train_on_the_cpu(image_folder, tmp_path):
    # 32 px: at 16 px, torch 2.14.1's CPU bf16 convolution backward sometimes returns non-finite weight
    # gradients for the 2x2 -> 1x1 stride-2 conv of layer4 (nondeterministic; the NaN guard catches it)
    config = tiny_config(image_folder, tmp_path / "run", epochs=2, amp=True, channels_last=True)
    run = fit(dataclasses.replace(config, image_size=32, eval_resize=32))
    assert all(torch.isfinite(torch.tensor(v)) for v in run.final.values())
    assert run.history[-1]["train_loss"] < run.history[0]["train_loss"] * 1.5


def test_the_step_schedule_divides_by_ten_every_30_epochs_as_in_the_paper():
    config = tiny_config("d", "o", epochs=90, lr_step=30)
    assert [lr_factor(config, e) for e in (0, 29, 30, 59, 60, 89)] == pytest.approx([1, 1, 0.1, 0.1, 0.01, 0.01])
    warm = dataclasses.replace(config, warmup_epochs=4, lr_schedule="cosine")
    assert lr_factor(warm, 0) == pytest.approx(0.2) and lr_factor(warm, 4) == pytest.approx(1.0)
    assert lr_factor(warm, 89) < 0.01


@pytest.mark.slow
def test_compiled_training_matches_the_eager_loss_closely(image_folder, tmp_path):
    eager = fit(tiny_config(image_folder, tmp_path / "eager", epochs=1))
    compiled = fit(tiny_config(image_folder, tmp_path / "compiled", epochs=1, compile=True))
    # inductor fuses and reorders float operations, so a few steps of training drift a little
    assert compiled.final["train_loss"] == pytest.approx(eager.final["train_loss"], rel=2e-2)


def test_a_killed_run_resumes_to_the_weights_of_an_uninterrupted_one(image_folder, tmp_path):
    """Kill `cbam train` once its first checkpoint is on disk, resume it, compare with a run never stopped."""
    import sys

    config = tiny_config(image_folder, tmp_path / "killed", epochs=4)
    argv = [
        sys.executable, "-m", "cbam", "train", "--data", str(image_folder), "--output", config.output,
        "--arch", config.arch, "--model-arg", "widen_factor=0.25", "--attention", "cbam", "--epochs", "4",
        "--batch-size", "8", "--lr", "0.8", "--image-size", "16", "--eval-resize", "16",
        "--crop-scale", "0.5", "1", "--workers", "0",
    ]  # fmt: skip
    last = tmp_path / "killed" / "last.pt"
    kill_after_first_checkpoint(argv, last, timeout_s=120)
    interrupted_at = read_checkpoint(last).epoch
    assert 1 <= interrupted_at <= 4
    fit(resume_config(last), resume=last)
    fit(dataclasses.replace(config, output=str(tmp_path / "whole")))
    a = read_checkpoint(tmp_path / "whole" / "last.pt").model
    b = read_checkpoint(last).model
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_frozen_parameters_stay_fixed_for_their_epochs_and_train_after(image_folder, tmp_path):
    from cbam.engine.run import frozen_parameters

    start = ClassificationTask.build_model(tiny_config(image_folder, tmp_path / "x"), 3).state_dict()
    config = tiny_config(image_folder, tmp_path / "all", freeze=("conv1.*", "layer1.*"))
    fit(config)
    trained = read_checkpoint(tmp_path / "all" / "last.pt").model
    assert torch.equal(trained["conv1.weight"], start["conv1.weight"])
    assert torch.equal(trained["layer1.0.conv2.weight"], start["layer1.0.conv2.weight"])
    assert not torch.equal(trained["layer2.0.conv1.weight"], start["layer2.0.conv1.weight"])
    fit(dataclasses.replace(config, output=str(tmp_path / "one"), freeze_epochs=1))
    after_one = read_checkpoint(tmp_path / "one" / "last.pt").model
    assert not torch.equal(after_one["conv1.weight"], start["conv1.weight"]), "trained in the second epoch"
    with pytest.raises(
        ValueError, match=r"--freeze 'layer9\.\*' matches no parameter; the network's start with: conv1"
    ):
        frozen_parameters(ClassificationTask.build_model(config, 3), ("layer9.*",))


def test_attention_parameters_get_their_own_learning_rate(image_folder, tmp_path):
    from cbam.engine.run import build_optimizer

    config = tiny_config(image_folder, tmp_path / "run", attention_lr_mult=10.0, lr=0.4, batch_size=8)
    model = ClassificationTask.build_model(config, 3)
    groups = build_optimizer(ClassificationTask.parameter_groups(model, config), config).param_groups
    attention = {id(p) for name, p in model.named_parameters() if ".attention." in name}
    assert [g["lr"] for g in groups] == [pytest.approx(0.4 * 8 / 256), pytest.approx(10 * 0.4 * 8 / 256)]
    assert {id(p) for p in groups[1]["params"]} == attention and attention
    plain_config = dataclasses.replace(config, attention_lr_mult=1.0)
    plain = build_optimizer(ClassificationTask.parameter_groups(model, plain_config), plain_config).param_groups
    assert len(plain) == 1, "one group unless attention learns at another rate (checkpoints resume as before)"


def test_the_schedule_is_torch_s_lambda_lr_over_the_task_s_factor_and_a_resumed_one_starts_at_its_step(
    image_folder, tmp_path
):
    from cbam.engine.distributed import init_distributed
    from cbam.engine.run import build_optimizer, lr_schedule

    config = tiny_config(image_folder, tmp_path / "run", attention_lr_mult=10.0, lr=0.4, epochs=4,
                         warmup_epochs=1, lr_schedule="cosine")  # fmt: skip
    task = ClassificationTask(config, init_distributed("cpu"))
    model = ClassificationTask.build_model(config, 3)

    def optimizer():
        return build_optimizer(ClassificationTask.parameter_groups(model, config), config)

    steps_per_epoch, total = 3, 12
    whole = optimizer()
    schedule = lr_schedule(task, whole, 0, steps_per_epoch, total)
    seen = []
    for _ in range(total):
        seen.append([g["lr"] for g in whole.param_groups])
        whole.step()
        schedule.step()
    bases = [config.base_lr, 10 * config.base_lr]
    assert seen == [pytest.approx([b * lr_factor(config, s // steps_per_epoch) for b in bases]) for s in range(total)]
    # a run resumed at step 6 from an optimizer state (what every checkpoint format saved) goes on as one never
    # stopped: the schedule is rebuilt from the step, the groups' initial lr from the optimizer state
    stopped = optimizer()
    lr_schedule(task, stopped, 0, steps_per_epoch, total)
    state = stopped.state_dict()
    resumed = optimizer()
    resumed.load_state_dict(state)
    lr_schedule(task, resumed, 6, steps_per_epoch, total)
    assert [g["lr"] for g in resumed.param_groups] == pytest.approx(seen[6])
