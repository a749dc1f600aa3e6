"""``GET /v1/openapi.json``: the OpenAPI document of the HTTP API.

Built with apispec and its marshmallow plugin from the schemas the API
really validates with (:mod:`analytics.events.schemas`), so the document cannot
drift from the validation. Response bodies, which no schema loads, are
described by the small schemas below. The document is built once per app.
"""

# ruff: noqa: N815 - schema attributes are the JSON field names (camelCase)
from __future__ import annotations

from typing import Any

from apispec import APISpec
from apispec.ext.marshmallow import MarshmallowPlugin
from flask import Blueprint, current_app, jsonify
from marshmallow import Schema, fields

from analytics.alerts import schemas as alert_schemas
from analytics.events import schemas
from analytics.metrics import schemas as metric_schemas

openapi = Blueprint("openapi", __name__, url_prefix="/v1")


class ErrorBodySchema(Schema):
    code = fields.String(required=True)
    message = fields.String(required=True)
    details = fields.Dict()


class ErrorSchema(Schema):
    error = fields.Nested(ErrorBodySchema, required=True)


class RejectedSchema(Schema):
    index = fields.Integer(required=True)
    errors = fields.Dict(required=True)


class TrackResultSchema(Schema):
    accepted = fields.Integer(required=True)
    rejected = fields.List(fields.Nested(RejectedSchema), required=True)
    ids = fields.List(fields.String(), required=True)


class StoredEventSchema(Schema):
    id = fields.String(required=True)
    messageId = fields.String(required=True)
    type = fields.String(required=True)
    priority = fields.String(required=True)
    timestamp = fields.String(required=True)
    receivedAt = fields.String(required=True)
    userId = fields.String(allow_none=True)
    anonymousId = fields.String(allow_none=True)
    properties = fields.Dict()
    context = fields.Dict()
    traits = fields.Dict()
    metadata = fields.Dict()


class EventsPageSchema(Schema):
    events = fields.List(fields.Nested(StoredEventSchema), required=True)
    next = fields.String(allow_none=True, required=True)


class EventTypeOutSchema(Schema):
    name = fields.String(required=True)
    priority = fields.String(required=True)
    description = fields.String()


class EventTypesSchema(Schema):
    eventTypes = fields.List(fields.Nested(EventTypeOutSchema), required=True)


class AuditPageSchema(Schema):
    entries = fields.List(fields.Dict(), required=True)
    next = fields.String(allow_none=True, required=True)


class ErasureSchema(Schema):
    userHash = fields.String(required=True)
    records = fields.Integer(required=True)
    deadLetters = fields.Integer(required=True)
    keysRevoked = fields.List(fields.String(), required=True)
    erasedAt = fields.Integer(required=True)


class MetricSeriesSchema(Schema):
    tags = fields.Dict(required=True)
    points = fields.List(fields.List(fields.Raw()), required=True)


class MetricQueryResultSchema(Schema):
    name = fields.String(required=True)
    series = fields.List(fields.Nested(MetricSeriesSchema), required=True)


class AnomalySchema(Schema):
    name = fields.String(required=True)
    tags = fields.Dict(required=True)
    bucket = fields.Integer(required=True, metadata={"description": "Bucket start, epoch seconds"})
    resolution = fields.Integer(required=True)
    value = fields.Float(required=True)
    score = fields.Float(required=True, metadata={"description": "0 to 1"})
    expected = fields.Float(required=True)
    lower = fields.Float(required=True)
    upper = fields.Float(required=True)


class AnomaliesSchema(Schema):
    name = fields.String(required=True)
    resolution = fields.Integer(required=True)
    anomalies = fields.List(fields.Nested(AnomalySchema), required=True)


class StatusSchema(Schema):
    status = fields.String(required=True)


class AlertRuleSchema(Schema):
    """A rule as the API shows it: the webhook masked to scheme and host."""

    id = fields.String(required=True)
    metric = fields.String(required=True)
    tags = fields.Dict(required=True)
    condition = fields.Dict(required=True)
    forDuration = fields.Integer(required=True)
    cooldown = fields.Integer(required=True)
    webhook = fields.String(required=True)
    created = fields.Float(required=True)


class AlertRulesSchema(Schema):
    rules = fields.List(fields.Nested(AlertRuleSchema), required=True)


