"""Table 6 from the stored votes: counts, respondents, a sign test, and the counts of each question."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from cbam.extras import import_optional
from cbam.paper import load_tables
from cbam.report import format_markdown_table
from cbam.survey.store import Vote
from cbam.survey.study import Study

ROWS = (("equal", "Seems equal"), ("baseline", "Baseline better"), ("cbam", "CBAM better"))


def sign_test(cbam: int, baseline: int) -> float | None:
    """Two-sided sign test of CBAM against baseline votes ("equal" left out); None without any."""
    stats = import_optional("scipy.stats", "survey", "cbam survey tally")
    n = cbam + baseline
    return float(stats.binomtest(cbam, n, 0.5, alternative="two-sided").pvalue) if n else None


@dataclass(frozen=True)
class QuestionCounts:
    """The votes of one question."""

    question: int
    label: str
    equal: int
    baseline: int
    cbam: int


@dataclass(frozen=True)
class Tally:
    """Table 6 for a study."""

    equal: int
    baseline: int
    cbam: int
    respondents: int
    questions: int
    per_question: list[QuestionCounts] = field(default_factory=list)

    @property
    def votes(self) -> int:
        return self.equal + self.baseline + self.cbam

    @property
    def sign_test_p(self) -> float | None:
        return sign_test(self.cbam, self.baseline)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: the counts, respondents, questions, the sign test and each question's counts."""
        return {
            "equal": self.equal,
            "baseline": self.baseline,
            "cbam": self.cbam,
            "votes": self.votes,
            "respondents": self.respondents,
            "questions": self.questions,
            "sign_test_p": self.sign_test_p,
            "per_question": [vars(q) for q in self.per_question],
            "paper": paper_table6(),
        }


def paper_table6() -> dict[str, int]:
    """The paper's Table 6 and its study's size."""
    votes = load_tables()["table6_user_study_votes"]
    return {
        "equal": votes["seems_equal"],
        "baseline": votes["baseline_better"],
        "cbam": votes["cbam_better"],
        "respondents": votes["respondents"],
        "questions": votes["questions"],
    }


def tally_votes(study: Study, votes: list[Vote]) -> Tally:
    """Count the votes by the model each prefers, overall and per question."""
    counts = Counter((v.question, v.preferred) for v in votes)
    per_question = [
        QuestionCounts(q.id, q.label, counts[q.id, "equal"], counts[q.id, "baseline"], counts[q.id, "cbam"])
        for q in study.questions
    ]
    return Tally(
        equal=sum(q.equal for q in per_question),
        baseline=sum(q.baseline for q in per_question),
        cbam=sum(q.cbam for q in per_question),
        respondents=len({v.respondent for v in votes}),
        questions=len(study.questions),
        per_question=per_question,
    )


def _share(count: int, total: int) -> str:
    return f"{100 * count / total:.1f}" if total else "-"


def _p_value(p: float | None) -> str:
    return "-" if p is None else f"{p:.2g}"


def table6_markdown(tally: Tally) -> str:
    """Table 6 beside the paper's figures, then the study's size and the sign tests."""
    paper = paper_table6()
    paper_total = paper["equal"] + paper["baseline"] + paper["cbam"]
    header = ["Survey choice", "Votes", "Share (%)", "Paper votes", "Paper share (%)"]
    rows = [
        [name, str(getattr(tally, key)), _share(getattr(tally, key), tally.votes), str(paper[key]),
         _share(paper[key], paper_total)]
        for key, name in ROWS
    ]  # fmt: skip
    rows.append(["Total", str(tally.votes), _share(tally.votes, tally.votes), str(paper_total), "100.0"])
    paper_p = _p_value(sign_test(paper["cbam"], paper["baseline"]))
    lines = [
        format_markdown_table(header, rows),
        "",
        f"Respondents: {tally.respondents} (paper: {paper['respondents']}); "
        f"questions: {tally.questions} (paper: {paper['questions']})",
        f"Sign test, CBAM better vs baseline better ('seems equal' left out), two-sided: "
        f"p = {_p_value(tally.sign_test_p)} (paper's votes: p = {paper_p})",
    ]
    return "\n".join(lines)


def per_question_rows(tally: Tally) -> tuple[list[str], list[list[str]]]:
    """Header and rows of each question's counts."""
    header = ["Question", "Label", "Seems equal", "Baseline better", "CBAM better"]
    rows = [[str(q.question), q.label, str(q.equal), str(q.baseline), str(q.cbam)] for q in tally.per_question]
    return header, rows
