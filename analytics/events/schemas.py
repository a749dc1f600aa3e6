"""marshmallow schemas: the schemas of record for everything that enters.

Schemas are built once at module level (they are reused, and building one is
costly). Unknown fields raise, so a typo in a client is an error rather than
silently dropped data.

:class:`EventSchema` is the one declaration of an event: the hot path's
validator (:mod:`analytics.events.fastpath`) reads its tables from the
schema's fields at import, so a field's rule is changed here and nowhere
else (its one-pass walk of the free objects checks the limits below).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

from marshmallow import RAISE, Schema, ValidationError, fields, validate, validates_schema

from analytics.keyspace import PRIORITIES
from analytics.limits import MAX_KEY_LENGTH
from analytics.privacy.screening import looks_identifying

#: Nesting and size limits for free-form objects (properties, traits, ...).
MAX_DEPTH = 8
MAX_KEYS = 256
ID_LENGTH = validate.Length(min=1, max=256)


def parse_time_ms(value: Any) -> int:
    """ISO 8601 (``Z`` or an offset; naive means UTC) or epoch seconds -> ms.

    Raises ``ValueError`` on anything else.
    """
    if isinstance(value, bool):
        raise ValueError("not a time")
    if isinstance(value, (int, float)):
        if not math.isfinite(value) or not 0 <= value < 10**11:
            raise ValueError("epoch seconds out of range")
        return int(value * 1000)
    if isinstance(value, str):
        text = value.strip()
        try:
            return parse_time_ms(float(text))
        except ValueError:
            pass
        moment = datetime.fromisoformat(text)
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)
        return int(moment.timestamp() * 1000)
    raise ValueError("not a time")


def format_time_ms(ms: int) -> str:
    """Milliseconds since the epoch as ISO 8601 UTC with a ``Z``."""
    moment = datetime.fromtimestamp(ms / 1000, tz=UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ms % 1000:03d}Z"


class Timestamp(fields.Field):
    """A point in time, loaded as integer milliseconds since the epoch."""

    default_error_messages = {"invalid": "Not a valid time (ISO 8601 or epoch seconds)."}

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> int:
        try:
            return parse_time_ms(value)
        except (ValueError, OverflowError):
            raise self.make_error("invalid") from None


def _measure(node: dict[str, Any] | list[Any], depth: int) -> int:
    """Keys and items below ``node`` (at ``depth``); raises past the limits.

    On the hot path of every event: exact type checks, no per-item calls.
    """
    count = len(node)
    if type(node) is dict:
        for key in node:
            if type(key) is not str or len(key) > MAX_KEY_LENGTH:
                raise ValidationError(f"Keys must be strings of at most {MAX_KEY_LENGTH} characters.")
        items: Iterable[Any] = node.values()
    else:
        items = node
    for item in items:
        kind = type(item)
        if kind is dict or kind is list:
            if depth >= MAX_DEPTH:
                raise ValidationError(f"Nested deeper than {MAX_DEPTH} levels.")
            count += _measure(item, depth + 1)
            if count > MAX_KEYS:
                raise ValidationError(f"More than {MAX_KEYS} keys and items.")
        elif kind is float and not math.isfinite(item):
            raise ValidationError("Numbers must be finite.")
    if count > MAX_KEYS:
        raise ValidationError(f"More than {MAX_KEYS} keys and items.")
    return count


def _check_object(value: dict[str, Any]) -> None:
    """Bound depth and key count of free-form objects (properties, traits...)."""
    _measure(value, 1)


def _not_phi_like(value: str) -> bool:
    if looks_identifying(value):
        raise ValidationError("Must not look like personal data (e-mail, phone, SSN, date, address...).")
    return True


class RawList(fields.Field):
    """A JSON array whose items are validated one by one elsewhere (so that
    one bad item is reported by its index, not fail the whole batch).

    ``fields.List(fields.Raw())`` would do the same at ~1.5 us per item of
    pure copying: this is on the hot path of every batch.
    """

    default_error_messages = {"invalid": "Not a valid list."}

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> list[Any]:
        if not isinstance(value, list):
            raise self.make_error("invalid")
        return value


class FreeObject(fields.Dict):
    """An object of any shape within the limits (depth, keys, key length)."""

    def __init__(self) -> None:
        super().__init__(keys=fields.String(), load_default=None, allow_none=True, validate=_check_object)


class EventSchema(Schema):
    """One event, as the contract describes it."""

    class Meta:
        unknown = RAISE

    #: At least one of these must be non-empty (:meth:`_identity`).
    identified_by = ("userId", "anonymousId")

    type = fields.String(required=True, validate=validate.Length(min=1, max=64))
    userId = fields.String(load_default=None, allow_none=True, validate=ID_LENGTH)
    anonymousId = fields.String(load_default=None, allow_none=True, validate=ID_LENGTH)
    properties = FreeObject()
    metadata = FreeObject()
    context = FreeObject()
    traits = FreeObject()
    priority = fields.String(load_default=None, allow_none=True, validate=validate.OneOf(PRIORITIES))
    timestamp = Timestamp(load_default=None, allow_none=True)
    messageId = fields.String(load_default=None, allow_none=True, validate=ID_LENGTH)

    @validates_schema
    def _identity(self, data: dict[str, Any], **kwargs: Any) -> None:
        if not any(data.get(name) for name in self.identified_by):
            raise ValidationError(f"{' or '.join(self.identified_by)} is required.", self.identified_by[0])


class EventBatchSchema(Schema):
    """The envelope of a batch; its events are validated one by one."""

    class Meta:
        unknown = RAISE

    batch = RawList(required=True)
    sentAt = Timestamp(load_default=None, allow_none=True)


class EventTypeSchema(Schema):
    class Meta:
        unknown = RAISE

    # Type names become Redis key names (analytics:events:processed:{type}),
    # where PHI must never appear (the registry checks the format).
    name = fields.String(required=True, validate=[validate.Length(min=1, max=64), lambda v: _not_phi_like(v)])
    priority = fields.String(load_default="normal", validate=validate.OneOf(PRIORITIES))
    description = fields.String(load_default="", validate=validate.Length(max=500))
    #: Paths whose values stay clear in events of this type (checked by
    #: :func:`analytics.events.registry.check_clear_paths`).
    clear = fields.List(
        fields.String(validate=validate.Length(min=1, max=300)), load_default=list, validate=validate.Length(max=100)
    )


class EventQuerySchema(Schema):
    """Query string of ``GET /v1/events``."""

    class Meta:
        unknown = RAISE

    type = fields.String(load_default=None, validate=validate.Length(min=1, max=64))
    start = Timestamp(load_default=None)
    end = Timestamp(load_default=None)
    userId = fields.String(load_default=None, validate=ID_LENGTH)
    priority = fields.String(load_default=None, validate=validate.OneOf(PRIORITIES))
    limit = fields.Integer(load_default=100, validate=validate.Range(min=1, max=1000))
    cursor = fields.String(load_default=None, validate=validate.Length(max=200))


event_schema = EventSchema()
event_batch_schema = EventBatchSchema()
event_type_schema = EventTypeSchema()
event_query_schema = EventQuerySchema()


def _stream_id(value: str) -> bool:
    """A Redis stream id ``ms-seq``, both parts unsigned 64-bit."""
    ms, _, seq = value.partition("-")
    if not (ms.isdigit() and seq.isdigit() and len(value) <= 41 and int(ms) < 2**64 and int(seq) < 2**64):
        raise ValidationError("Not a cursor returned by this API.")
    return True


class AuditQuerySchema(Schema):
    """Query string of ``GET /v1/audit``: entries oldest first, paged."""

    class Meta:
        unknown = RAISE

    cursor = fields.String(load_default=None, validate=lambda v: _stream_id(v))
    limit = fields.Integer(load_default=100, validate=validate.Range(min=1, max=1000))


class EraseSchema(Schema):
    """Body of ``POST /v1/erase``."""

    class Meta:
        unknown = RAISE

    userId = fields.String(required=True, validate=ID_LENGTH)


audit_query_schema = AuditQuerySchema()
erase_schema = EraseSchema()
