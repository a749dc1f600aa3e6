"""``/v1/metrics``: metric ingestion and queries. Views only parse,
authorize and shape; the work is in :class:`analytics.Analytics`."""

from __future__ import annotations

import orjson
from flask import Blueprint, Response, request
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
    # orjson: a day of 1-minute points is thousands of numbers, and the
    # stdlib encoder behind jsonify costs more than the query itself.
    body = get_analytics().metrics.get_metric(name, request.args.to_dict())
    return Response(orjson.dumps(body), mimetype="application/json")
