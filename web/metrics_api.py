"""``/v1/metrics``: metric ingestion and queries. Views only parse,
authorize and shape; the work is in :class:`analytics.Analytics`."""

from __future__ import annotations

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
    key = g.api_key
    query = request.args.to_dict()
    service = get_analytics()
    # A user-scoped key gets the metric's aggregate only (no groupBy, no
    # tag filters: a 403), see MetricService.get_metric.
    body = service.metrics.get_metric(name, query, scoped=key.scoped)
    # Audited before it leaves, as an event read: no entry, no data.
    service.privacy.audit_read(
        key.id,
        {},
        len(body["series"]),
        request.remote_addr,
        action="metrics.read",
        metric=name,
        scoped=key.scoped,
        **service.auditor.metric_query(query),
    )
    # orjson: a day of 1-minute points is thousands of numbers, and the
    # stdlib encoder behind jsonify costs more than the query itself.
    return Response(orjson.dumps(body), mimetype="application/json")


@metrics_api.get("/metrics/<path:name>/forecast")
@require("read")
def get_forecast(name: str) -> ResponseReturnValue:
    """Point forecasts with 80% and 95% intervals of the metric's next
    buckets (:meth:`MetricService.forecast`), read and audited as a metric
    query is."""
    key = g.api_key
    query = request.args.to_dict()
    service = get_analytics()
    body = service.metrics.forecast(name, query, scoped=key.scoped)
    # The history read is a metric read: audited as one, before it leaves,
    # with what was forecast (the query is valid by now).
    fields = service.auditor.metric_query(query)
    fields.update(bucket=str(body["bucket"]), forecastHorizon=int(query["horizon"]))
    service.privacy.audit_read(
        key.id,
        {},
        len(body["series"]),
        request.remote_addr,
        action="metrics.read",
        metric=name,
        scoped=key.scoped,
        **fields,
    )
    return Response(orjson.dumps(body), mimetype="application/json")
