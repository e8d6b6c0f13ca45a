"""A small built study (two networks trained for seconds on coloured squares) and a real server for it."""

from __future__ import annotations

import contextlib
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import uvicorn

from cbam.runs import fit
from cbam.survey.app import create_app
from cbam.survey.study import build_study, load_study
from tests.conftest import tiny_config, write_image_folder

QUESTIONS = 4


@pytest.fixture(scope="session")
def built_study(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A study of QUESTIONS images from a baseline and a CBAM checkpoint; copy it before voting into it."""
    root = tmp_path_factory.mktemp("survey")
    data = write_image_folder(root / "data")
    for name, attention in (("baseline", "none"), ("cbam", "cbam")):
        fit(tiny_config(data, root / name, attention=attention, epochs=3))
    build_study(root / "baseline" / "best.pt", root / "cbam" / "best.pt", root / "study", questions=QUESTIONS)
    return root / "study"


@pytest.fixture
def study_folder(built_study: Path, tmp_path: Path) -> Path:
    """A fresh copy of the built study, with no votes."""
    return Path(shutil.copytree(built_study, tmp_path / "study"))


@contextlib.contextmanager
def running_server(folder: Path) -> Iterator[str]:
    """The survey served by uvicorn on 127.0.0.1 and a free port, in a thread; yields its base URL."""
    server = uvicorn.Server(uvicorn.Config(create_app(load_study(folder)), host="127.0.0.1", port=0, log_level="error"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the survey server did not start")
        time.sleep(0.02)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=20)
