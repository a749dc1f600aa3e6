"""marshmallow schemas of metric samples and metric queries.

Error messages name the field and the rule, never the offending value: a
tag value could be PHI sent by mistake. Metric names and tag values become
key names and clear labels, so they pass the identifier screen
(:mod:`analytics.privacy.screening`); tag keys that are PHI field names
(compared normalized, word by word: :func:`analytics.privacy.phi.phi_name`)
are refused.

The rules of a sample (:func:`check_name`, :func:`metric_value`,
:func:`check_tags`) are functions that the schema and the fast path
(:mod:`analytics.metrics.fastpath`) both call, so that each is written once.
"""

from __future__ import annotations

import math
import re
from typing import Any

from marshmallow import RAISE, Schema, ValidationError, fields, validate, validates_schema

from analytics.events.schemas import RawList, Timestamp
from analytics.privacy.phi import phi_name
from analytics.privacy.screening import looks_identifying

#: Metric names: no ``:`` (it separates key parts) and a bounded length.
NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_.\-]{0,127}$")
#: Reserved so that a metric's keys cannot collide with fixed ones, and
#: ``events.`` because those metrics are the per-type event counts.
RESERVED_NAMES = frozenset({"queue", "tags"})
EVENT_METRIC_PREFIX = "events."
TAG_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_.\-]{0,63}$")
TAG_VALUE = re.compile(r"^[A-Za-z0-9_.:/@+\-]{1,128}$")
MAX_TAGS = 16
#: Larger magnitudes are refused: sums and sums of squares must stay finite.
MAX_MAGNITUDE = 1e18
AGGREGATES = ("count", "sum", "min", "max", "avg", "p50", "p90", "p95", "p99", "rate", "stddev")


def metric_value(value: Any) -> float:
    """``value`` as a sample's value; raises ``ValueError`` with the key of
    :class:`MetricValue`'s message if it is not one. On the hot path of every
    sample: a plain ``float`` is taken as it is, a plain ``int`` (never a
    ``bool``) needs no ``isinstance``."""
    kind = type(value)
    if kind is not float:
        if kind is not int and (isinstance(value, bool) or not isinstance(value, (int, float))):
            raise ValueError("type")
        try:
            value = float(value)
        except OverflowError:
            raise ValueError("range") from None
    if not math.isfinite(value):
        raise ValueError("finite")
    if abs(value) > MAX_MAGNITUDE:
        raise ValueError("range")
    return value


class MetricValue(fields.Field):
    """A finite number: booleans, strings, NaN and infinities are refused."""

    default_error_messages = {
        "type": "Must be a number (not a string or a boolean).",
        "finite": "Must be a finite number.",
        "range": f"Must be within +/-{MAX_MAGNITUDE:g}.",
    }

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> float:
        try:
            return metric_value(value)
        except ValueError as exc:
            raise self.make_error(exc.args[0]) from None


def check_name(name: str, *, ingest: bool) -> list[str]:
    """Problems with a metric name (empty when fine)."""
    if not NAME.match(name):
        return ["Must start with a letter and hold only letters, digits, '_', '.' or '-' (at most 128 characters)."]
    if name in RESERVED_NAMES:
        return ["This name is reserved."]
    if ingest and name.startswith(EVENT_METRIC_PREFIX):
        return ["Names starting with 'events.' are the event counts, written by the service."]
    if looks_identifying(name):
        # A metric name becomes Redis key names and a clear label.
        return ["Must not look like an identifier (phone, record number, date, IP...)."]
    return []


