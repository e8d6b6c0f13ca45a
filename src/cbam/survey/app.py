"""The survey's web app (Starlette): one question per page, plain HTML forms, and a JSON API.

Security, in the order a request meets it:
- the respondent is an anonymous random id in a signed, HttpOnly, SameSite=Lax cookie;
- a form post must carry a token derived from that id (and, when the browser sends one, a same-host
  Origin), so no other site can vote in a respondent's name; the JSON API takes only
  `application/json` bodies, which no cross-site form can send;
- bodies are size-limited, every field is validated before anything is stored (4xx otherwise);
- files come only from the study's images folder; study.json and the votes file are never served.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates

from cbam.survey.store import VoteStore
from cbam.survey.study import CHOICES, Question, Study

COOKIE = "respondent"
COOKIE_MAX_AGE_S = 365 * 24 * 3600
MAX_BODY_BYTES = 1024
SECRET_FILE = "secret.key"
CRITERION = "Given the class label, which region seems more class-discriminative?"
CHOICE_TEXT = {"left": "Left", "right": "Right", "equal": "They seem equal"}
TEMPLATES = Jinja2Templates(directory=str(Path(__file__).with_name("templates")))


def _study_secret(folder: Path) -> bytes:
    """The key that signs respondent ids, made on first start and kept so cookies outlive a restart."""
    path = folder / SECRET_FILE
    if not path.exists():
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            pass
        else:
            with os.fdopen(fd, "w") as f:
                f.write(secrets.token_hex(32))
    return bytes.fromhex(path.read_text().strip())


class Survey:
    """The study, its votes and its signing key: what every request needs."""

    def __init__(self, study: Study) -> None:
        self.study = study
        self.store = VoteStore(study.votes_path)
        self._key = _study_secret(study.folder)

    def _mac(self, purpose: str, respondent: str) -> str:
        return hmac.new(self._key, f"{purpose}:{respondent}".encode(), hashlib.sha256).hexdigest()[:32]

    def cookie_value(self, respondent: str) -> str:
        return f"{respondent}.{self._mac('id', respondent)}"

    def respondent(self, request: Request) -> str | None:
        """The respondent named by a correctly signed cookie, or None."""
        respondent, _, mac = request.cookies.get(COOKIE, "").partition(".")
        return respondent if respondent and hmac.compare_digest(mac, self._mac("id", respondent)) else None

    def form_token(self, respondent: str) -> str:
        return self._mac("form", respondent)


def _set_cookie(response: Response, survey: Survey, respondent: str) -> Response:
    response.set_cookie(
        COOKIE, survey.cookie_value(respondent), max_age=COOKIE_MAX_AGE_S, httponly=True, samesite="lax"
    )
    return response


def _with_respondent(request: Request) -> tuple[str, bool]:
    """This request's respondent, and whether the id is new (so the response must set the cookie)."""
    known = request.app.state.survey.respondent(request)
    return (known, False) if known else (secrets.token_urlsafe(16), True)


def _render(request: Request, template: str, context: dict[str, Any], respondent: str, new: bool) -> Response:
    response = TEMPLATES.TemplateResponse(request, template, context)
    response.headers["Cache-Control"] = "no-store"
    return _set_cookie(response, request.app.state.survey, respondent) if new else response


async def _body(request: Request) -> bytes:
    """The request body, refusing more than MAX_BODY_BYTES (413) without reading it all."""
    declared = request.headers.get("content-length")
    if declared is not None and (not declared.isdigit() or int(declared) > MAX_BODY_BYTES):
        raise HTTPException(413, f"bodies are limited to {MAX_BODY_BYTES} bytes")
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_BODY_BYTES:
            raise HTTPException(413, f"bodies are limited to {MAX_BODY_BYTES} bytes")
    return body


def _check_origin(request: Request) -> None:
    """A browser's Origin (when sent) must be this server; other sites may not post here."""
    origin = request.headers.get("origin")
    if origin is not None and urlsplit(origin).netloc != request.headers.get("host"):
        raise HTTPException(403, "cross-site requests are refused")


async def _store_vote(survey: Survey, respondent: str, question_id: Any, choice: Any) -> None:
    """Validate a vote and store it (404 unknown question, 422 unknown choice)."""
    if not isinstance(question_id, int) or isinstance(question_id, bool):
        raise HTTPException(422, "question must be an integer id")
    question = survey.study.question(question_id)
    if question is None:
        raise HTTPException(404, f"no question {question_id}")
    if choice not in CHOICES:
        raise HTTPException(422, f"choice must be one of {', '.join(CHOICES)}")
    await run_in_threadpool(survey.store.record, respondent, question.id, choice, question.preferred(choice))


