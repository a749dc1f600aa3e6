"""The offline commands read timestamp,value CSVs and keep the input's timestamps verbatim."""

from __future__ import annotations

import csv
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest

from analytics.anomaly.csvio import forecast_csv, parse_timestamp, score_csv
from tests.analytics.anomaly.data import seasonal

ROOT = Path(__file__).resolve().parents[3]


def write_input(path: Path, n: int = 800) -> list[list[str]]:
    t, y = seasonal(n, step=300.0)
    stamps = [datetime.fromtimestamp(a, UTC).strftime("%Y-%m-%d %H:%M:%S") for a in t]
    rows = [[s, f"{b:.6f}"] for s, b in zip(stamps, y, strict=True)]
    rows[5][1] = "7"  # an integer-looking value is copied as written
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["timestamp", "value"])
        w.writerows(rows)
    return rows


def read(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def test_score_csv_round_trip(tmp_path: Path) -> None:
    rows = write_input(tmp_path / "in.csv")
    score_csv(str(tmp_path / "in.csv"), str(tmp_path / "out.csv"))
    out = read(tmp_path / "out.csv")
    assert [[r["timestamp"], r["value"]] for r in out] == rows
    assert all(0.0 <= float(r["anomaly_score"]) <= 1.0 for r in out)


def test_forecast_csv_writes_horizon_rows_on_the_grid(tmp_path: Path) -> None:
    rows = write_input(tmp_path / "in.csv")
    forecast_csv(str(tmp_path / "in.csv"), str(tmp_path / "fc.csv"), 24)
    out = read(tmp_path / "fc.csv")
    assert len(out) == 24
    last = parse_timestamp(rows[-1][0])
    assert [parse_timestamp(r["timestamp"]) for r in out] == [last + 300.0 * k for k in range(1, 25)]
    for r in out:
        lo95, lo80, f, hi80, hi95 = (float(r[c]) for c in ("lower95", "lower80", "forecast", "upper80", "upper95"))
        assert lo95 <= lo80 <= f <= hi80 <= hi95


def test_parse_timestamp_reads_naive_as_utc() -> None:
    assert parse_timestamp("1970-01-02 00:00:00") == 86400.0
    assert parse_timestamp("1970-01-02T01:00:00+01:00") == 86400.0


@pytest.mark.parametrize("command", ["score", "forecast"])
def test_the_command_line(tmp_path: Path, command: str) -> None:
    write_input(tmp_path / "in.csv", 400)
    # The ``analytics`` command: ``analytics anomaly score`` and ``analytics forecast``.
    args = [
        sys.executable,
        "-m",
        "cli.main",
        *(["anomaly", "score"] if command == "score" else ["forecast"]),
        "--input",
        str(tmp_path / "in.csv"),
        "--output",
        str(tmp_path / "out.csv"),
    ]
    if command == "forecast":
        args += ["--horizon", "6"]
    done = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert len(read(tmp_path / "out.csv")) == (400 if command == "score" else 6)
