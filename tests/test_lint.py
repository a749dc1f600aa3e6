"""Code style is checked like behaviour: ruff everywhere, mypy on the core."""
from __future__ import annotations

import subprocess
import sys

from testkit import ROOT


def test_ruff_is_clean() -> None:
    result = subprocess.run([sys.executable, "-m", "ruff", "check", "analytics", "tasks", "web", "tests", "bench"],
                            cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-4000:]


def test_mypy_is_clean_on_the_core() -> None:
    result = subprocess.run([sys.executable, "-m", "mypy", "analytics"], cwd=ROOT,
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-4000:]
