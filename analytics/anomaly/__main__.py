"""``python -m analytics.anomaly score --input IN --output OUT`` and
``python -m analytics.anomaly forecast --input IN --horizon N --output OUT``: the offline commands
until the ``analytics`` CLI takes them over (argparse, so this needs nothing beyond the package)."""

from __future__ import annotations

import argparse
import sys

from analytics.anomaly.csvio import forecast_csv, score_csv


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m analytics.anomaly", description=__doc__)
    sub = ap.add_subparsers(dest="command", required=True)
    sc = sub.add_parser("score", help="anomaly scores of a timestamp,value CSV")
    sc.add_argument("--input", required=True)
    sc.add_argument("--output", required=True)
    fc = sub.add_parser("forecast", help="forecast the next N steps of a timestamp,value CSV")
    fc.add_argument("--input", required=True)
    fc.add_argument("--horizon", type=int, required=True)
    fc.add_argument("--output", required=True)
    a = ap.parse_args(argv)
    if a.command == "score":
        score_csv(a.input, a.output)
    else:
        if a.horizon < 1:
            ap.error("--horizon must be >= 1")
        forecast_csv(a.input, a.output, a.horizon)
    return 0


if __name__ == "__main__":
    sys.exit(main())
