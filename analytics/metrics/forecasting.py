"""Forecasts of a metric's rollups (``GET /v1/metrics/{name}/forecast``).

The history is the metric's recent past read as a metric query reads it
(the caller's ``read``, :meth:`MetricService.get_metric`, so that a forecast
follows the query's rules: names, ``events.<type>`` counts, tag filters,
``groupBy`` and what a user-scoped key may ask), and each series is handed
to :func:`analytics.anomaly.forecast.forecast`, which stays pure numpy.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import marshmallow
import numpy as np

from analytics.anomaly.forecast import forecast
from analytics.errors import ValidationError
from analytics.metrics.schemas import metric_forecast_schema

#: History read: the last week at the bucket...
HISTORY_SECONDS = 7 * 86_400
#: ... but at least this many buckets (a week of days is too few to forecast)...
MIN_HISTORY_BUCKETS = 60
#: ... and at most this many: the forecaster's backtest grows with it.
MAX_HISTORY_POINTS = 2_000
#: Fewer points of history than this: no forecast, a note says why.
MIN_POINTS = 10
#: Series forecast in one answer: each costs up to a few tenths of a second.
MAX_SERIES = 20
#: Aggregates for which an empty bucket means zero, not "unknown".
ZERO_WHEN_EMPTY = frozenset({"count", "sum", "rate"})

#: A metric query (``GET /v1/metrics/{name}`` parameters) -> its answer.
Reader = Callable[[dict[str, Any]], dict[str, Any]]


def history_range(bucket: int, now_ms: int) -> tuple[int, int]:
    """(start, end) in epoch seconds of the history: whole buckets up to the
    one holding now, excluded since it is not complete (a partial count
    would read as a drop)."""
    end = now_ms // 1000 // bucket * bucket
    buckets = min(MAX_HISTORY_POINTS, max(MIN_HISTORY_BUCKETS, HISTORY_SECONDS // bucket))
    return end - buckets * bucket, end


def forecast_metric(name: str, query: Mapping[str, Any], read: Reader, *, now_ms: int) -> dict[str, Any]:
    """The forecast answer for ``query`` (raw strings): one entry per series
    of the metric query, with ``horizon`` points ``[ts, forecast, lower80,
    upper80, lower95, upper95]`` from the bucket holding now on."""
    try:
        params = metric_forecast_schema.load(query)
    except marshmallow.ValidationError as exc:
        raise ValidationError("invalid query", exc.normalized_messages()) from None
    bucket, agg, horizon = params["bucket"], params["agg"], params["horizon"]
    start, end = history_range(bucket, now_ms)
    history: dict[str, Any] = {"start": start, "end": end, "bucket": bucket, "agg": agg}
    # Tag filters and groupBy go as given: the metric query parses them.
    history.update({k: query[k] for k in ("tags", "groupBy") if k in query})
    found = read(history)["series"]
    if len(found) > MAX_SERIES:
        raise ValidationError(
            "too many series",
            {"groupBy": [f"More than {MAX_SERIES} series to forecast: filter with tags or group by another tag."]},
        )
    series = [{"tags": s["tags"], **_forecast_points(s["points"], agg, horizon)} for s in found]
    return {"name": name, "bucket": bucket, "agg": agg, "series": series}


def _forecast_points(points: list[list[Any]], agg: str, horizon: int) -> dict[str, Any]:
    """``{"points": [...]}`` forecast from one series' query points, or no
    points and a ``note`` when the history is too short."""
    # Before the first value the metric did not exist yet (or has expired):
    # not history, whatever the aggregate.
    first = next((i for i, (_, v) in enumerate(points) if v is not None), len(points))
    points = points[first:]
    known = sum(1 for _, v in points if v is not None)
    if known < MIN_POINTS:
        return {
            "points": [],
            "note": f"Too little history to forecast: {known} buckets with data, at least {MIN_POINTS} needed.",
        }
    empty = 0.0 if agg in ZERO_WHEN_EMPTY else math.nan  # NaN: the forecaster carries the last value on
    timestamps = np.array([t for t, _ in points], dtype=float)
    values = np.array([empty if v is None else v for _, v in points], dtype=float)
    result = forecast(timestamps, values, horizon)
    columns = np.stack([result.point, result.lower80, result.upper80, result.lower95, result.upper95])
    if agg == "count":  # a count is never negative, nor is any bound of it
        columns = np.maximum(columns, 0.0)
    rows = columns.T.tolist()
    stamps = [int(t) for t in result.timestamps.tolist()]
    return {"points": [[t, *row] for t, row in zip(stamps, rows, strict=True)]}
