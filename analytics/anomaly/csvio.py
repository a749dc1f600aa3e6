"""CSV in and out for the offline commands (``analytics anomaly score``, ``analytics forecast``: :mod:`cli.anomaly`).

Input: a header ``timestamp,value`` (other columns ignored), timestamps in ISO 8601 such as
``2014-04-01 00:00:00``. A naive timestamp is read as UTC, so time-of-day features see the
clock time written in the file. Output rows keep the input timestamp strings verbatim.
"""

from __future__ import annotations

import csv
import math
from datetime import UTC, datetime, timedelta

from analytics.anomaly.detector import Detector
from analytics.anomaly.forecast import forecast

__all__ = ["forecast_csv", "parse_timestamp", "read_series", "score_csv"]

_TSFMT = "%Y-%m-%d %H:%M:%S"


def parse_timestamp(text: str) -> float:
    """Seconds since the epoch; a timestamp without an offset is taken as UTC."""
    t = datetime.fromisoformat(text.strip())
    if t.tzinfo is None:
        t = t.replace(tzinfo=UTC)
    return t.timestamp()


def read_series(path: str) -> tuple[list[str], list[str], list[float], list[float]]:
    """(timestamp strings, value strings, seconds, values); an unparsable value reads as NaN."""
    raw_ts: list[str] = []
    raw_vals: list[str] = []
    secs: list[float] = []
    vals: list[float] = []
    with open(path, newline="") as f:
        reader = csv.reader(f)
        head = [h.strip().lower() for h in next(reader)]
        ti, vi = head.index("timestamp"), head.index("value")
        for row in reader:
            if not row or not any(cell.strip() for cell in row):
                continue
            raw_ts.append(row[ti])
            raw_vals.append(row[vi])
            secs.append(parse_timestamp(row[ti]))
            try:
                vals.append(float(row[vi]))
            except ValueError:
                vals.append(math.nan)
    return raw_ts, raw_vals, secs, vals


def score_csv(in_path: str, out_path: str) -> None:
    """Write ``timestamp,value,anomaly_score`` (one row per input row), streaming the detector."""
    raw_ts, raw_vals, secs, vals = read_series(in_path)
    det = Detector()
    with open(out_path, "w", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(["timestamp", "value", "anomaly_score"])
        for ts, rv, t, v in zip(raw_ts, raw_vals, secs, vals, strict=True):
            w.writerow([ts, rv, repr(det.update(t, v).score)])


def forecast_csv(in_path: str, out_path: str, horizon: int) -> None:
    """Write ``timestamp,forecast,lower95,upper95,lower80,upper80`` for the next ``horizon`` steps."""
    _, _, secs, vals = read_series(in_path)
    fc = forecast(secs, vals, horizon)
    with open(out_path, "w", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(["timestamp", "forecast", "lower95", "upper95", "lower80", "upper80"])
        for i, t in enumerate(fc.timestamps):
            when = datetime(1970, 1, 1) + timedelta(seconds=float(t))
            w.writerow(
                [
                    when.strftime(_TSFMT),
                    repr(float(fc.point[i])),
                    repr(float(fc.lower95[i])),
                    repr(float(fc.upper95[i])),
                    repr(float(fc.lower80[i])),
                    repr(float(fc.upper80[i])),
                ]
            )
