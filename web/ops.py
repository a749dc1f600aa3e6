"""Operations API: monitoring figures and dead letters.

``GET /v1/stats`` (read role, unscoped: the figures are of the whole
service and cannot be limited to one user, so a user-scoped key gets a 403),
``GET /v1/dlq`` and ``POST /v1/dlq/replay`` (admin role). Views only parse,
authorize and shape.
"""

from __future__ import annotations

from flask import Blueprint, g, jsonify, request
from flask.typing import ResponseReturnValue

from analytics.ops.schemas import dead_letter_query_schema, dead_letter_replay_schema
from web.api import load
from web.auth import require
from web.body import json_body
from web.extensions import get_analytics

ops = Blueprint("ops", __name__, url_prefix="/v1")


@ops.get("/stats")
@require("read")
def stats() -> ResponseReturnValue:
    g.api_key.require_unscoped("read the service's figures")
    return jsonify(get_analytics().ops.stats_snapshot())


@ops.get("/dlq")
@require("admin")
def dead_letters() -> ResponseReturnValue:
    params = load(dead_letter_query_schema, request.args.to_dict())
    items = get_analytics().ops.dead_letter_list(params["kind"], params["start"], params["limit"])
    return jsonify(deadLetters=items, kind=params["kind"])


@ops.post("/dlq/replay")
@require("admin")
def replay() -> ResponseReturnValue:
    data = load(dead_letter_replay_schema, json_body())
    report = get_analytics().ops.replay_dead_letters(
        data["kind"], ids=data["ids"], limit=data["limit"], actor=g.api_key.id
    )
    return jsonify(report.as_dict())
