"""Liveness and readiness probes (no authentication)."""
from __future__ import annotations

from flask import Blueprint, jsonify

from web.errors import error_response
from web.extensions import get_service

health = Blueprint("health", __name__)


@health.get("/healthz")
def healthz():  # type: ignore[no-untyped-def]
    return jsonify(status="ok")


@health.get("/readyz")
def readyz():  # type: ignore[no-untyped-def]
    if get_service().ping():
        return jsonify(status="ready")
    return error_response(503, "unavailable", "the data store is unreachable")
