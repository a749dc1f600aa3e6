"""A fast validator for the hot ingest path, equivalent to
:data:`analytics.schemas.event_schema`.

marshmallow stays the schema of record: it produces every error message, and
this module takes its field names, lengths and choices from the schema's own
field objects. ``load_event`` only answers "valid, and here is exactly what
``event_schema.load`` would return" or "not valid" (``None``), in about a
tenth of the time; the caller then runs marshmallow to get the errors.
``tests/analytics/test_fastpath.py`` checks the equivalence with hypothesis
on valid and invalid input alike.
"""
from __future__ import annotations

from typing import Any

from marshmallow import validate

from analytics.schemas import _check_object, _measure, event_schema, parse_time_ms

_FIELDS = event_schema.fields
_ALLOWED = frozenset(_FIELDS)
_OBJECTS = tuple(name for name, f in _FIELDS.items() if f.validate is _check_object or
                 _check_object in getattr(f, "validators", ()))


def _length(name: str) -> tuple[int, int]:
    for validator in _FIELDS[name].validators:
        if isinstance(validator, validate.Length):
            return validator.min or 0, validator.max or 2**31
    raise LookupError(name)


def _choices(name: str) -> frozenset[str]:
    for validator in _FIELDS[name].validators:
        if isinstance(validator, validate.OneOf):
            return frozenset(validator.choices)
    raise LookupError(name)


_TYPE_LEN = _length("type")
#: (field, min length, max length) of the optional string ids.
_IDS = tuple((name, *_length(name)) for name in ("userId", "anonymousId", "messageId"))
_PRIORITIES = _choices("priority")
_EMPTY = {name: None for name in _ALLOWED}


def load_event(raw: dict[str, Any]) -> dict[str, Any] | None:
    """What ``event_schema.load(raw)`` returns, or None if it would raise."""
    if not _ALLOWED.issuperset(raw):
        return None
    event_type = raw.get("type")
    if type(event_type) is not str or not _TYPE_LEN[0] <= len(event_type) <= _TYPE_LEN[1]:
        return None
    for name, low, high in _IDS:
        value = raw.get(name)
        if value is not None and (type(value) is not str or not low <= len(value) <= high):
            return None
    if not raw.get("userId") and not raw.get("anonymousId"):
        return None
    priority = raw.get("priority")
    if priority is not None and priority not in _PRIORITIES:
        return None
    out = {**_EMPTY, **raw}
    for name in _OBJECTS:
        value = raw.get(name)
        if value is None:
            continue
        if type(value) is not dict:
            return None
        try:
            _measure(value, 1)  # what _check_object does, one call less
        except Exception:  # noqa: BLE001 - marshmallow's ValidationError: defer to it
            return None
        out[name] = dict(value)
    timestamp = raw.get("timestamp")
    if timestamp is not None:
        try:
            out["timestamp"] = parse_time_ms(timestamp)
        except (ValueError, OverflowError, TypeError):
            return None
    return out
