"""`cbam profile` and `cbam models`."""

import json

import pytest

from cbam.cli import main


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
        (
            ["profile", "resnet18", "--attention", "eca", "--model-arg", "kernel_size=7"],
            "kernel_size: an option of the attention 'eca', not of resnet18; give it in the attention spec",
        ),
        (["profile", "resnet18", "--attention", '{"name": "eca", "kernel_size": 4}'], "must be odd"),
        (["profile", "resnet18_coord", "--model-arg", "reduction=8"], "an option of the attention 'coord'"),
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
    assert out.split() == ["resnet18", "resnet18_bam", "resnet18_cbam", "resnet18_coord", "resnet18_eca",
                           "resnet18_ese", "resnet18_gc", "resnet18_ge", "resnet18_se", "resnet18_simam",
                           "resnet18_triplet"]  # fmt: skip
    _, out, _ = run(capsys, "models", "--base-only")
    assert "resnet50" in out.split() and "resnet50_cbam" not in out.split()


def test_models_attentions_lists_every_attention_name_with_its_paper(capsys):
    from cbam.layers.create import ATTENTION_LAYERS

    _, out, _ = run(capsys, "models", "--attentions")
    listed = {line.split()[0]: line for line in out.splitlines()}
    assert set(listed) == set(ATTENTION_LAYERS)
    assert "Misra et al., Triplet Attention, WACV 2021" in listed["triplet"]
    assert "Hou et al., Coordinate Attention, CVPR 2021" in listed["coord"]
