"""``/v1/alerts``: alert rules (create and delete: role admin; read: role
read). Views only parse, authorize and shape; validation and the audit
are in :class:`analytics.alerts.service.AlertService`."""

from __future__ import annotations

from flask import Blueprint, g, jsonify, request
from flask.typing import ResponseReturnValue

from web.auth import require
from web.body import json_body
from web.extensions import get_analytics

alerts_api = Blueprint("alerts_api", __name__, url_prefix="/v1")


@alerts_api.post("/alerts")
@require("admin")
def create_rule() -> ResponseReturnValue:
    rule = get_analytics().alerts.create(json_body(), g.api_key.id, request.remote_addr)
    return jsonify(rule), 201


@alerts_api.get("/alerts")
@require("read")
def list_rules() -> ResponseReturnValue:
    return jsonify(rules=get_analytics().alerts.list())


@alerts_api.get("/alerts/<rule_id>")
@require("read")
def get_rule(rule_id: str) -> ResponseReturnValue:
    return jsonify(get_analytics().alerts.get(rule_id))


@alerts_api.delete("/alerts/<rule_id>")
@require("admin")
def delete_rule(rule_id: str) -> ResponseReturnValue:
    get_analytics().alerts.delete(rule_id, g.api_key.id, request.remote_addr)
    return "", 204
