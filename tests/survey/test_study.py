"""`cbam survey build`: images both networks get right, their Grad-CAM regions, and a hidden assignment."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from starlette.testclient import TestClient

from cbam.cli import main
from cbam.data.loading import open_split
from cbam.data.transforms import eval_transform
from cbam.explain.cam import grad_cam
from cbam.explain.figure import load_networks
from cbam.survey.app import create_app
from cbam.survey.study import StudyError, build_study, load_study, region
from tests.survey.conftest import QUESTIONS


def _shrink(path: Path, size: tuple[int, int]) -> np.ndarray:
    """A study image back at the network's input size (it was enlarged by a whole factor, nearest)."""
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB").resize(size, Image.NEAREST))


def test_each_question_shows_the_regions_of_the_models_its_hidden_assignment_names(built_study: Path) -> None:
    study = load_study(built_study)
    source = study.source
    networks, _ = load_networks([Path(source["baseline"]), Path(source["cbam"])])
    by_model = dict(zip(("baseline", "cbam"), networks, strict=True))
    dataset = open_split(source["data"], source["split"])
    assert len(study.questions) == QUESTIONS
    for question in study.questions:
        image, label = dataset[question.index]
        x = eval_transform(16, 16)(image.convert("RGB")).unsqueeze(0)
        shown = _shrink(study.images_dir / question.image, (16, 16))
        for side, model in (("left", question.left_model), ("right", question.right_model)):
            network = by_model[model]
            assert int(network.model(x).argmax(1)) == label, "only images both networks classify correctly"
            cams, _ = grad_cam(network.model, x, targets=[label])
            expected = region(shown, cams[0].numpy())
            np.testing.assert_array_equal(_shrink(study.images_dir / getattr(question, side), (16, 16)), expected)
        assert {question.left_model, question.right_model} == {"baseline", "cbam"}


def test_nothing_served_reveals_which_model_is_on_which_side(study_folder: Path) -> None:
    study = load_study(study_folder)
    assert sorted(p.name for p in study.folder.iterdir()) == ["images", "study.json"]
    names = [p.name for p in study.images_dir.iterdir()]
    assert len(names) == 3 * QUESTIONS and all(re.fullmatch(r"[0-9a-f]{16}\.png", n) for n in names)
    client = TestClient(create_app(study))
    pages = [client.get("/").text, client.get("/api/questions").text, client.get("/thanks").text]
    pages += [client.get(f"/questions/{k}").text for k in range(1, QUESTIONS + 1)]
    secrets_ = {"baseline", "cbam", "left_model", "right_model", *study.source.values()} - {"val", 0, 0.6, "gradcam"}
    for page in pages:
        lowered = page.lower()
        assert not [s for s in secrets_ if str(s).lower() in lowered]
    for question in study.questions:
        with Image.open(study.images_dir / question.left) as image:
            assert not image.info, "no metadata in the served files"


def test_build_refuses_to_overwrite_asks_for_fewer_questions_and_leaves_nothing_half_written(
    built_study: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = load_study(built_study).source
    baseline, cbam = Path(source["baseline"]), Path(source["cbam"])
    with pytest.raises(StudyError, match="is never overwritten"):
        build_study(baseline, cbam, built_study, questions=1)
    with pytest.raises(StudyError, match="ask for --questions"):
        build_study(baseline, cbam, tmp_path / "too-many", questions=10_000)
    assert list(tmp_path.iterdir()) == [], "a failed build leaves no folder behind"
    args = ["survey", "build", "--baseline", str(baseline), "--cbam", str(cbam), "--questions", "2"]
    assert main([*args, "--output", str(tmp_path / "cli")]) == 0
    assert "2 questions" in capsys.readouterr().out
    assert len(json.loads((tmp_path / "cli" / "study.json").read_text())["questions"]) == 2
    assert main([*args, "--output", str(tmp_path / "cli")]) == 2
    assert "is never overwritten" in capsys.readouterr().err
    assert main(["survey", "tally", str(tmp_path / "nowhere")]) == 2
    assert "not a study folder" in capsys.readouterr().err
