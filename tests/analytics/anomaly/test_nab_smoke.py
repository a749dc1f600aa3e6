"""NAB's runner on a few files through the real command line: outputs valid and causal.

Skipped where the NAB kit (a shared, read-only folder) is not on the machine."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from analytics.anomaly import DEFAULT_THRESHOLD

ROOT = Path(__file__).resolve().parents[3]
CANDIDATES = [Path(os.environ.get("NAB_KIT", "/nonexistent")), Path("/work/shared/nab"), ROOT.parent / "shared" / "nab"]
KIT = next((p for p in CANDIDATES if (p / "run_detector.py").is_file()), None)


@pytest.mark.skipif(KIT is None, reason="the NAB kit is not on this machine")
def test_nab_runner_scores_and_finds_the_detector_causal(tmp_path: Path) -> None:
    assert KIT is not None
    files = "artificialWithAnomaly/art_daily_jumpsup.csv,realAdExchange/exchange-3_cpc_results.csv"
    python = shlex.quote(sys.executable)
    cmd = f"cd {shlex.quote(str(ROOT))} && {python} -m cli.main anomaly score --input {{in}} --output {{out}}"
    done = subprocess.run(
        [
            sys.executable,
            str(KIT / "run_detector.py"),
            "--cmd",
            cmd,
            "--files",
            files,
            "--threshold",
            str(DEFAULT_THRESHOLD),
            "--seed",
            "1",
            "--out",
            str(tmp_path / "results"),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "CAUSALITY PASS" in done.stdout
    assert "SCORE standard=" in done.stdout
