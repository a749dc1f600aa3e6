"""Schemas of the operations API (dead letters), validated at the boundary."""

from __future__ import annotations

from marshmallow import RAISE, Schema, fields, validate

from analytics.pipeline.deadletters import KINDS

_STREAM_ID = validate.Regexp(r"^\d{1,20}-\d{1,20}$", error="Not a dead-letter id.")
_START = validate.Regexp(r"^(-|\d{1,20}-\d{1,20})$", error="Not a dead-letter id.")


class DeadLetterQuerySchema(Schema):
    """``GET /v1/dlq``: ``kind``, ``start`` (an id, inclusive), ``limit``."""

    class Meta:
        unknown = RAISE

    kind = fields.String(load_default="events", validate=validate.OneOf(KINDS))
    start = fields.String(load_default="-", validate=_START)
    limit = fields.Integer(load_default=100, validate=validate.Range(1, 1000))


class DeadLetterReplaySchema(Schema):
    """``POST /v1/dlq/replay``: ``kind``, and ``ids`` or ``limit`` (oldest first)."""

    class Meta:
        unknown = RAISE

    kind = fields.String(load_default="events", validate=validate.OneOf(KINDS))
    ids = fields.List(fields.String(validate=_STREAM_ID), load_default=None, validate=validate.Length(1, 10_000))
    limit = fields.Integer(load_default=1000, validate=validate.Range(1, 100_000))


dead_letter_query_schema = DeadLetterQuerySchema()
dead_letter_replay_schema = DeadLetterReplaySchema()
