import json
import os
import subprocess
import sys

import pytest
import torch

import cbam
from cbam.classification.task import ClassificationConfig
from cbam.cli import main, networks
from cbam.data.loading import default_workers


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def table_rows(markdown: str) -> list[list[str]]:
    lines = [line for line in markdown.splitlines() if line.startswith("| ") and not line.startswith("| --")]
    rows = [[cell.strip() for cell in line.strip("|").split("|")] for line in lines]
    return [row for row in rows if row[0] != "Row"]


def test_paper_tables_4_and_5_print_every_row_with_zero_difference(capsys):
    code, out, _ = run(capsys, "profile", "--paper-table", "4", "--paper-table", "5")
    assert code == 0
    assert "Table 4: 24/24 rows match" in out and "Table 5: 6/6 rows match" in out
    rows = table_rows(out)
    assert len(rows) == 30
    for row in rows:
        assert row[1] == row[2] and row[3] == "+0.00", row
        assert row[4] == row[5] and row[6] == "+0.000", row


def test_paper_table_json_is_machine_readable(capsys):
    code, out, _ = run(capsys, "profile", "--paper-table", "2", "--json")
    report = json.loads(out)
    assert code == 0
    assert [r["matches"] for r in report["table2"]] == [True, False, False, True, True, True]
    assert all(r["note"] for r in report["table2"] if not r["matches"])


def test_known_misprints_are_footnoted(capsys):
    _, out, _ = run(capsys, "profile", "--paper-table", "1")
    assert "[1] Table 1 prints 25.92M" in out
    assert out.count("[1]") == 4


def test_single_model_prints_counts_and_the_matching_paper_row(capsys):
    code, out, _ = run(capsys, "profile", "resnet50_cbam")
    assert code == 0
    assert "params: 28,089,624 (28.09M)" in out
    assert "GFLOPs (multiply-accumulates at 224x224): 4.096" in out  # stride on the 3x3, as built
    assert ["ResNet50 + CBAM", "28.09", "28.09", "+0.00", "3.864", "3.864", "+0.000", ""] in table_rows(out)


def test_single_model_options_and_json(capsys):
    code, out, _ = run(
        capsys, "profile", "mobilenet_v1", "--attention", '{"name": "cbam"}', "--model-arg", "width_mult=0.7", "--json"
    )
    report = json.loads(out)
    assert code == 0 and report["params"] == 2_712_554 and report["paper"] == []
    code, out, _ = run(
        capsys, "profile", "mobilenet_v1", "--attention", "cbam", "--model-arg", "width_mult=0.7", "--json"
    )
    assert json.loads(out)["paper"][0]["description"] == "MobileNet alpha=0.7 + CBAM"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["profile", "resnet5"], "unknown model 'resnet5'; did you mean resnet50"),
        (["profile", "resnet50", "--attention", "cbma"], "unknown attention 'cbma'"),
        (["profile", "resnet50", "--attention", "{bad"], "not valid JSON"),
        (["profile", "resnet50", "--model-arg", "widen"], "KEY=VALUE"),
        (["profile", "resnet18", "--model-arg", "widen=2"], "unexpected keyword argument 'widen'"),
        (["profile"], "give a model name"),
        (["profile", "resnet50", "--paper-table", "4"], "not both"),
        (["models", "vgg*"], "no model matches"),
    ],
)
def test_bad_input_gets_one_readable_line_and_exit_code_2(capsys, argv, message):
    code, out, err = run(capsys, *argv)
    assert code == 2 and out == ""
    assert message in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_models_lists_registered_names(capsys):
    _, out, _ = run(capsys, "models", "resnet18*")
    assert out.split() == ["resnet18", "resnet18_bam", "resnet18_cbam", "resnet18_se"]
    _, out, _ = run(capsys, "models", "--base-only")
    assert "resnet50" in out.split() and "resnet50_cbam" not in out.split()


def test_python_dash_m_runs_the_cli():
    done = subprocess.run(
        [sys.executable, "-m", "cbam", "profile", "resnet18", "--json"], capture_output=True, text=True, check=True
    )
    assert json.loads(done.stdout)["params"] == 11_689_512


def test_version_is_the_installed_one(capsys):
    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0 and capsys.readouterr().out.strip() == f"cbam {cbam.__version__}"


def test_a_bug_is_a_traceback_and_exit_1_not_a_user_mistake(capsys, monkeypatch):
    def broken(args):
        return {}["missing"]  # a deliberate bug: KeyError is no user mistake

    monkeypatch.setattr(networks, "cmd_models", broken)
    code, _, err = run(capsys, "models")
    assert code == 1 and "Traceback" in err and "KeyError" in err and "a bug in cbam" in err

    def value_bug(args):
        raise ValueError("an internal check failed")  # plain ValueError: ours, not the user's

    monkeypatch.setattr(networks, "cmd_models", value_bug)
    code, _, err = run(capsys, "models")
    assert code == 1 and "Traceback" in err


def test_traceback_flag_and_variable_show_it_for_user_errors_too(capsys, monkeypatch):
    code, _, err = run(capsys, "--traceback", "profile", "resnet5")
    assert code == 2 and "Traceback" in err and err.strip().splitlines()[-1].startswith("cbam profile: error: unknown")
    monkeypatch.setenv("CBAM_TRACEBACK", "1")
    code, _, err = run(capsys, "profile", "resnet5")
    assert code == 2 and "Traceback" in err


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
