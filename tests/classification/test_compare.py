import csv
import dataclasses
import json
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from cbam.classification.compare import run_compare, table_rows
from cbam.classification.predictions import read_predictions
from cbam.cli import main
from tests.conftest import kill_after_first_checkpoint, tiny_config


def test_table4_restricted_to_one_architecture_is_baseline_se_cbam():
    rows = table_rows("table4", ["resnet18"])
    assert [(r.arch, r.attention) for r in rows] == [("resnet18", "none"), ("resnet18", "se"), ("resnet18", "cbam")]
    assert [r.paper_top1_error for r in rows] == [29.60, 29.41, 29.27]
    assert all("stride_in_1x1" not in r.model_kwargs for r in rows)  # trained as built, not as FLOP-counted


def test_ablation_tables_carry_their_variants():
    assert [r.attention for r in table_rows("table3")][2:] == [
        {"name": "cbam", "arrangement": "spatial-channel"},
        {"name": "cbam", "arrangement": "parallel"},
    ]
    assert len(table_rows("table1")) == 4 and len(table_rows("table2")) == 6
    assert len({r.name for r in table_rows("table2")}) == 6  # one run folder per row


def test_unknown_table_or_architecture_is_refused():
    with pytest.raises(ValueError, match="unknown table 'table9'"):
        table_rows("table9")
    with pytest.raises(ValueError, match="no rows for \\['vgg16'\\]; its architectures: resnet101, resnet18"):
        table_rows("table4", ["vgg16"])


def test_compare_trains_each_row_writes_the_reports_and_reuses_finished_runs(image_folder, tmp_path):
    base = dataclasses.replace(tiny_config(image_folder, tmp_path / "unused", epochs=2), model_kwargs={})
    comparison = run_compare(table_rows("table4", ["resnet18"]), base, tmp_path / "cmp")
    stats = comparison.stats
    assert "Pointing game (%)" not in comparison.header, "the folder has no boxes"
    assert [s.runs.row.attention for s in stats] == ["none", "se", "cbam"]
    runs = [s.finished[0] for s in stats]
    assert runs[0].params < runs[1].params < runs[2].params
    for stat, run in zip(stats, runs, strict=True):  # every figure comes back from the saved predictions
        predictions = read_predictions(Path(run.output) / "predictions.csv")
        assert predictions.error_percent(1) == pytest.approx(run.final["val_top1_error"], abs=1e-9)
        assert predictions.error_percent(5) == pytest.approx(run.final["val_top5_error"], abs=1e-9)
        assert 100 * stat.top1.estimate == pytest.approx(run.final["val_top1_error"])
        assert stat.top1.low is None, "one seed: no interval"
    table = (tmp_path / "cmp" / "comparison.md").read_text()
    assert "ResNet18 + CBAM" in table and "Top-1 err (%)" in table and "intervals need at least 2 seeds" in table
    rows = list(csv.DictReader((tmp_path / "cmp" / "comparison.csv").open()))
    assert [r["Row"] for r in rows] == ["ResNet18", "ResNet18 + SE", "ResNet18 + CBAM"]
    assert float(rows[2]["Params (M)"]) == pytest.approx(runs[2].params / 1e6, abs=0.01)
    for plot in ("curves.png", "errors.png"):
        with Image.open(tmp_path / "cmp" / plot) as image:
            assert image.format == "PNG" and image.width > 500
    last = tmp_path / "cmp" / "resnet18-cbam" / "seed-0" / "last.pt"
    stamp = last.stat().st_mtime_ns
    again = run_compare(table_rows("table4", ["resnet18"]), base, tmp_path / "cmp")
    assert last.stat().st_mtime_ns == stamp  # not retrained
    assert again.rows == comparison.rows


def test_compare_adds_the_pointing_game_over_seeds_where_the_data_has_boxes(image_folder, tmp_path):
    from cbam.explain.scores import localize_checkpoint
    from cbam.stats import mean_error
    from tests.explain.test_scores import write_val_boxes

    write_val_boxes(image_folder)
    base = dataclasses.replace(tiny_config(image_folder, tmp_path / "unused", epochs=1), model_kwargs={})
    comparison = run_compare(table_rows("table4", ["resnet18"]), base, tmp_path / "cmp", seeds=2)
    assert comparison.header[-1] == "Pointing game (%)"
    rows = list(csv.DictReader((tmp_path / "cmp" / "comparison.csv").open()))
    for row, stat in zip(rows, comparison.stats, strict=True):
        # the interval is the one errors get, over both seeds' networks
        seeds = [localize_checkpoint(Path(run.output) / "last.pt", str(image_folder)) for run in stat.finished]
        expected = mean_error([s.hits for s in seeds])
        assert row["Pointing game (%)"] == (
            f"{100 * expected.estimate:.2f} [{max(0, 100 * expected.low):.2f}, {min(100, 100 * expected.high):.2f}]"
        )


