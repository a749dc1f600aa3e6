"""``/v1/metrics``: metric ingestion and queries. Views only parse,
authorize and shape; the work is in :class:`analytics.Analytics`."""

from __future__ import annotations

from typing import Any

import orjson
from flask import Blueprint, Response, g, request
from flask.typing import ResponseReturnValue

from analytics.metrics.schemas import metric_batch_schema
from web.api import admit
from web.auth import require
from web.extensions import get_analytics

metrics_api = Blueprint("metrics_api", __name__, url_prefix="/v1")


@metrics_api.post("/metrics")
def post_metrics() -> ResponseReturnValue:
    """Like ``POST /v1/events``: the samples are validated first (no I/O),
    then one Redis round trip checks the key and queues them
    (:meth:`MetricService.track_as`)."""
    metrics = get_analytics().metrics
    return admit(metric_batch_schema, "sample", lambda items, _: metrics.prepare(items), metrics.track_as)


@metrics_api.get("/metrics/<path:name>")
@require("read")
def get_metric(name: str) -> ResponseReturnValue:
    query = request.args.to_dict()
    # A user-scoped key gets the metric's aggregate only (no groupBy, no
    # tag filters: a 403), see MetricService.get_metric.
    body = get_analytics().metrics.get_metric(name, query, scoped=g.api_key.scoped)
    return _audited(name, query, body)


@metrics_api.get("/metrics/<path:name>/forecast")
@require("read")
def get_forecast(name: str) -> ResponseReturnValue:
    """Point forecasts with 80% and 95% intervals of the metric's next
    buckets (:meth:`MetricService.forecast`), read and audited as a metric
    query is."""
    query = request.args.to_dict()
    body = get_analytics().metrics.forecast(name, query, scoped=g.api_key.scoped)
    # The history read is a metric read, with what was forecast (the query is valid by now).
    return _audited(name, query, body, bucket=str(body["bucket"]), forecastHorizon=int(query["horizon"]))


@metrics_api.get("/metrics/<path:name>/anomalies")
@require("read")
def get_anomalies(name: str) -> ResponseReturnValue:
    """The anomalies live detection found on the metric's series, with score
    and expected band (:meth:`MetricService.anomalies`), audited as a metric
    read."""
    query = request.args.to_dict()
    body = get_analytics().metrics.anomalies(name, query, scoped=g.api_key.scoped)
    return _audited(name, query, body, count=len(body["anomalies"]), anomalies=True)


def _audited(
    name: str, query: dict[str, Any], body: dict[str, Any], count: int | None = None, **extra: Any
) -> Response:
    """``body`` as the answer, once its read is audited (``metrics.read``;
    ``count``: the series, unless given): no entry, no data."""
    key, service = g.api_key, get_analytics()
    fields = {**service.auditor.metric_query(query), **extra}
    service.privacy.audit_read(
        key.id,
        {},
        len(body["series"]) if count is None else count,
        request.remote_addr,
        action="metrics.read",
        metric=name,
        scoped=key.scoped,
        **fields,
    )
    # orjson: a day of 1-minute points is thousands of numbers, and the
    # stdlib encoder behind jsonify costs more than the query itself.
    return Response(orjson.dumps(body), mimetype="application/json")
