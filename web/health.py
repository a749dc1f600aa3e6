"""Liveness and readiness probes (no authentication)."""

from __future__ import annotations

from flask import Blueprint, current_app, jsonify
from flask.typing import ResponseReturnValue

from web.errors import error_response, outage
from web.extensions import get_analytics

health = Blueprint("health", __name__)


@health.get("/healthz")
def healthz() -> ResponseReturnValue:
    return jsonify(status="ok")


@health.get("/readyz")
def readyz() -> ResponseReturnValue:
    if get_analytics().ops.ping():
        outage(current_app).came_back()
        return jsonify(status="ready")
    outage(current_app).went_down("ping failed")
    return error_response(503, "unavailable", "the data store is unreachable")
