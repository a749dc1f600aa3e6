"""``/v1/metrics``: metric ingestion and queries. Views only parse,
authorize and shape; the work is in :class:`analytics.AnalyticsService`."""
from __future__ import annotations

import orjson
from flask import Blueprint, Response, jsonify, request

from analytics.errors import PayloadTooLarge, ValidationError
from analytics.metrics.schemas import metric_batch_schema
from web.api import load
from web.auth import require
from web.body import json_body
from web.extensions import get_service

metrics_api = Blueprint("metrics_api", __name__, url_prefix="/v1")


@metrics_api.post("/metrics")
@require("ingest")
def post_metrics():  # type: ignore[no-untyped-def]
    body = json_body()
    service = get_service()
    if isinstance(body, dict) and "batch" in body:
        envelope = load(metric_batch_schema, body)
        limit = service.settings.max_batch_events
        if len(envelope["batch"]) > limit:
            raise PayloadTooLarge(f"more than {limit} samples in one batch")
        result = service.track_metrics(envelope["batch"])
        if result.accepted == 0 and result.rejected:
            raise ValidationError("no sample was accepted", {"rejected": result.rejected})
    else:
        result = service.track_metrics([body])
        if result.rejected:
            raise ValidationError("invalid metric sample", result.rejected[0]["errors"])
    return jsonify(result.as_dict()), 202


@metrics_api.get("/metrics/<path:name>")
@require("read")
def get_metric(name: str):  # type: ignore[no-untyped-def]
    # orjson: a day of 1-minute points is thousands of numbers, and the
    # stdlib encoder behind jsonify costs more than the query itself.
    body = get_service().get_metric(name, request.args.to_dict())
    return Response(orjson.dumps(body), mimetype="application/json")
