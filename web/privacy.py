"""``/v1`` privacy endpoints (admin): the audit log and erasure.

Erasure takes the user id in the body (``POST /v1/erase``), not in the URL:
URLs end up in proxy and access logs, bodies do not.
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, g, jsonify, request

from analytics.events.schemas import audit_query_schema, erase_schema
from web.api import load
from web.auth import require
from web.body import json_body
from web.extensions import get_analytics

privacy = Blueprint("privacy", __name__, url_prefix="/v1")


@privacy.get("/audit")
@require("admin")
def audit_entries() -> Any:
    params = load(audit_query_schema, request.args.to_dict())
    # Reading the audit log is itself audited.
    entries, cursor = get_analytics().privacy.audit_entries(
        params["cursor"], params["limit"], actor=g.api_key.id, remote=request.remote_addr
    )
    return jsonify(entries=entries, next=cursor)


@privacy.post("/erase")
@require("admin")
def erase_user() -> Any:
    data = load(erase_schema, json_body())
    report = get_analytics().privacy.erase_user(data["userId"], g.api_key.id, request.remote_addr)
    return jsonify(report.as_dict())
