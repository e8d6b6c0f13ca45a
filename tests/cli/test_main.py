"""`cbam` itself: the entry points, the version, and how errors end a command."""

import json
import subprocess
import sys

import pytest

import cbam
from cbam.cli import main, networks


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_python_dash_m_runs_the_cli():
    for module in ("cbam", "cbam.cli"):
        done = subprocess.run(
            [sys.executable, "-m", module, "profile", "resnet18", "--json"], capture_output=True, text=True, check=True
        )
        assert json.loads(done.stdout)["params"] == 11_689_512


def test_version_is_the_installed_one(capsys):
    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0 and capsys.readouterr().out.strip() == f"cbam {cbam.__version__}"


def test_a_bug_is_a_traceback_and_exit_1_not_a_user_mistake(capsys, monkeypatch):
    def broken(args):
        return {}["missing"]  # a deliberate bug: KeyError is no user mistake

    monkeypatch.setattr(networks, "cmd_models", broken)
    code, _, err = run(capsys, "models")
    assert code == 1 and "Traceback" in err and "KeyError" in err and "a bug in cbam" in err

    def value_bug(args):
        raise ValueError("an internal check failed")  # plain ValueError: ours, not the user's

    monkeypatch.setattr(networks, "cmd_models", value_bug)
    code, _, err = run(capsys, "models")
    assert code == 1 and "Traceback" in err


def test_traceback_flag_and_variable_show_it_for_user_errors_too(capsys, monkeypatch):
    code, _, err = run(capsys, "--traceback", "profile", "resnet5")
    assert code == 2 and "Traceback" in err and err.strip().splitlines()[-1].startswith("cbam profile: error: unknown")
    monkeypatch.setenv("CBAM_TRACEBACK", "1")
    code, _, err = run(capsys, "profile", "resnet5")
    assert code == 2 and "Traceback" in err