class MetricSampleSchema(Schema):
    """One sample: ``{"name", "value", "tags", "timestamp"}``."""

    class Meta:
        unknown = RAISE

    name = fields.String(required=True)
    value = MetricValue(required=True)
    tags = fields.Dict(load_default=dict)
    timestamp = Timestamp(load_default=None, allow_none=True)

    def __init__(self, phi_fields: frozenset[str] = frozenset(), **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.phi_fields = phi_fields

    @validates_schema(skip_on_field_errors=False)
    def _check(self, data: dict[str, Any], **kwargs: Any) -> None:
        errors: dict[str, Any] = {}
        problems = check_name(data.get("name", ""), ingest=True)
        if problems:
            errors["name"] = problems
        tag_errors = check_tags(data.get("tags") or {}, self.phi_fields)
        if tag_errors:
            errors["tags"] = tag_errors
        if errors:
            raise ValidationError(errors)


def check_tags(tags: dict[Any, Any], phi_fields: frozenset[str]) -> dict[str, Any] | list[str]:
    """Field-level problems of a tag set, keyed by tag key (never echoing a
    value: a key is a field name, its value may be anything)."""
    if len(tags) > MAX_TAGS:
        return [f"At most {MAX_TAGS} tags per sample."]
    errors: dict[str, Any] = {}
    for key, value in tags.items():
        if not isinstance(key, str) or not TAG_KEY.match(key):
            return [
                "Tag keys must start with a letter or '_' and hold only letters, digits, "
                "'_', '.' or '-' (at most 64 characters)."
            ]
        if phi_name(key, phi_fields):
            errors[key] = ["This tag key is a PHI field name: metric tags must not carry PHI."]
        elif not isinstance(value, str) or not TAG_VALUE.match(value):
            errors[key] = [
                "Tag values must be strings of 1 to 128 letters, digits or '_', '.', ':', '/', '@', '+', '-'."
            ]
        elif looks_identifying(value):
            # Tag values are stored and listed in clear: refused, never echoed.
            errors[key] = ["This tag value looks like an identifier (e-mail, phone, SSN, date, IP...)."]
    return errors


class MetricBatchSchema(Schema):
    class Meta:
        unknown = RAISE

    batch = RawList(required=True)


def parse_tag_filter(text: str) -> dict[str, str]:
    """``k:v,k2:v2`` -> ``{"k": "v", "k2": "v2"}`` (values may hold ``:``)."""
    tags: dict[str, str] = {}
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        key, sep, value = part.partition(":")
        if not sep or not TAG_KEY.match(key) or not TAG_VALUE.match(value):
            raise ValidationError("Expected key:value pairs separated by commas.")
        if tags.get(key, value) != value:
            return {key: "\0"}  # two values for one key: matches nothing
        tags[key] = value
    return tags


class TagFilter(fields.Field):
    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> dict[str, str]:
        if not isinstance(value, str):
            raise ValidationError("Expected key:value pairs separated by commas.")
        return parse_tag_filter(value)


class MetricQuerySchema(Schema):
    """Query string of ``GET /v1/metrics/{name}``."""

    class Meta:
        unknown = RAISE

    start = Timestamp(load_default=None)
    end = Timestamp(load_default=None)
    bucket = fields.Integer(load_default=None, validate=validate.Range(min=10, max=366 * 86400))
    agg = fields.String(load_default="avg", validate=validate.OneOf(AGGREGATES))
    tags = TagFilter(load_default=dict)
    groupBy = fields.String(load_default=None, validate=validate.Regexp(TAG_KEY))  # noqa: N815 - wire name

    @validates_schema
    def _bucket(self, data: dict[str, Any], **kwargs: Any) -> None:
        bucket = data.get("bucket")
        if bucket is not None and bucket % 10:
            raise ValidationError("Must be a multiple of 10 seconds (the finest rollup).", "bucket")


#: Buckets a forecast may reach ahead.
MAX_HORIZON = 500


class MetricForecastSchema(MetricQuerySchema):
    """Query string of ``GET /v1/metrics/{name}/forecast``: a metric query's
    ``bucket``, ``agg``, ``tags`` and ``groupBy`` (no range: the history is
    the recent past) and how many buckets ahead."""

    class Meta:
        unknown = RAISE
        exclude = ("start", "end")

    horizon = fields.Integer(required=True, validate=validate.Range(min=1, max=MAX_HORIZON))
    # At most a day: longer buckets leave too little retained history.
    bucket = fields.Integer(load_default=3600, validate=validate.Range(min=10, max=86_400))


class MetricAnomalySchema(Schema):
    """Query string of ``GET /v1/metrics/{name}/anomalies``: a range (the
    last 24 hours by default) and a tag filter."""

    class Meta:
        unknown = RAISE

    start = Timestamp(load_default=None)
    end = Timestamp(load_default=None)
    tags = TagFilter(load_default=dict)


metric_batch_schema = MetricBatchSchema()
metric_query_schema = MetricQuerySchema()
metric_forecast_schema = MetricForecastSchema()
metric_anomaly_schema = MetricAnomalySchema()
