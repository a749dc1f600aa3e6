"""Segment-compatible ingestion: Segment messages become our events.

Existing Segment SDKs post to ``/v1/batch`` (and the single-call paths);
:class:`SegmentIngest` turns what they send into events of our schema,
validates and encodes them (:meth:`EventService.prepare`) and
queues them, dead letters included, in the round trip that checks the key
(:meth:`Intake.admit`). The mapping:

=============  ============================================================
Segment call   event
=============  ============================================================
``track``      ``type`` = the event name as given (unknown names follow
               ``ANALYTICS_SEGMENT_UNKNOWN_EVENTS``, see below)
``identify``   ``type`` = ``identify``; ``traits`` kept (taken from
               ``context.traits`` when absent, as RudderStack sends them)
``page``       ``type`` = ``page``; ``name``/``category`` in ``metadata``
``screen``     ``type`` = ``screen``; ``name``/``category`` in ``metadata``
``group``      ``type`` = ``group``; ``groupId`` in ``metadata``,
               ``traits`` kept
``alias``      ``type`` = ``alias``; ``previousId`` in ``metadata`` (PHI:
               it is a user id)
=============  ============================================================

``userId``, ``anonymousId``, ``properties``, ``context``, ``traits``,
``messageId`` and ``timestamp`` keep their meaning (``originalTimestamp``
stands in for a missing ``timestamp``); ``sentAt`` (the message's, else the
batch's) corrects client clock skew. Batch-level ``context`` and
``integrations`` are merged into each message (the message's own keys win).
Other top-level fields a library adds (``integrations``, ``channel``,
``version``, ``_metadata``...) are kept in ``metadata``. The ``writeKey`` is a
secret and is never stored.

Track names the registry does not know, by policy. Type names become Redis
key names and clear labels, and a track name is client text that may carry
PHI (``"Called 555-201-0064"``), so types come from the registry:

* ``custom`` (default): stored as ``custom`` with the name in
  ``metadata.event``, which is sealed like every free-form value
  (:mod:`analytics.privacy.phi`);
* ``register``: registered as new types of priority ``normal`` while fewer
  than ``ANALYTICS_SEGMENT_MAX_TYPES`` were registered this way; past the
  cap, for a name the registry cannot take (see
  :func:`analytics.events.registry.check_type_name`) or for one the
  identifier screen catches (:mod:`analytics.privacy.screening`), stored as
  ``custom`` as above;
* ``reject``: dead-lettered (reason ``unknown_event_type``).

``name``, ``category``, ``groupId`` and ``previousId`` go to ``metadata``
and are sealed there; the client's ``messageId`` is sealed too (kept in
clear only as its keyed hash, the event id).

One bad message never fails its batch: it goes to the dead-letter stream
``analytics:dlq:segment`` (sealed whole, since it may carry PHI anywhere)
with a reason and field-level errors, and the rest are queued.

Why one module of over 400 lines: Segment's wire format (its marshmallow
schemas), the mapping rules above and the ingest that applies them change
together whenever Segment's SDKs do; a reader checking one rule against the
table needs all three in view.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import marshmallow
import orjson
import redis
from marshmallow import INCLUDE, Schema, fields, validate

from analytics import keyspace
from analytics.errors import PayloadTooLarge, ValidationError
from analytics.events.registry import TYPE_NAME
from analytics.events.schemas import RawList, Timestamp
from analytics.events.service import EventService
from analytics.pipeline.admission import StreamEntry
from analytics.pipeline.deadletters import DeadLetters
from analytics.pipeline.intake import Intake
from analytics.privacy.apikeys import ApiKey
from analytics.privacy.screening import looks_identifying
from analytics.settings import Settings

#: Segment's call types, and the one-letter forms of their paths.
CALLS = ("track", "identify", "page", "screen", "group", "alias")
SHORT_PATHS = {"t": "track", "i": "identify", "p": "page", "s": "screen", "g": "group", "a": "alias"}
UNKNOWN_EVENT_POLICIES = ("register", "custom", "reject")

#: Registered from Segment track names: counts towards the cap.
SEGMENT_TYPES = keyspace.PREFIX + "segment:types"
#: Where a track name goes when it does not become a type of its own.
FALLBACK_TYPE = "custom"
REGISTERED_DESCRIPTION = "registered by Segment-compatible ingestion"

#: Top-level fields consumed by the mapping (everything else goes to metadata).
_CONSUMED = {
    "type",
    "event",
    "userId",
    "anonymousId",
    "properties",
    "traits",
    "context",
    "messageId",
    "timestamp",
    "originalTimestamp",
    "sentAt",
    "receivedAt",
    "writeKey",
    "name",
    "category",
    "groupId",
    "previousId",
}


def _identifier(value: Any) -> Any:
    # Segment accepts numeric ids (analytics.js passes them through); our
    # schema wants strings.
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    return value


class SegmentMessageSchema(Schema):
    """One Segment message. Libraries add fields of their own (``_metadata``,
    ``channel``, ``version``...): those are kept, not rejected, so that every
    SDK works unchanged; the event schema checks their size and depth."""

    class Meta:
        unknown = INCLUDE

    type = fields.String(required=True, validate=validate.OneOf(CALLS))
    event = fields.String(load_default=None, allow_none=True, validate=validate.Length(min=1, max=200))
    userId = fields.Raw(load_default=None, allow_none=True)
    anonymousId = fields.Raw(load_default=None, allow_none=True)
    messageId = fields.Raw(load_default=None, allow_none=True)
    properties = fields.Raw(load_default=None, allow_none=True)
    traits = fields.Raw(load_default=None, allow_none=True)
    context = fields.Raw(load_default=None, allow_none=True)
    # Passed on as sent: the event schema reads and checks them.
    timestamp = fields.Raw(load_default=None, allow_none=True)
    originalTimestamp = fields.Raw(load_default=None, allow_none=True)
    sentAt = Timestamp(load_default=None, allow_none=True)

    @marshmallow.validates_schema
    def _track_has_event(self, data: dict[str, Any], **kwargs: Any) -> None:
        if data.get("type") == "track" and not data.get("event"):
            raise marshmallow.ValidationError("A track call needs an event name.", "event")


class SegmentBatchSchema(Schema):
    """The envelope of ``/v1/batch``: its messages are checked one by one."""

    class Meta:
        unknown = INCLUDE  # writeKey, messageId, _metadata... (ignored)

    batch = RawList(required=True)
    sentAt = Timestamp(load_default=None, allow_none=True)
    context = fields.Dict(load_default=None, allow_none=True)
    integrations = fields.Dict(load_default=None, allow_none=True)


segment_message_schema = SegmentMessageSchema()
segment_batch_schema = SegmentBatchSchema()


@dataclass
class SegmentResult:
    """What became of the messages of one request."""

    accepted: int = 0
    dead_lettered: list[dict[str, Any]] = field(default_factory=list)
    registered: list[str] = field(default_factory=list)


@dataclass
class _Mapped:
    index: int
    raw: Any
    event: dict[str, Any] | None = None
    sent_at: int | None = None
    reason: str = ""
    errors: dict[str, Any] = field(default_factory=dict)
    #: Its track name is to be registered as a type first: a write, which
    #: waits until the key is checked.
    pending: bool = False


@dataclass
class PreparedSegment:
    """Segment messages mapped, validated and encoded, not written yet
    (:meth:`SegmentIngest.prepare`)."""

    messages: list[_Mapped]
    received: int
    #: The batch's ``sentAt``, ``context`` and ``integrations``.
    envelope: tuple[int | None, dict[str, Any] | None, dict[str, Any] | None]
    result: SegmentResult = field(default_factory=SegmentResult)
    #: What to write: the queue entries (one per lane), then the dead
    #: letters. None while a message waits for its type to be registered.
    entries: list[StreamEntry] | None = None
    #: ``entries`` holds queue entries (a processing task is wanted).
    queued: bool = False


class SegmentIngest:
    """Maps Segment requests to events and queues them.

    A request is prepared first (:meth:`prepare_batch`, :meth:`prepare_single`:
    no writes), then written by a caller already admitted (:meth:`write`) or
    admitted and written in one round trip (:meth:`queue_as`).
    """

    def __init__(
        self, settings: Settings, client: redis.Redis, events: EventService, intake: Intake, dead_letters: DeadLetters
    ) -> None:
        policy, max_types = settings.segment_unknown_events, settings.segment_max_types
        if policy not in UNKNOWN_EVENT_POLICIES:
            raise ValueError(f"unknown policy {policy!r}")
        self._settings = settings
        self._redis = client
        self._events = events
        self._intake = intake
        self._dead_letters = dead_letters
        self.policy = policy
        self.max_types = max_types

    # -- requests ------------------------------------------------------------
    def batch(self, body: Any, received_ms: int | None = None) -> SegmentResult:
        """Queue a ``/v1/batch`` (or ``/v1/import``) body."""
        return self.write(self.prepare_batch(body, received_ms))

    def single(self, call: str, body: Any, received_ms: int | None = None) -> SegmentResult:
        """Queue a single call (``/v1/track``...): the body is one message."""
        return self.write(self.prepare_single(call, body, received_ms))

    def prepare_batch(self, body: Any, received_ms: int | None = None) -> PreparedSegment:
        """Prepare a ``/v1/batch`` (or ``/v1/import``) body."""
        if not isinstance(body, dict):
            raise ValidationError("the body must be a JSON object with a batch")
        try:
            envelope = segment_batch_schema.load(body)
        except marshmallow.ValidationError as exc:
            raise ValidationError("invalid batch", _without_values(exc)) from None
        limit = self._settings.max_batch_events
        if len(envelope["batch"]) > limit:
            raise PayloadTooLarge(f"more than {limit} messages in one batch")
        return self.prepare(
            envelope["batch"],
            sent_at=envelope["sentAt"],
            context=envelope["context"],
            integrations=envelope["integrations"],
            received_ms=received_ms,
        )

    def prepare_single(self, call: str, body: Any, received_ms: int | None = None) -> PreparedSegment:
        """Prepare a single call: the body is one message.

        Too large a message fails the request (Segment answers 400); any
        other problem sends it to the dead-letter store.
        """
        if not isinstance(body, dict):
            raise ValidationError("the body must be a JSON object")
        if len(orjson.dumps(body)) > self._settings.max_event_bytes:
            raise PayloadTooLarge(f"message larger than {self._settings.max_event_bytes} bytes")
        return self.prepare([{**body, "type": call}], received_ms=received_ms)

    def remap(self, raw: Any) -> tuple[dict[str, Any], int | None]:
        """Validate and map one raw message again (dead-letter replay): the
        event and its ``sentAt``. Raises :class:`ValidationError` (fields
        named, never values) when it is still invalid."""
        if isinstance(raw, dict):
            raw = {k: v for k, v in raw.items() if k != "writeKey"}
        item = self._map(0, raw, None, None, None, SegmentResult())
        if item.event is None:
            raise ValidationError(item.reason or "invalid_message", item.errors)
        return item.event, item.sent_at

    # -- messages ------------------------------------------------------------
    def ingest(
        self,
        messages: Iterable[Any],
        *,
        sent_at: int | None = None,
        context: dict[str, Any] | None = None,
        integrations: dict[str, Any] | None = None,
        received_ms: int | None = None,
    ) -> SegmentResult:
        """Map and queue ``messages``; dead-letter the ones that fail."""
        return self.write(
            self.prepare(messages, sent_at=sent_at, context=context, integrations=integrations, received_ms=received_ms)
        )

    def prepare(
        self,
        messages: Iterable[Any],
        *,
        sent_at: int | None = None,
        context: dict[str, Any] | None = None,
        integrations: dict[str, Any] | None = None,
        received_ms: int | None = None,
    ) -> PreparedSegment:
        """Map ``messages`` to events, validate and encode them, and seal the
        ones that fail as dead letters, writing nothing. (A track name to be
        registered as a type is left for :meth:`write`: ``entries`` is then
        None.)"""
        received = received_ms if received_ms is not None else int(time.time() * 1000)
        prepared = PreparedSegment([], received, (sent_at, context, integrations))
        prepared.messages = [
            self._map(i, raw, sent_at, context, integrations, prepared.result, register=False)
            for i, raw in enumerate(messages)
        ]
        if not any(item.pending for item in prepared.messages):
            self._encode(prepared)
        return prepared

    def write(self, prepared: PreparedSegment) -> SegmentResult:
        """Write ``prepared`` for a caller already admitted: register the
        track names it waits for, then queue the events and dead letters
        (one ``MULTI``)."""
        if prepared.entries is None:
            sent_at, context, integrations = prepared.envelope
            prepared.messages = [
                self._map(item.index, item.raw, sent_at, context, integrations, prepared.result)
                if item.pending
                else item
                for item in prepared.messages
            ]
            self._encode(prepared)
        assert prepared.entries is not None
        self._intake.write(prepared.entries, kick=prepared.queued)
        return prepared.result

    def queue_as(
        self, secret: str | None, prepared: PreparedSegment, *, where: str = "", remote: str | None = None
    ) -> tuple[ApiKey, SegmentResult]:
        """Authenticate ``secret`` for ingest and write ``prepared``, with the
        answers of :meth:`Intake.admit`: one Redis round trip,
        dead letters included. A track name to register waits for the key:
        then the general path (key, registration, queue)."""
        if prepared.entries is None:
            key = self._intake.authorize(secret, "ingest", where=where, remote=remote)
            return key, self.write(prepared)
        key, _ = self._intake.admit(secret, prepared.entries, kick=prepared.queued, where=where, remote=remote)
        return key, prepared.result

    def _encode(self, prepared: PreparedSegment) -> None:
        """Validate and encode the mapped events (prepare_events applies one
        sentAt to its events: one call per sentAt), all lanes into one entry
        each, and the dead letters after them."""
        groups: dict[int | None, list[_Mapped]] = {}
        for item in prepared.messages:
            if item.event is not None:
                groups.setdefault(item.sent_at, []).append(item)
        lanes: dict[str, list[Any]] = {}
        for group_sent_at, items in groups.items():
            events = self._events.prepare(
                [m.event for m in items], sent_at=group_sent_at, received_ms=prepared.received
            )
            prepared.result.accepted += len(events.result.ids)
            for rejected in events.result.rejected:
                item = items[rejected["index"]]
                item.reason, item.errors = "invalid_message", rejected["errors"]
            for lane, queue_items in events.lanes.items():
                lanes.setdefault(lane, []).extend(queue_items)
        entries = self._events.entries(lanes)
        prepared.queued = bool(entries)
        for item in prepared.messages:
            if item.reason:
                entries.append(self._dead_letter(item))
                prepared.result.dead_lettered.append(
                    {"index": item.index, "reason": item.reason, "errors": item.errors}
                )
        prepared.entries = entries

    def _map(
        self,
        index: int,
        raw: Any,
        batch_sent_at: int | None,
        batch_context: dict[str, Any] | None,
        batch_integrations: dict[str, Any] | None,
        result: SegmentResult,
        register: bool = True,
    ) -> _Mapped:
        item = _Mapped(index, raw)
        if not isinstance(raw, dict):
            item.reason, item.errors = "invalid_message", {"_schema": ["A message must be a JSON object."]}
            return item
        limit = self._settings.max_event_bytes
        if len(orjson.dumps(raw)) > limit:
            item.reason, item.errors = "too_large", {"_schema": [f"Message larger than {limit} bytes."]}
            return item
        try:
            message = segment_message_schema.load(raw)
        except marshmallow.ValidationError as exc:
            item.reason, item.errors = "invalid_message", _without_values(exc)
            return item
        try:
            found = self._event_type(message, result, register)
        except ValidationError as exc:
            item.reason, item.errors = "unknown_event_type", exc.details
            return item
        if found is None:
            item.pending = True
            return item
        event_type, fallback_name = found
        item.event = to_event(message, event_type, fallback_name, batch_context, batch_integrations)
        item.sent_at = message["sentAt"] if message["sentAt"] is not None else batch_sent_at
        return item

    def _event_type(
        self, message: dict[str, Any], result: SegmentResult, register: bool = True
    ) -> tuple[str, str | None] | None:
        """The type of the event, and the track name when it is stored as
        :data:`FALLBACK_TYPE` instead; None when the name would have to be
        registered and ``register`` is False."""
        call = message["type"]
        if call != "track":
            return call, None
        name = message["event"]
        if self._events.event_type(name) is not None:
            return name, None
        if self.policy == "reject":
            raise ValidationError("unknown event type", {"event": ["Unknown event type (policy: reject)."]})
        if self.policy == "register" and TYPE_NAME.match(name) and not looks_identifying(name):
            if not register:
                return None
            if self._claim_type(name):
                self._events.register_event_type(name, "normal", REGISTERED_DESCRIPTION, actor="segment")
                result.registered.append(name)
                return name, None
        return FALLBACK_TYPE, name

    def _claim_type(self, name: str) -> bool:
        """Count ``name`` towards the cap of Segment-registered types; False
        when the cap is reached. Exact under concurrency: each claimant sees
        the count including itself and backs out when over."""
        pipe = self._redis.pipeline(transaction=True)
        pipe.sadd(SEGMENT_TYPES, name)
        pipe.scard(SEGMENT_TYPES)
        added, count = pipe.execute()
        if added and count > self.max_types:
            self._redis.srem(SEGMENT_TYPES, name)
            return False
        return True

    def _dead_letter(self, item: _Mapped) -> StreamEntry:
        """The dead-letter entry of ``item`` (sealed whole)."""
        user_hash = ""
        if isinstance(item.raw, dict):
            # Its owner, as a record's (analytics.events.records): the userId, else
            # the anonymousId, so that erasure finds it either way.
            for name in ("userId", "anonymousId"):
                some_id = _identifier(item.raw.get(name))
                if isinstance(some_id, str) and some_id:
                    user_hash = self._events.user_hash(some_id)
                    break
            item.raw.pop("writeKey", None)  # a secret: never stored, not even sealed
        return self._dead_letters.raw_entry("segment", item.raw, item.reason, user_hash, {"errors": item.errors})


def to_event(
    message: dict[str, Any],
    event_type: str,
    fallback_name: str | None = None,
    batch_context: dict[str, Any] | None = None,
    batch_integrations: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """An event (the shape of ``POST /v1/events``) from a loaded Segment message."""
    event: dict[str, Any] = {"type": event_type}
    for name in ("userId", "anonymousId", "messageId"):
        value = _identifier(message.get(name))
        if value is not None and value != "":
            event[name] = value
    for name in ("properties", "traits"):
        if message.get(name) is not None:
            event[name] = message[name]
    context = message.get("context")
    if (
        message["type"] == "identify"
        and event.get("traits") is None
        and isinstance(context, dict)
        and isinstance(context.get("traits"), dict)
    ):
        # RudderStack's SDKs send identify traits only as context.traits.
        event["traits"] = context["traits"]
    if batch_context and (context is None or isinstance(context, dict)):
        context = {**batch_context, **(context or {})}
    if context is not None:
        event["context"] = context
    timestamp = message["timestamp"] if message["timestamp"] is not None else message["originalTimestamp"]
    if timestamp is not None:
        event["timestamp"] = timestamp
    metadata: dict[str, Any] = {}
    for name in ("name", "category", "groupId", "previousId"):
        if message.get(name) is not None:
            metadata[name] = message[name]
    if fallback_name is not None:
        metadata["event"] = fallback_name
    for name, value in message.items():
        if name not in _CONSUMED and name not in metadata:
            metadata[name] = value
    if batch_integrations:
        integrations = metadata.get("integrations")
        if integrations is None or isinstance(integrations, dict):
            metadata["integrations"] = {**batch_integrations, **(integrations or {})}
    if metadata:
        event["metadata"] = metadata
    return event


def _without_values(exc: marshmallow.ValidationError) -> dict[str, Any]:
    """Field-level errors; marshmallow's messages name fields, not values."""
    messages = exc.normalized_messages()
    return messages if isinstance(messages, dict) else {"_schema": ["Invalid message."]}
