"""The survey's pages and API: votes by form and by JSON, re-votes, and every bad request refused."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from cbam.survey.app import COOKIE, MAX_BODY_BYTES, create_app
from cbam.survey.store import VoteStore
from cbam.survey.study import load_study
from tests.survey.conftest import QUESTIONS


@pytest.fixture
def client(study_folder: Path) -> TestClient:
    return TestClient(create_app(load_study(study_folder)), base_url="http://127.0.0.1:8000", follow_redirects=False)


def _votes(folder: Path) -> list[tuple[str, int, str, str]]:
    return [(v.respondent, v.question, v.side, v.preferred) for v in VoteStore(folder / "votes.sqlite").votes()]


def _token(page: str) -> str:
    return re.search(r'name="token" value="([0-9a-f]+)"', page).group(1)


def test_a_respondent_answers_every_page_by_form_and_can_change_an_answer(client: TestClient, study_folder) -> None:
    study = load_study(study_folder)
    welcome = client.get("/")
    cookie = welcome.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=lax" in cookie
    assert "Given the class label, which region seems more class-discriminative?" in welcome.text
    choices = ["left", "right", "equal", "left"][:QUESTIONS]
    for k, choice in enumerate(choices, start=1):
        page = client.get(f"/questions/{k}")
        assert f"Question {k} of {QUESTIONS}" in page.text
        answer = client.post(f"/questions/{k}", data={"token": _token(page.text), "choice": choice})
        assert answer.status_code == 303
        assert answer.headers["location"] == (f"/questions/{k + 1}" if k < QUESTIONS else "/thanks")
    assert f"You answered {QUESTIONS} of {QUESTIONS} questions" in client.get("/thanks").text
    page = client.get("/questions/2")
    assert 'value="right" id="choice-right" class="chosen"' in page.text, "the page shows the earlier answer"
    client.post("/questions/2", data={"token": _token(page.text), "choice": "equal"})
    votes = _votes(study_folder)
    assert len(votes) == QUESTIONS, "a re-vote replaces the earlier one"
    choices[1] = "equal"
    for (respondent, question, side, preferred), choice, q in zip(votes, choices, study.questions, strict=True):
        assert (question, side, preferred) == (q.id, choice, q.preferred(choice))
        assert respondent == client.cookies[COOKIE].split(".")[0]


def test_the_json_api_records_votes_and_maps_sides_to_models_on_the_server(client: TestClient, study_folder) -> None:
    study = load_study(study_folder)
    ids = client.get("/api/questions").json()
    assert ids == [q.id for q in study.questions]
    assert COOKIE in client.cookies
    for question_id, choice in zip(ids, ["left", "right", "left", "equal"], strict=False):
        response = client.post("/api/votes", json={"question": question_id, "choice": choice})
        assert response.status_code == 200 and response.json() == {"question": question_id, "choice": choice}
    client.post("/api/votes", json={"question": ids[0], "choice": "right"})
    votes = {v[1]: v for v in _votes(study_folder)}
    assert len(votes) == len(ids)
    first = study.questions[0]
    assert votes[first.id][2:] == ("right", first.right_model)


@pytest.mark.parametrize(
    ("content", "headers", "status"),
    [
        (b'{"question": 999, "choice": "left"}', {}, 404),
        (b'{"question": 1, "choice": "both"}', {}, 422),
        (b'{"question": "1", "choice": "left"}', {}, 422),
        (b'{"question": true, "choice": "left"}', {}, 422),
        (b'{"question": 1, "choice": "left", "respondent": "x"}', {}, 422),
        (b'["question", 1]', {}, 422),
        (b'{"question": 1, "choice": ', {}, 400),
        (b"\xff\xfe", {}, 400),
        (b'{"question": 1, "choice": "left", "pad": "' + b"x" * MAX_BODY_BYTES + b'"}', {}, 413),
        (b"question=1&choice=left", {"content-type": "application/x-www-form-urlencoded"}, 415),
        (b'{"question": 1, "choice": "left"}', {"content-type": "text/plain"}, 415),
        (b'{"question": 1, "choice": "left"}', {"origin": "http://evil.example"}, 403),
    ],
)
def test_the_api_refuses_bad_votes_and_stores_nothing(client, study_folder, content, headers, status) -> None:
    client.get("/api/questions")
    response = client.post("/api/votes", content=content, headers={"content-type": "application/json", **headers})
    assert response.status_code == status
    assert "error" in response.json()
    assert _votes(study_folder) == []


def test_a_vote_needs_the_respondent_cookie(client: TestClient, study_folder) -> None:
    response = client.post("/api/votes", json={"question": 1, "choice": "left"})
    assert response.status_code == 401
    client.cookies.set(COOKIE, "someone.0123456789abcdef0123456789abcdef")  # a forged id
    assert client.post("/api/votes", json={"question": 1, "choice": "left"}).status_code == 401
    assert _votes(study_folder) == []


def test_form_posts_from_other_sites_are_refused(client: TestClient, study_folder) -> None:
    token = _token(client.get("/questions/1").text)
    good = {"token": token, "choice": "left"}
    assert client.post("/questions/1", data={"choice": "left"}).status_code == 403, "no token"
    assert client.post("/questions/1", data={**good, "token": "0" * 32}).status_code == 403, "another token"
    assert client.post("/questions/1", data=good, headers={"origin": "http://evil.example"}).status_code == 403
    assert client.post("/questions/1", data={**good, "choice": "up"}).status_code == 422
    assert client.post("/questions/99", data=good).status_code == 404
    other = TestClient(client.app, base_url="http://127.0.0.1:8000", follow_redirects=False)
    assert other.post("/questions/1", data=good).status_code == 403, "a token is only good with its own cookie"
    assert _votes(study_folder) == []
    assert client.post("/questions/1", data=good, headers={"origin": "http://127.0.0.1:8000"}).status_code == 303
    assert len(_votes(study_folder)) == 1


def test_only_the_images_are_served(client: TestClient, study_folder) -> None:
    study = load_study(study_folder)
    client.get("/api/questions")
    image = client.get(f"/images/{study.questions[0].image}")
    assert image.status_code == 200 and image.content.startswith(b"\x89PNG")
    for path in ("/study.json", "/votes.sqlite", "/secret.key", "/images/", "/images/nothing.png", "/questions/0"):
        assert client.get(path).status_code == 404, path


def test_serve_binds_this_machine_only_unless_told(monkeypatch: pytest.MonkeyPatch, study_folder: Path) -> None:
    import uvicorn

    from cbam.cli import main

    calls = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **kwargs: calls.append(kwargs))
    assert main(["survey", "serve", str(study_folder)]) == 0
    assert main(["survey", "serve", str(study_folder), "--host", "0.0.0.0", "--port", "9000"]) == 0
    assert [(c["host"], c["port"]) for c in calls] == [("127.0.0.1", 8000), ("0.0.0.0", 9000)]
