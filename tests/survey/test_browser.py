"""A person's view: headless Chromium answers the whole survey by clicking, and the tally equals the clicks.

Needs Debian's `chromium` and `chromium-driver` (`.ci/run` installs them) and selenium; skips, saying
which is missing, where they cannot be had.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
from collections import Counter
from pathlib import Path

import pytest

from cbam.survey.store import VoteStore
from cbam.survey.study import load_study
from cbam.survey.tally import tally_votes
from tests.survey.conftest import running_server

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
MISSING = [
    name
    for name, found in (
        ("selenium (pip install selenium)", importlib.util.find_spec("selenium")),
        ("chromium (apt-get install chromium)", CHROMIUM),
        ("chromedriver (apt-get install chromium-driver)", CHROMEDRIVER),
    )
    if not found
]
pytestmark = pytest.mark.skipif(bool(MISSING), reason=f"no browser to click with: missing {', '.join(MISSING)}")


@pytest.fixture
def browser(tmp_path: Path):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    os.environ["SE_OFFLINE"] = "true"  # selenium must never try to download a driver or browser
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        f"--user-data-dir={tmp_path / 'profile'}", "--window-size=390,900",  # a phone's width
    ):  # fmt: skip
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=Service(executable_path=CHROMEDRIVER))
    driver.set_page_load_timeout(30)
    yield driver
    driver.quit()


def test_clicking_through_the_survey_is_what_the_tally_counts(browser, study_folder: Path) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as shows
    from selenium.webdriver.support.ui import WebDriverWait

    def wait_for(condition) -> None:
        WebDriverWait(browser, 20).until(condition)

    study = load_study(study_folder)
    total = len(study.questions)
    clicks = ["left", "equal", "right", "left"][:total]
    with running_server(study_folder) as base:
        browser.get(base + "/")
        browser.find_element(By.LINK_TEXT, "Start").click()
        for k, choice in enumerate(clicks, start=1):
            wait_for(shows.text_to_be_present_in_element((By.CLASS_NAME, "progress"), f"Question {k} of {total}"))
            images = browser.find_elements(By.TAG_NAME, "img")
            loaded = [browser.execute_script("return arguments[0].naturalWidth", image) for image in images]
            assert len(images) == 3 and all(loaded), "the whole image and both regions are shown"
            browser.find_element(By.ID, f"choice-{choice}").click()
        wait_for(shows.title_is("Thank you"))
        assert browser.find_element(By.ID, "summary").text == f"You answered {total} of {total} questions."
        browser.get(base + "/questions/1")  # a change of mind on the first question
        assert browser.find_element(By.ID, f"choice-{clicks[0]}").get_attribute("aria-pressed") == "true"
        browser.find_element(By.ID, "choice-right").click()
        clicks[0] = "right"
        wait_for(shows.text_to_be_present_in_element((By.CLASS_NAME, "progress"), f"Question 2 of {total}"))
    expected = Counter(q.preferred(c) for q, c in zip(study.questions, clicks, strict=True))
    tally = tally_votes(study, VoteStore(study.votes_path).votes())
    assert (tally.equal, tally.baseline, tally.cbam) == (expected["equal"], expected["baseline"], expected["cbam"])
    assert tally.respondents == 1 and tally.votes == total
