"""The Triton kernels give primitives.py's results, run by Triton's CPU interpreter in a process of their own.

TRITON_INTERPRET has to be set before triton is first imported, which this process may already have done.
"""

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]


@pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="needs triton")
def test_triton_kernels_match_primitives() -> None:
    env = {**os.environ, "TRITON_INTERPRET": "1"}  # CBAM_TEST_SEED passes on
    command = [sys.executable, "-m", "tests.layers.fused._triton_parity"]
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, f"{result.stdout}\n{result.stderr}"
