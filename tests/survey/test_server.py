"""The survey under a real server: many respondents at once, a restart, and paths that try to leave the study."""

from __future__ import annotations

import http.client
import random
import threading
from collections import Counter
from pathlib import Path
from urllib.parse import urlsplit

import httpx

from cbam.survey.store import VoteStore
from cbam.survey.study import CHOICES, load_study
from cbam.survey.tally import tally_votes
from tests.survey.conftest import running_server

RESPONDENTS = 50


def _respond(base: str, answers: list[str], revote: str, jar: dict[str, httpx.Cookies], who: int) -> None:
    """One respondent: every question, then a change of mind on the first."""
    with httpx.Client(base_url=base, timeout=60) as client:
        ids = client.get("/api/questions").json()
        for question, choice in zip(ids, answers, strict=True):
            client.post("/api/votes", json={"question": question, "choice": choice}).raise_for_status()
        client.post("/api/votes", json={"question": ids[0], "choice": revote}).raise_for_status()
        jar[who] = client.cookies


def test_fifty_respondents_at_once_lose_no_vote_and_a_restart_keeps_every_one(study_folder: Path) -> None:
    study = load_study(study_folder)
    rng = random.Random(0)
    answers = [[rng.choice(CHOICES) for _ in study.questions] for _ in range(RESPONDENTS)]
    revotes = [rng.choice(CHOICES) for _ in range(RESPONDENTS)]
    expected = Counter()
    for mine, revote in zip(answers, revotes, strict=True):
        final = [revote, *mine[1:]]
        expected.update(q.preferred(c) for q, c in zip(study.questions, final, strict=True))
    jar: dict[int, httpx.Cookies] = {}
    with running_server(study_folder) as base:
        threads = [
            threading.Thread(target=_respond, args=(base, answers[i], revotes[i], jar, i)) for i in range(RESPONDENTS)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert len(jar) == RESPONDENTS, "every respondent finished without an error"
    tally = tally_votes(study, VoteStore(study.votes_path).votes())
    assert (tally.equal, tally.baseline, tally.cbam) == (expected["equal"], expected["baseline"], expected["cbam"])
    assert tally.votes == RESPONDENTS * len(study.questions) and tally.respondents == RESPONDENTS

    # a restart: the same votes, and the same respondents recognised by their cookies
    with running_server(study_folder) as base, httpx.Client(base_url=base, cookies=jar[0]) as client:
        client.post("/api/votes", json={"question": study.questions[-1].id, "choice": "equal"}).raise_for_status()
    after = tally_votes(study, VoteStore(study.votes_path).votes())
    assert after.votes == tally.votes and after.respondents == RESPONDENTS
    assert after.equal == tally.equal + (answers[0][-1] != "equal")


def test_paths_that_climb_out_of_the_images_folder_get_404(study_folder: Path) -> None:
    image = load_study(study_folder).questions[0].image
    with running_server(study_folder) as base:
        host = urlsplit(base).netloc
        for path in (
            "/images/../study.json",
            "/images/..%2fstudy.json",
            "/images/%2e%2e/study.json",
            "/images/%2e%2e%2fvotes.sqlite",
            "/images/../../etc/passwd",
            "/images/..\\study.json",
            "/images//etc/passwd",
            f"/images/../images/{image}/../../secret.key",
        ):
            connection = http.client.HTTPConnection(host, timeout=10)
            connection.request("GET", path)  # sent as written: no client-side normalisation
            response = connection.getresponse()
            body = response.read()
            assert response.status == 404, path
            assert b"format" not in body and b"SQLite" not in body
            connection.close()
        connection = http.client.HTTPConnection(host, timeout=10)
        connection.request("GET", f"/images/{image}")
        assert connection.getresponse().status == 200
        connection.close()