# ---------------------------------------------------------------------------------------------------------------
# one network, several attentions, several seeds

FLAGS = ["--arch", "wide_resnet18", "--model-arg", "widen_factor=0.25", "--epochs", "2", "--batch-size", "8",
         "--lr", "0.8", "--image-size", "16", "--eval-resize", "16", "--workers", "0"]  # fmt: skip


def compare(tmp_path, data, output: str, *extra: str) -> dict:
    """`cbam compare` of none/se/cbam over 2 seeds; its comparison.json."""
    argv = ["compare", *FLAGS, "--attention", "none,se,cbam", "--seeds", "2", "--data", str(data),
            "--output", str(tmp_path / output), *extra]  # fmt: skip
    assert main(argv) == 0
    return json.loads((tmp_path / output / "comparison.json").read_text())


def run_state(folder: Path) -> dict[str, torch.Tensor]:
    return torch.load(folder / "last.pt", weights_only=True)["model"]


@pytest.fixture
def one_thread():
    """This process at one CPU thread, as each of 2 jobs on 2 cores: the same arithmetic, so the same weights."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_seeds_give_intervals_and_a_verdict_and_jobs_2_train_what_jobs_1_trains(
    image_folder, tmp_path, capsys, one_thread, monkeypatch
):
    monkeypatch.setattr("cbam.engine.jobs.available_cpus", lambda: 2)  # 1 thread for each of 2 jobs on any machine
    one = compare(tmp_path, image_folder, "one")
    out = capsys.readouterr().out
    assert "## wide_resnet18: none,se,cbam" in out and "Top-1 vs baseline" in out
    rows = one["rows"]
    assert [r["baseline"] for r in rows] == ["wide_resnet18"] * 3
    assert [[run["seed"] for run in r["runs"]] for r in rows] == [[0, 1]] * 3
    for row in rows:
        top1 = row["top1_error"]
        assert top1["seeds"] == 2 and top1["images"] == 18 and top1["low"] <= top1["estimate"] <= top1["high"]
        finals = [run["final"]["val_top1_error"] for run in row["runs"]]
        assert 100 * top1["estimate"] == pytest.approx(sum(finals) / 2)
    assert rows[0]["top1_difference"] is None and rows[2]["top1_difference"]["seeds"] == 2
    assert rows[0]["verdict"] is None and all("wide_resnet18" in r["verdict"] for r in rows[1:])
    two = compare(tmp_path, image_folder, "two", "--jobs", "2")
    for name in ("wide-resnet18", "wide-resnet18-se", "wide-resnet18-cbam"):
        for seed in ("seed-0", "seed-1"):
            a, b = run_state(tmp_path / "one" / name / seed), run_state(tmp_path / "two" / name / seed)
            assert all(torch.equal(a[k], b[k]) for k in a), f"{name} {seed}: --jobs 2 trained another network"
        assert "epoch 2/2" in (tmp_path / "two" / name / "seed-0" / "log.txt").read_text(), (
            "each job logs beside its run"
        )
    assert [r["top1_error"] for r in two["rows"]] == [r["top1_error"] for r in rows]


def test_a_baseline_missing_from_the_list_or_another_recipe_in_the_folder_is_refused(image_folder, tmp_path, capsys):
    argv = ["compare", *FLAGS, "--attention", "se,cbam", "--data", str(image_folder), "--output", str(tmp_path / "cmp")]
    assert main([*argv, "--baseline", "none"]) == 2
    assert capsys.readouterr().err == "cbam compare: error: the baseline 'none' is not among the rows: se, cbam\n"
    assert not (tmp_path / "cmp").exists(), "nothing trained"
    assert main([*argv, "--arch", "resnet81"]) == 2  # the last --arch... is one too many: refused
    assert main(["compare", *FLAGS[2:], "--arch", "resnet81", *argv[len(FLAGS) + 1 :]]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err[-1].startswith("cbam compare: error: unknown model 'resnet81'") and not (tmp_path / "cmp").exists()
    assert main(argv) == 0
    capsys.readouterr()
    assert main([*argv, "--lr", "0.4"]) == 2
    assert "holds a run of another config (lr 0.8 -> 0.4)" in capsys.readouterr().err


def test_a_crashed_run_is_reported_with_its_log_and_the_rest_still_tabulated(image_folder, tmp_path, capsys):
    argv = ["compare", *FLAGS, "--attention", "none,cbam", "--data", str(image_folder), "--output",
            str(tmp_path / "cmp"), "--jobs", "2"]  # fmt: skip
    assert main(argv) == 0
    broken = tmp_path / "cmp" / "wide-resnet18-cbam" / "seed-0"
    (broken / "summary.json").unlink()  # a run that stopped...
    (broken / "last.pt").write_bytes(b"not a checkpoint")  # ...and whose checkpoint was then damaged
    capsys.readouterr()
    assert main(argv) == 1
    out = capsys.readouterr().out
    assert "wide_resnet18 + CBAM seed 0 failed: CheckpointError" in out and str(broken / "log.txt") in out
    assert "| wide_resnet18 " in out and "| 1/1 " in out and "| 0/1 " in out


def test_an_interrupted_comparison_resumes_to_the_table_of_one_never_stopped(image_folder, tmp_path):
    argv = [sys.executable, "-m", "cbam", "compare", *FLAGS, "--attention", "none,cbam", "--data", str(image_folder)]
    kill_after_first_checkpoint([*argv, "--output", str(tmp_path / "killed")],
                                tmp_path / "killed" / "wide-resnet18" / "seed-0" / "last.pt")  # fmt: skip
    assert not (tmp_path / "killed" / "comparison.json").exists()
    assert main([*argv[3:], "--output", str(tmp_path / "killed")]) == 0
    assert main([*argv[3:], "--output", str(tmp_path / "whole")]) == 0
    killed = json.loads((tmp_path / "killed" / "comparison.json").read_text())
    whole = json.loads((tmp_path / "whole" / "comparison.json").read_text())
    assert [r["top1_error"] for r in killed["rows"]] == [r["top1_error"] for r in whole["rows"]]
    for name in ("wide-resnet18", "wide-resnet18-cbam"):
        a, b = run_state(tmp_path / "killed" / name / "seed-0"), run_state(tmp_path / "whole" / name / "seed-0")
        assert all(torch.equal(a[k], b[k]) for k in a)


def test_the_schedulers_local_executor_runs_a_two_run_comparison(image_folder, tmp_path, capsys):
    pytest.importorskip("submitit")
    argv = ["compare", *FLAGS, "--attention", "none,cbam", "--data", str(image_folder), "--output",
            str(tmp_path / "cmp"), "--scheduler", "local", "--scheduler-arg", "timeout_min=10"]  # fmt: skip
    assert main(argv) == 0
    result = json.loads((tmp_path / "cmp" / "comparison.json").read_text())
    assert [r["runs"][0]["final"] is not None for r in result["rows"]] == [True, True]
    assert list((tmp_path / "cmp" / "jobs").glob("*_log.err")), "submitit kept each job's log"


def test_the_same_seed_gives_every_network_the_same_data_order_and_augmentation(image_folder, tmp_path):
    from cbam.classification.compare import attention_rows, row_configs
    from cbam.classification.task import ClassificationTask
    from cbam.engine.distributed import init_distributed
    from cbam.engine.run import open_run_data

    base = tiny_config(image_folder, tmp_path / "unused", crop_scale=(0.3, 1.0))
    configs = row_configs(attention_rows("wide_resnet18", ["none", "cbam"]), base, tmp_path / "cmp", seeds=2)
    assert [[c.seed for c in row] for row in configs] == [[0, 1], [0, 1]]
    assert configs[1][1].output == str(tmp_path / "cmp" / "wide-resnet18-cbam" / "seed-1")

    def first_epoch(config) -> tuple[list[int], torch.Tensor]:
        data = open_run_data(ClassificationTask(config, init_distributed("cpu")), init_distributed("cpu"))
        data.train_sampler.set_epoch(0)
        return list(data.train_sampler), data.task_data.train_set[0][0]

    (order_a, image_a), (order_b, image_b) = first_epoch(configs[0][0]), first_epoch(configs[1][0])
    assert order_a == order_b and torch.equal(image_a, image_b), "seed 0: the same batches, the same crops"
    order_c, image_c = first_epoch(configs[1][1])
    assert order_c != order_a and not torch.equal(image_c, image_a), "seed 1: another order and other crops"


def test_a_scheduler_that_is_not_reachable_is_one_line(image_folder, tmp_path, capsys, monkeypatch):
    pytest.importorskip("submitit")
    monkeypatch.setenv("PATH", str(tmp_path))  # no srun or sbatch to be found
    argv = ["compare", *FLAGS, "--attention", "none,cbam", "--data", str(image_folder), "--output",
            str(tmp_path / "cmp"), "--scheduler", "slurm"]  # fmt: skip
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("cbam compare: error: slurm is not reachable from this machine") and err.count("\n") == 1


def test_print_config_shows_the_first_run_a_valid_recipe_for_each_run(tmp_path, capsys):
    args = ["compare", "--arch", "resnet18", "--attention", "none,cbam", "--seeds", "3", "--seed", "7",
            "--recipe", "cluttered-digits-compare", "--output", str(tmp_path), "--print-config"]  # fmt: skip
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "arch: resnet18\n" in printed and "attention: none\n" in printed and "seed: 7\n" in printed
    assert "width_mult: 0.25" in printed and f"output: {tmp_path / 'resnet18' / 'seed-7'}" in printed
    assert not any(tmp_path.iterdir())  # printed, nothing written
