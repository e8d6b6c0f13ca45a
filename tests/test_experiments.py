"""experiments/finetune_init.py at a small size: the fine-tuning study's runs, table and statistics."""

import json

import pytest

from experiments import finetune_init
from tests.conftest import write_image_folder


def test_the_study_measures_every_variant_and_identity_starts_where_plain_does(tmp_path, monkeypatch):
    folders = {(0, 2): write_image_folder(tmp_path / "light", seed=1), (10, 14): write_image_folder(tmp_path / "heavy")}
    monkeypatch.setattr(finetune_init, "ensure_cluttered_digits", lambda config: folders[config.clutter])
    setup = finetune_init.Setup("resnet18", 2, 1, 1, (0, 2), (10, 14), 0)
    header, rows, report = finetune_init.run(setup, tmp_path / "study")
    assert [row[0] for row in rows] == [label for label, _, _ in finetune_init.VARIANTS] and len(header) == 6
    runs = report["runs"]
    # the end figures are of each run's per-image predictions: their means are the runs' final errors
    plain, identity = ([run["at the end"] for run in runs[label]] for label in ("plain", "+ CBAM, identity init"))
    intervals = report["intervals"]["+ CBAM, identity init"]
    assert 100 * intervals["end"]["estimate"] == pytest.approx(sum(identity) / 2)
    assert 100 * intervals["minus_plain"]["estimate"] == pytest.approx((sum(identity) - sum(plain)) / 2)
    assert intervals["minus_plain"]["low"] <= intervals["minus_plain"]["estimate"] <= intervals["minus_plain"]["high"]
    # gates exist only where attention starts as an identity, one per attention layer (8 blocks of resnet18)
    assert [len(run["gates"]) for run in runs["+ CBAM, identity init"]] == [8, 8]
    assert runs["+ CBAM, paper init"][0]["gates"] == [] and rows[1][5] == "-"
    assert all(g != 0 for run in runs["+ CBAM, identity init"] for g in run["gates"]), "the gates trained"
    before = [[run["before the first step"] for run in runs[label]] for label, _, _ in finetune_init.VARIANTS]
    assert before[0] == before[2], "identity-init attention starts exactly where the plain network does"
    assert len(set(before[0])) == 1, "before any step, the seed changes nothing for the plain network"
    assert json.loads(json.dumps(report))["runs"] == runs, "the report is plain data: finetune.json holds it whole"
    stamps = {p: p.stat().st_mtime_ns for p in (tmp_path / "study").glob("*/last.pt")}
    assert len(stamps) == 1 + 3 * 2, "the pretraining and one run per variant and seed"
    again = finetune_init.run(setup, tmp_path / "study")
    assert again[1] == rows and {p: p.stat().st_mtime_ns for p in stamps} == stamps, "finished runs are kept"
