"""The Triton kernels give primitives.py's results, run by Triton's CPU interpreter in a process of their own.

TRITON_INTERPRET has to be set before triton is first imported, which this process may already have done.
"""

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest


@pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="needs triton")
def test_triton_kernels_match_primitives() -> None:
    script = Path(__file__).with_name("_triton_parity.py")
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    result = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, f"{result.stdout}\n{result.stderr}"
