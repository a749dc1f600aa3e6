"""``python -m bench.anomaly [--no-nab] [--jobs N]``: what the anomaly detector costs and scores
(also the ``anomaly`` entry of ``python -m bench``, through :func:`run`).

Prints the detector's CPU cost per point (µs, best of a few runs over a synthetic series), the
size of one series' state in bytes and, where the NAB kit is on the machine (``NAB_KIT`` or
``/work/shared/nab``), the final lines of NAB's runner at the shipped threshold and of the
forecast evaluation. Standalone: the package under test and the standard library only.
"""

from __future__ import annotations

import argparse
import math
import os
import random
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from analytics.anomaly import DEFAULT_THRESHOLD, Detector

ROOT = Path(__file__).resolve().parents[1]
#: One short series of the dev split, for the smoke run (``--quick``).
SMOKE_FILE = "artificialWithAnomaly/art_daily_jumpsup.csv"
KITS = [os.environ.get("NAB_KIT", ""), "/work/shared/nab", str(ROOT.parent / "shared" / "nab")]


def synthetic(n: int, seed: int = 1) -> list[tuple[float, float]]:
    """A 5-minute series with a daily cycle, noise and a few spikes."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        t = 1_396_310_400.0 + 300.0 * i
        v = 50 + 10 * math.sin(2 * math.pi * (t % 86400) / 86400) + rng.gauss(0, 1)
        out.append((t, v + (15.0 if i % 2000 == 1999 else 0.0)))
    return out


def cost_per_point(n: int = 20_000, repeats: int = 3) -> float:
    """Best-of-``repeats`` CPU seconds per update, in µs (the least disturbed by neighbours)."""
    data = synthetic(n)
    best = math.inf
    for _ in range(repeats):
        det = Detector()
        start = time.process_time()
        for t, v in data:
            det.update(t, v)
        best = min(best, time.process_time() - start)
    return 1e6 * best / n


def state_size(n: int = 20_000) -> int:
    det = Detector()
    for t, v in synthetic(n):
        det.update(t, v)
    return len(det.to_bytes())


def last_lines(args: list[str], prefixes: tuple[str, ...]) -> list[str]:
    done = subprocess.run(args, capture_output=True, text=True, cwd=ROOT)
    lines = [line for line in done.stdout.splitlines() if line.startswith(prefixes)]
    if done.returncode != 0:
        lines.append(f"(exit {done.returncode}) {done.stderr.strip()[-500:]}")
    return lines


def find_kit() -> Path | None:
    return next((Path(k) for k in KITS if k and (Path(k) / "run_detector.py").is_file()), None)


def nab_lines(kit: Path, jobs: int = 1, files: str | None = None) -> list[str]:
    """NAB's ``SCORE`` and ``CAUSALITY`` lines for ``analytics anomaly score`` at the shipped
    threshold, over the kit's files (the dev split) or ``files`` (a comma list: a smoke run)."""
    py = shlex.quote(sys.executable)
    score = f"cd {shlex.quote(str(ROOT))} && {py} -m cli.main anomaly score --input {{in}} --output {{out}}"
    with tempfile.TemporaryDirectory(prefix="nab-anomaly-") as results:
        runner = [sys.executable, str(kit / "run_detector.py"), "--cmd", score, "--out", results]
        runner += ["--threshold", str(DEFAULT_THRESHOLD), "--jobs", str(jobs)]
        if files is not None:
            runner += ["--files", files, "--causality-files", "1"]
        return [
            line.split(", results in")[0] + ")" if line.startswith("SCORE") else line
            for line in last_lines(runner, ("SCORE", "CAUSALITY", "(exit"))
        ]


def forecast_lines(kit: Path, jobs: int = 1) -> list[str]:
    """The forecast evaluation's summary lines for ``analytics forecast`` (MASE, coverage)."""
    py = shlex.quote(sys.executable)
    fc = f"cd {shlex.quote(str(ROOT))} && {py} -m cli.main forecast --input {{in}} --horizon {{h}} --output {{out}}"
    evaluator = [sys.executable, str(kit / "forecast_eval.py"), "--cmd", fc, "--jobs", str(jobs)]
    return last_lines(evaluator, ("  command", "  seasonal naive", "  naive", "  95%", "FORECAST", "(exit"))


def run(quick: bool = False) -> dict[str, Any]:
    """The figures for ``python -m bench``: cost per point and state size; the NAB score and
    forecast yardsticks over the dev split unless ``quick``, where a smoke run scores one file."""
    out: dict[str, Any] = {
        "detector_us_per_point": cost_per_point(2_000 if quick else 20_000, 1 if quick else 3),
        "state_bytes_per_series": state_size(2_000 if quick else 20_000),
    }
    kit = find_kit()
    if kit is None:
        out["nab"] = "skipped (no NAB kit on this machine)"
    elif quick:
        out["nab_smoke"] = " | ".join(nab_lines(kit, files=SMOKE_FILE))
    else:
        jobs = max(1, min(4, os.cpu_count() or 1))
        out["nab"] = " | ".join(nab_lines(kit, jobs))
        out["forecast"] = " | ".join(forecast_lines(kit, jobs))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.anomaly", description=__doc__.split("\n\n")[0])
    ap.add_argument("--no-nab", action="store_true", help="skip the NAB runs")
    ap.add_argument("--jobs", type=int, default=1, help="files the NAB runner scores in parallel")
    a = ap.parse_args(argv)
    print(f"detector cost per point: {cost_per_point():.1f} us (CPU, best of 3 over 20000 points)")
    print(f"detector state size: {state_size()} bytes per series")
    kit = find_kit()
    if a.no_nab or kit is None:
        print("NAB: skipped" + ("" if a.no_nab else " (no NAB kit on this machine)"))
        return 0
    for line in nab_lines(kit, a.jobs) + forecast_lines(kit, a.jobs):
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
