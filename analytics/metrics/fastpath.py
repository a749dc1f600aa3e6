"""A fast validator for metric samples, equivalent to
:class:`analytics.metrics.schemas.MetricSampleSchema` on what it accepts.

Like :mod:`analytics.events.fastpath` for events: marshmallow stays the schema of
record and produces every error; :func:`load_sample` answers "valid, and here
is what the schema would load" or ``None`` (then the caller runs marshmallow),
several times faster, which matters at thousands of samples per request.
``tests/analytics/test_metrics_fastpath.py`` checks with hypothesis that
whatever it accepts, the schema accepts and loads identically.

It holds no rule of its own, so that a rule cannot change in one path only:
each field is checked by the function the schema calls for it
(:func:`check_name`, :func:`metric_value`, :func:`check_tags`,
:func:`parse_time_ms`) and the allowed fields are the schema's. Only its
exact type checks (``type(tags) is dict``) are its own: they leave unusual
shapes to the schema.
"""

from __future__ import annotations

from typing import Any

from analytics.events.schemas import parse_time_ms
from analytics.metrics.schemas import MetricSampleSchema, check_name, check_tags, metric_value

_FIELDS = frozenset(MetricSampleSchema().fields)


def load_sample(raw: dict[str, Any], phi_fields: frozenset[str]) -> dict[str, Any] | None:
    """What ``MetricSampleSchema(phi_fields).load(raw)`` returns, or None if
    it would raise (or if this fast path is unsure)."""
    if not _FIELDS.issuperset(raw):
        return None
    name = raw.get("name")
    if type(name) is not str or check_name(name, ingest=True):
        return None
    try:
        value = metric_value(raw.get("value"))
    except ValueError:
        return None
    tags = raw.get("tags", {})
    if type(tags) is not dict or check_tags(tags, phi_fields):
        return None
    timestamp = raw.get("timestamp")
    if timestamp is not None:
        try:
            timestamp = parse_time_ms(timestamp)
        except (ValueError, OverflowError):
            return None
    return {"name": name, "value": value, "tags": dict(tags), "timestamp": timestamp}
