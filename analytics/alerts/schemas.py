"""The wire shape of an alert rule (``POST /v1/alerts``), declared once.

A rule holds no free text: an alert carries names, tag values, numbers and
links only, and a description typed by a person is where PHI would creep
in. The rule is known by its id. Error messages name the field and the
rule, never the value sent.

The webhook URL is configuration with a secret flavour (receivers often put
a token in it): it is checked here, stored, and never logged nor listed in
full (:func:`mask_url`).
"""

from __future__ import annotations

import math
from typing import Any
from urllib.parse import urlsplit

from marshmallow import RAISE, Schema, ValidationError, fields, post_load, validate, validates, validates_schema

from analytics.alerts.rules import CONDITIONS, THRESHOLDS, Rule
from analytics.events.registry import TYPE_NAME
from analytics.metrics.schemas import EVENT_METRIC_PREFIX, MetricValue, check_name, check_tags
from analytics.privacy.screening import looks_identifying

#: Longest ``forDuration`` and ``cooldown`` (seconds): a week and 30 days.
MAX_DURATION = 7 * 86400
MAX_COOLDOWN = 30 * 86400
DEFAULT_COOLDOWN = 3600
MAX_URL = 2048


def check_metric(name: str) -> list[str]:
    """Problems with the metric a rule watches: a metric name, or
    ``events.<type>`` (an event type's count; type names allow more)."""
    if name.startswith(EVENT_METRIC_PREFIX):
        kind = name[len(EVENT_METRIC_PREFIX) :]
        if not TYPE_NAME.match(kind) or looks_identifying(kind):
            return ["'events.' must be followed by an event type name."]
        return []
    return check_name(name, ingest=False)


def mask_url(url: str) -> str:
    """``https://hooks.example.org/...``: the scheme and host of a webhook,
    never its path, query or credentials (where receivers keep tokens)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"  # an IPv6 address
    try:
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        port = ""
    return f"{parts.scheme}://{host}{port}/..."


class ConditionSchema(Schema):
    """``{"type": "anomalous"}``, ``{"type": "above"|"below", "value": x}``
    or ``{"type": "outside_band"}``."""

    class Meta:
        unknown = RAISE

    type = fields.String(required=True, validate=validate.OneOf(CONDITIONS))
    value = MetricValue(load_default=None, allow_none=True)

    @validates_schema(skip_on_field_errors=True)
    def _value(self, data: dict[str, Any], **kwargs: Any) -> None:
        needs = data["type"] in THRESHOLDS
        if needs and data.get("value") is None:
            raise ValidationError("Required for 'above' and 'below'.", "value")
        if not needs and data.get("value") is not None:
            raise ValidationError("Only 'above' and 'below' take a value.", "value")


class RuleSchema(Schema):
    """``POST /v1/alerts``: loads a :class:`Rule` (its id is given later)."""

    class Meta:
        unknown = RAISE

    metric = fields.String(required=True)
    tags = fields.Dict(load_default=dict)
    condition = fields.Nested(ConditionSchema, required=True)
    forDuration = fields.Integer(  # noqa: N815 - wire name
        load_default=0, validate=validate.Range(min=0, max=MAX_DURATION), strict=True
    )
    cooldown = fields.Integer(
        load_default=DEFAULT_COOLDOWN, validate=validate.Range(min=0, max=MAX_COOLDOWN), strict=True
    )
    webhook = fields.Url(
        required=True, schemes={"http", "https"}, require_tld=False, validate=validate.Length(max=MAX_URL)
    )

    def __init__(self, phi_fields: frozenset[str] = frozenset(), **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.phi_fields = phi_fields

    @validates("webhook")
    def _webhook(self, value: str, **kwargs: Any) -> None:
        try:
            parts = urlsplit(value)
            parts.port  # noqa: B018 - raises on a port out of range
        except ValueError:
            raise ValidationError("Not a valid URL.") from None
        if not parts.hostname:
            raise ValidationError("Not a valid URL.")

    @validates_schema(skip_on_field_errors=False)
    def _check(self, data: dict[str, Any], **kwargs: Any) -> None:
        errors: dict[str, Any] = {}
        if isinstance(data.get("metric"), str):
            problems = check_metric(data["metric"])
            if problems:
                errors["metric"] = problems
        tags = data.get("tags") or {}
        if isinstance(tags, dict):
            if data.get("metric", "").startswith(EVENT_METRIC_PREFIX) and tags:
                errors["tags"] = ["Event counts have no tags."]
            else:
                tag_errors = check_tags(tags, self.phi_fields)
                if tag_errors:
                    errors["tags"] = tag_errors
        if errors:
            raise ValidationError(errors)

    @post_load
    def _rule(self, data: dict[str, Any], **kwargs: Any) -> Rule:
        condition = data["condition"]
        value = condition.get("value")
        return Rule(
            id="",
            metric=data["metric"],
            tags=dict(sorted(data["tags"].items())),
            condition=condition["type"],
            value=None if value is None or not math.isfinite(value) else float(value),
            for_duration=data["forDuration"],
            cooldown=data["cooldown"],
            webhook=data["webhook"],
        )


rule_schema = RuleSchema()
