import csv
import dataclasses

import pytest
from PIL import Image

from cbam.classification.compare import run_compare, table_rows
from tests.conftest import tiny_config


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
    comparison = run_compare("table4", base, tmp_path / "cmp", archs=["resnet18"])
    results = comparison.results
    assert "Pointing game (%)" not in comparison.header, "the folder has no boxes"
    assert [row.attention for row, _ in results] == ["none", "se", "cbam"]
    assert results[0][1].params < results[1][1].params < results[2][1].params
    table = (tmp_path / "cmp" / "comparison.md").read_text()
    assert "ResNet18 + CBAM" in table and "Top-1 err (%)" in table
    rows = list(csv.DictReader((tmp_path / "cmp" / "comparison.csv").open()))
    assert [r["Row"] for r in rows] == ["ResNet18", "ResNet18 + SE", "ResNet18 + CBAM"]
    assert float(rows[2]["Params (M)"]) == pytest.approx(results[2][1].params / 1e6, abs=0.01)
    with Image.open(tmp_path / "cmp" / "curves.png") as image:
        assert image.format == "PNG" and image.width > 500
    stamp = (tmp_path / "cmp" / "resnet18-cbam" / "last.pt").stat().st_mtime_ns
    again = run_compare("table4", base, tmp_path / "cmp", archs=["resnet18"]).results
    assert (tmp_path / "cmp" / "resnet18-cbam" / "last.pt").stat().st_mtime_ns == stamp  # not retrained
    assert [run.final for _, run in again] == [run.final for _, run in results]


def test_compare_adds_the_pointing_game_where_the_data_has_boxes(image_folder, tmp_path):
    from tests.explain.test_scores import write_val_boxes

    write_val_boxes(image_folder)
    base = dataclasses.replace(tiny_config(image_folder, tmp_path / "unused", epochs=1), model_kwargs={})
    comparison = run_compare("table4", base, tmp_path / "cmp", archs=["resnet18"])
    assert comparison.header[-1] == "Pointing game (%)"
    rows = list(csv.DictReader((tmp_path / "cmp" / "comparison.csv").open()))
    for row in rows:
        mean, interval = row["Pointing game (%)"].split(" [")
        low, high = (float(v) for v in interval.rstrip("]").split(", "))
        assert 0.0 <= low <= float(mean) <= high <= 100.0
