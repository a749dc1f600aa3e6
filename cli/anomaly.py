"""``analytics anomaly score`` and ``analytics forecast``: the detector and
the forecaster of :mod:`analytics.anomaly` over CSV files, offline. The
same code, with the same configuration, as the service runs on the
workers."""

from __future__ import annotations

import click

from analytics.anomaly.csvio import forecast_csv, score_csv

_INPUT = click.option(
    "--input",
    "source",
    required=True,
    type=click.Path(exists=True, dir_okay=False),
    help="CSV with a header: timestamp,value (NAB's format).",
)
_OUTPUT = click.option(
    "--output",
    "target",
    required=True,
    type=click.Path(dir_okay=False, writable=True),
    help="Where to write the result (CSV).",
)


@click.group("anomaly")
def anomaly() -> None:
    """Streaming anomaly detection over a series (offline)."""


@anomaly.command("score")
@_INPUT
@_OUTPUT
def anomaly_score(source: str, target: str) -> None:
    """Score every point: writes timestamp,value,anomaly_score (a score in
    [0, 1] per input row, computed from the points up to it only)."""
    score_csv(source, target)


@click.command("forecast")
@_INPUT
@click.option("--horizon", required=True, type=click.IntRange(1, 100_000), help="How many steps to forecast.")
@_OUTPUT
def forecast(source: str, horizon: int, target: str) -> None:
    """Forecast the HORIZON steps after the input: writes
    timestamp,forecast,lower95,upper95 (and the 80% interval: lower80,upper80)."""
    forecast_csv(source, target, horizon)
