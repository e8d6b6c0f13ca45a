"""`cbam survey tally`: Table 6 from the votes file, beside the paper's, with a sign test."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from cbam.cli import main
from cbam.survey.store import VoteStore
from cbam.survey.study import load_study
from cbam.survey.tally import sign_test, tally_votes


def test_the_sign_test_matches_the_binomial_sums_by_hand() -> None:
    assert sign_test(9, 1) == pytest.approx(2 * (1 + 10) / 2**10)  # P(X <= 1) + P(X >= 9), X ~ B(10, 1/2)
    assert sign_test(5, 5) == pytest.approx(1.0)
    assert sign_test(0, 0) is None
    assert sign_test(667, 288) < 1e-30, "the paper's votes are far from a coin toss"


def test_tally_counts_the_model_each_vote_prefers(study_folder: Path, capsys: pytest.CaptureFixture[str]) -> None:
    study = load_study(study_folder)
    store = VoteStore(study.votes_path)
    first, second = study.questions[:2]
    cbam_side = "left" if first.left_model == "cbam" else "right"
    baseline_side = "left" if second.left_model == "baseline" else "right"
    votes = [("a", first, cbam_side), ("b", first, cbam_side), ("c", first, "equal"), ("a", second, baseline_side)]
    for respondent, question, side in votes:
        store.record(respondent, question.id, side, question.preferred(side))
    store.record("c", first.id, cbam_side, "cbam")  # c changes their mind: still one vote
    tally = tally_votes(study, store.votes())
    assert (tally.equal, tally.baseline, tally.cbam, tally.respondents) == (0, 1, 3, 3)
    assert [(q.equal, q.baseline, q.cbam) for q in tally.per_question[:2]] == [(0, 0, 3), (0, 1, 0)]

    csv_path = study_folder.parent / "counts.csv"
    assert main(["survey", "tally", str(study_folder), "--json", "--csv", str(csv_path)]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert {k: printed[k] for k in ("equal", "baseline", "cbam", "respondents", "questions")} == {
        "equal": 0, "baseline": 1, "cbam": 3, "respondents": 3, "questions": len(study.questions),
    }  # fmt: skip
    assert printed["sign_test_p"] == pytest.approx(0.625)  # 4 votes, 3 to 1: 2 * 5/16
    with open(csv_path, newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["Question", "Label", "Seems equal", "Baseline better", "CBAM better"]
    assert rows[1][2:] == ["0", "0", "3"] and len(rows) == 1 + len(study.questions)

    assert main(["survey", "tally", str(study_folder)]) == 0
    table = capsys.readouterr().out
    for line in ("| Seems equal ", "| Baseline better ", "| CBAM better "):
        assert line in table
    assert "| 295 " in table and "| 288 " in table and "| 667 " in table, "the paper's votes beside ours"
    assert "Respondents: 3 (paper: 25)" in table and "p = 0.62" in table


def test_a_study_without_votes_tallies_to_zero(study_folder: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["survey", "tally", str(study_folder), "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert (printed["equal"], printed["baseline"], printed["cbam"], printed["sign_test_p"]) == (0, 0, 0, None)
    assert not (study_folder / "votes.sqlite").exists(), "tallying creates no votes file"
