"""The core without the extras: `import cbam`, the zoo and the core commands run; the rest say which extra."""

import json
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from cbam.errors import DependencyError
from cbam.extras import EXTRAS, import_optional, require_extra

ROOT = Path(__file__).resolve().parents[1]
OPTIONAL_MODULES = sorted({module for packages in EXTRAS.values() for module in packages.values()})

# Run in a fresh interpreter: each optional module is marked absent in sys.modules (as when not installed:
# importing it raises ModuleNotFoundError, importlib.util.find_spec returns None), then cbam is used.
DRIVER = """
import contextlib, io, json, sys
for name in sys.argv[1].split(","):
    sys.modules[name] = None
import cbam
import cbam.cli
cbam.create_model("resnet18_cbam")
results = []
for argv in json.loads(sys.argv[2]):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cbam.cli.main(argv)
    results.append({"argv": argv, "code": code, "stdout": out.getvalue(), "stderr": err.getvalue()})
print(json.dumps(results))
"""

CORE_COMMANDS = [["models", "resnet18*"], ["profile", "resnet18"], ["detect", "models"]]
EXTRA_COMMANDS = {
    "survey": [["survey", "serve", "study"], ["survey", "tally", "study"]],
    "detection": [["detect", "eval", "--checkpoint", "missing.pt"], ["detect", "train", "--output", "run"]],
    "explain": [["cam", "--checkpoint", "missing.pt", "--output", "cam.png"]],
    "compare": [["compare", "--arch", "resnet18", "--attention", "none,cbam", "--data", "d", "--output", "c"]],
    "cluster": [
        [
            "compare",
            "--arch",
            "resnet18",
            "--attention",
            "none,cbam",
            "--data",
            "d",
            "--output",
            "c",
            "--seeds",
            "2",
            "--scheduler",
            "slurm",
        ]
    ],
}


@pytest.fixture(scope="module")
def without_extras(tmp_path_factory: pytest.TempPathFactory) -> list[dict]:
    """Every command's exit code and output in one interpreter that has none of the optional packages."""
    commands = [*CORE_COMMANDS, *(argv for group in EXTRA_COMMANDS.values() for argv in group)]
    run = subprocess.run(
        [sys.executable, "-c", DRIVER, ",".join(OPTIONAL_MODULES), json.dumps(commands)],
        cwd=tmp_path_factory.mktemp("no-extras"),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr
    return json.loads(run.stdout.splitlines()[-1])


def test_core_runs_without_extras(without_extras: list[dict]) -> None:
    core = {tuple(r["argv"]): r for r in without_extras}
    for argv in CORE_COMMANDS:
        result = core[tuple(argv)]
        assert result["code"] == 0, result
    assert "resnet18_cbam" in core[("models", "resnet18*")]["stdout"].split()
    assert "ResNet18" in core[("profile", "resnet18")]["stdout"]


@pytest.mark.parametrize("extra", sorted(EXTRA_COMMANDS))
def test_command_names_its_extra(without_extras: list[dict], extra: str) -> None:
    by_argv = {tuple(r["argv"]): r for r in without_extras}
    for argv in EXTRA_COMMANDS[extra]:
        result = by_argv[tuple(argv)]
        lines = result["stderr"].strip().splitlines()
        assert result["code"] == 2 and len(lines) == 1, result
        assert lines[0].endswith(f"pip install 'cbam[{extra}]'"), lines


def test_import_optional_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pytorch_grad_cam", None)
    with pytest.raises(DependencyError, match=r"^Grad-CAM needs grad-cam, matplotlib: pip install 'cbam\[explain\]'$"):
        import_optional("pytorch_grad_cam", "explain", "Grad-CAM")
    with pytest.raises(DependencyError, match=r"cbam cam needs .*'cbam\[explain\]'"):
        require_extra("explain", "cbam cam")
    require_extra("digits", "cluttered-digits")  # installed here: no error


def test_extras_match_pyproject() -> None:
    """Each extra's packages named in the errors are the ones pip installs for it; `all` holds every extra."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    core = {requirement.split(">")[0].split("<")[0].split("=")[0] for requirement in project["dependencies"]}
    for extra, packages in EXTRAS.items():
        pinned = {requirement.split(">")[0] for requirement in extras[extra]}
        assert set(packages) <= pinned, extra
        assert not set(packages) & core, extra
    assert extras["all"] == [f"cbam[{','.join(sorted(EXTRAS.keys() | {'export'}))}]"]
    assert "cbam[all]" in extras["dev"]


def test_ships_py_typed() -> None:
    assert (ROOT / "src" / "cbam" / "py.typed").is_file()
    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert "py.typed" in setuptools["package-data"]["cbam"]