def _errors(*statuses: int) -> dict[str, Any]:
    names = {
        400: "Invalid input (fields named, values never echoed)",
        401: "Missing, unknown or revoked API key",
        403: "The key's role does not allow this",
        413: "Request too large",
        429: "Rate limited: see Retry-After",
        503: "Redis unavailable: nothing was accepted",
    }
    out: dict[str, Any] = {}
    for status in statuses:
        response: dict[str, Any] = {"description": names[status], "content": {"application/json": {"schema": "Error"}}}
        if status == 429:
            response["headers"] = {
                "Retry-After": {
                    "description": "Seconds to wait (1 to 300)",
                    "schema": {"type": "integer", "minimum": 1, "maximum": 300},
                }
            }
        out[str(status)] = response
    return out


def _json(schema: str, description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def build_spec() -> dict[str, Any]:
    """The OpenAPI 3.0 document, as a dict."""
    marshmallow_plugin = MarshmallowPlugin()
    spec = APISpec(
        title="Analytics service",
        version="1",
        openapi_version="3.0.3",
        plugins=[marshmallow_plugin],
        info={
            "description": "Events and metrics analytics for health data. "
            "PHI is encrypted at rest; every read is audited."
        },
    )
    # Times are ISO 8601 (or epoch seconds); documented as date-time strings.
    marshmallow_plugin.map_to_openapi_type(schemas.Timestamp, "string", "date-time")
    marshmallow_plugin.map_to_openapi_type(schemas.RawList, "array", None)
    spec.components.security_scheme("bearer", {"type": "http", "scheme": "bearer"})
    for name, schema in (
        ("Event", schemas.EventSchema),
        ("EventBatch", schemas.EventBatchSchema),
        ("EventTypeIn", schemas.EventTypeSchema),
        ("Erase", schemas.EraseSchema),
        ("Error", ErrorSchema),
        ("TrackResult", TrackResultSchema),
        ("EventsPage", EventsPageSchema),
        ("EventTypes", EventTypesSchema),
        ("AuditPage", AuditPageSchema),
        ("Erasure", ErasureSchema),
        ("Status", StatusSchema),
        ("MetricSample", metric_schemas.MetricSampleSchema),
        ("MetricBatch", metric_schemas.MetricBatchSchema),
        ("MetricSeries", MetricQueryResultSchema),
        ("AlertRuleIn", alert_schemas.RuleSchema),
        ("AlertRule", AlertRuleSchema),
        ("AlertRules", AlertRulesSchema),
        ("Anomalies", AnomaliesSchema),
    ):
        spec.components.schema(name, schema=schema)
    secured: list[dict[str, list[str]]] = [{"bearer": []}]
    spec.path(
        path="/v1/events",
        operations={
            "post": {
                "summary": "Ingest one event or a batch (role ingest)",
                "security": secured,
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/json": {
                            "schema": {
                                "oneOf": [
                                    {"$ref": "#/components/schemas/Event"},
                                    {"$ref": "#/components/schemas/EventBatch"},
                                ]
                            }
                        }
                    },
                },
                "responses": {
                    "202": _json("TrackResult", "Accepted: durably queued"),
                    **_errors(400, 401, 403, 413, 429, 503),
                },
            },
            "get": {
                "summary": "Query events, newest first (role read; audited)",
                "security": secured,
                "parameters": [{"in": "query", "schema": schemas.EventQuerySchema}],
                "responses": {"200": _json("EventsPage", "A page of events"), **_errors(400, 401, 403, 429, 503)},
            },
        },
    )
    spec.path(
        path="/v1/metrics",
        operations={
            "post": {
                "summary": "Ingest one metric sample or a batch (role ingest)",
                "security": secured,
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/json": {
                            "schema": {
                                "oneOf": [
                                    {"$ref": "#/components/schemas/MetricSample"},
                                    {"$ref": "#/components/schemas/MetricBatch"},
                                ]
                            }
                        }
                    },
                },
                "responses": {
                    "202": _json("TrackResult", "Accepted: durably queued"),
                    **_errors(400, 401, 403, 413, 429, 503),
                },
            }
        },
    )
    spec.path(
        path="/v1/metrics/{name}",
        operations={
            "get": {
                "summary": "A metric's series, aggregated per bucket (role read)",
                "security": secured,
                "parameters": [
                    {"in": "path", "name": "name", "required": True, "schema": {"type": "string"}},
                    {"in": "query", "schema": metric_schemas.MetricQuerySchema},
                ],
                "responses": {
                    "200": _json("MetricSeries", "Points aligned to bucket boundaries; null when empty"),
                    **_errors(400, 401, 403, 429, 503),
                },
            }
        },
    )
    spec.path(
        path="/v1/metrics/{name}/anomalies",
        operations={
            "get": {
                "summary": "Anomalies live detection found on a metric's series, oldest first (role read; "
                "not for a user-scoped key)",
                "security": secured,
                "parameters": [
                    {"in": "path", "name": "name", "required": True, "schema": {"type": "string"}},
                    {"in": "query", "schema": metric_schemas.MetricAnomalySchema},
                ],
                "responses": {
                    "200": _json("Anomalies", "Each with its score and expected band; the last 24 hours by default"),
                    **_errors(400, 401, 403, 429, 503),
                },
            }
        },
    )
    spec.path(
        path="/v1/event-types",
        operations={
            "get": {
                "summary": "Registered event types (role read)",
                "security": secured,
                "responses": {"200": _json("EventTypes", "The registry"), **_errors(401, 403, 429)},
            },
            "post": {
                "summary": "Register an event type (role admin)",
                "security": secured,
                "requestBody": {"required": True, "content": {"application/json": {"schema": "EventTypeIn"}}},
                "responses": {"201": _json("EventTypeOut", "Registered"), **_errors(400, 401, 403, 429)},
            },
        },
    )
    spec.path(
        path="/v1/audit",
        operations={
            "get": {
                "summary": "The audit log, oldest first, paged (role admin)",
                "security": secured,
                "parameters": [{"in": "query", "schema": schemas.AuditQuerySchema}],
                "responses": {"200": _json("AuditPage", "A page of entries"), **_errors(400, 401, 403, 429)},
            }
        },
    )
    spec.path(
        path="/v1/erase",
        operations={
            "post": {
                "summary": "Erase every trace of a user (role admin; audited without the id)",
                "security": secured,
                "requestBody": {"required": True, "content": {"application/json": {"schema": "Erase"}}},
                "responses": {"200": _json("Erasure", "What was removed"), **_errors(400, 401, 403, 429, 503)},
            }
        },
    )
    spec.path(
        path="/v1/alerts",
        operations={
            "post": {
                "summary": "Create an alert rule (role admin; audited; see docs/alerts.rst)",
                "security": secured,
                "requestBody": {"required": True, "content": {"application/json": {"schema": "AlertRuleIn"}}},
                "responses": {"201": _json("AlertRule", "The rule (webhook masked)"), **_errors(400, 401, 403, 429)},
            },
            "get": {
                "summary": "Alert rules, webhooks masked (role read)",
                "security": secured,
                "responses": {"200": _json("AlertRules", "Every rule"), **_errors(401, 403, 429, 503)},
            },
        },
    )
    rule_id = {"in": "path", "name": "rule_id", "required": True, "schema": {"type": "string"}}
    spec.path(
        path="/v1/alerts/{rule_id}",
        operations={
            "get": {
                "summary": "One alert rule, webhook masked (role read)",
                "security": secured,
                "parameters": [rule_id],
                "responses": {
                    "200": _json("AlertRule", "The rule"),
                    "404": _json("Error", "No such rule"),
                    **_errors(401, 403, 429, 503),
                },
            },
            "delete": {
                "summary": "Delete an alert rule (role admin; audited)",
                "security": secured,
                "parameters": [rule_id],
                "responses": {
                    "204": {"description": "Deleted"},
                    "404": _json("Error", "No such rule"),
                    **_errors(401, 403, 429, 503),
                },
            },
        },
    )
    spec.path(
        path="/healthz",
        operations={"get": {"summary": "Liveness", "responses": {"200": _json("Status", "The process is up")}}},
    )
    spec.path(
        path="/readyz",
        operations={
            "get": {"summary": "Readiness", "responses": {"200": _json("Status", "Redis answers"), **_errors(503)}}
        },
    )
    spec.path(
        path="/v1/openapi.json",
        operations={"get": {"summary": "This document", "responses": {"200": {"description": "OpenAPI 3.0"}}}},
    )
    return spec.to_dict()


@openapi.get("/openapi.json")
def openapi_json() -> Any:
    document = current_app.extensions.get("openapi")
    if document is None:
        document = current_app.extensions["openapi"] = build_spec()
    return jsonify(document)
