"""CI runs the benchmark suite in its quick smoke mode: it must still run end
to end and write its results. Nothing here is a timed pass/fail test."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.support import ROOT, python_env


@pytest.mark.slow
def test_benchmark_suite_runs_in_smoke_mode(tmp_path) -> None:
    result = subprocess.run([sys.executable, "-m", "bench", "--quick"], cwd=ROOT,
                            env=python_env({}), capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    results = json.loads((ROOT / "bench" / "results" / "latest.json").read_text())
    assert results["quick"] is True
    assert {"ingest", "e2e", "memory", "metrics", "ws"} <= set(results)
    assert results["e2e"]["ratio"] > 0 and results["memory"]["bytes_per_event"] > 0