def _question_at(survey: Survey, request: Request) -> tuple[int, Question]:
    """The position (1..N) in the URL and its question; 404 outside the survey."""
    position = request.path_params["position"]
    if not 1 <= position <= len(survey.study.questions):
        raise HTTPException(404, f"no question {position}")
    return position, survey.study.questions[position - 1]


def _require_content_type(request: Request, media_type: str, message: str) -> None:
    if request.headers.get("content-type", "").split(";")[0].strip() != media_type:
        raise HTTPException(415, message)


async def welcome(request: Request) -> Response:
    respondent, new = _with_respondent(request)
    study = request.app.state.survey.study
    context = {"criterion": CRITERION, "total": len(study.questions)}
    return _render(request, "welcome.html", context, respondent, new)


async def question_page(request: Request) -> Response:
    survey: Survey = request.app.state.survey
    position, question = _question_at(survey, request)
    respondent, new = _with_respondent(request)
    answered = {} if new else await run_in_threadpool(survey.store.answers, respondent)
    context = {
        "question": question,
        "position": position,
        "total": len(survey.study.questions),
        "criterion": CRITERION,
        "choices": CHOICE_TEXT,
        "current": answered.get(question.id),
        "token": survey.form_token(respondent),
    }
    return _render(request, "question.html", context, respondent, new)


async def vote_form(request: Request) -> Response:
    """A vote from the page's form; then the next question, or the thank-you page after the last."""
    survey: Survey = request.app.state.survey
    position, question = _question_at(survey, request)
    _check_origin(request)
    respondent = survey.respondent(request)
    if respondent is None:
        raise HTTPException(403, "no respondent cookie: open the survey's first page")
    _require_content_type(request, "application/x-www-form-urlencoded", "votes are posted by the page's form")
    try:
        fields = parse_qs((await _body(request)).decode("utf-8", errors="replace"), max_num_fields=4)
    except ValueError:
        raise HTTPException(400, "too many form fields") from None
    token = fields.get("token", [""])[0]
    if not hmac.compare_digest(token, survey.form_token(respondent)):
        raise HTTPException(403, "the form's token does not match; reload the page")
    choice = fields.get("choice", [None])[0]
    await _store_vote(survey, respondent, question.id, choice)
    follows = f"/questions/{position + 1}" if position < len(survey.study.questions) else "/thanks"
    return RedirectResponse(follows, status_code=303)


async def thanks(request: Request) -> Response:
    survey: Survey = request.app.state.survey
    respondent, new = _with_respondent(request)
    answered = {} if new else await run_in_threadpool(survey.store.answers, respondent)
    context = {"answered": len(answered), "total": len(survey.study.questions)}
    return _render(request, "thanks.html", context, respondent, new)


async def api_questions(request: Request) -> Response:
    survey: Survey = request.app.state.survey
    respondent, new = _with_respondent(request)
    response = JSONResponse([q.id for q in survey.study.questions])
    return _set_cookie(response, survey, respondent) if new else response


async def api_vote(request: Request) -> Response:
    """`{"question": ID, "choice": "left" | "right" | "equal"}` as JSON, from a respondent with a cookie."""
    survey: Survey = request.app.state.survey
    _check_origin(request)
    _require_content_type(request, "application/json", "send the vote as application/json")
    body = await _body(request)
    respondent = survey.respondent(request)
    if respondent is None:
        raise HTTPException(401, "no respondent cookie: GET /api/questions first")
    try:
        vote = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise HTTPException(400, "the body is not JSON") from None
    if not isinstance(vote, dict) or set(vote) != {"question", "choice"}:
        raise HTTPException(422, 'the body must be {"question": ID, "choice": "left" | "right" | "equal"}')
    await _store_vote(survey, respondent, vote["question"], vote["choice"])
    return JSONResponse({"question": vote["question"], "choice": vote["choice"]})


async def _error(request: Request, exc: HTTPException) -> Response:
    """JSON errors for the API, a short page for people."""
    if request.url.path.startswith("/api/"):
        return JSONResponse({"error": exc.detail}, status_code=exc.status_code)
    page = TEMPLATES.TemplateResponse(request, "error.html", {"status": exc.status_code, "detail": exc.detail})
    page.status_code = exc.status_code
    return page


def create_app(study: Study) -> Starlette:
    """The survey app for a built study."""
    routes = [
        Route("/", welcome),
        Route("/questions/{position:int}", question_page, methods=["GET"]),
        Route("/questions/{position:int}", vote_form, methods=["POST"]),
        Route("/thanks", thanks),
        Route("/api/questions", api_questions, methods=["GET"]),
        Route("/api/votes", api_vote, methods=["POST"]),
        Mount("/images", StaticFiles(directory=study.images_dir, follow_symlink=False), name="images"),
    ]
    app = Starlette(routes=routes, exception_handlers={HTTPException: _error})
    app.state.survey = Survey(study)
    return app
