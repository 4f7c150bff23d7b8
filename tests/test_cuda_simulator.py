"""Runs tests/cudasim in a separate pytest process with NUMBA_ENABLE_CUDASIM=1 (numba reads the flag
once, at import, so the simulator cannot share this process)."""

import os
import subprocess
import sys
from pathlib import Path

TESTS = Path(__file__).parent


def test_cuda_twins_pass_under_the_simulator():
    env = dict(os.environ, NUMBA_ENABLE_CUDASIM="1")
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:xdist", str(TESTS / "cudasim")],
        cwd=TESTS.parent, env=env, capture_output=True, text=True, timeout=1800)
    summary = result.stdout.strip().splitlines()[-1] if result.stdout.strip() else ""
    assert result.returncode == 0, f"simulator run failed ({summary}):\n{result.stdout[-6000:]}\n{result.stderr[-2000:]}"
    assert " passed" in summary and "skipped" not in summary, summary
