"""The events service: ingest (validate, seal, queue), queries and the
event-type registry. The hot path is :meth:`EventService.prepare` (no I/O)
followed by one admission round trip (:meth:`EventService.track_as`)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import marshmallow
import orjson

from analytics import keyspace
from analytics.errors import ValidationError
from analytics.events.codec import RecordCodec
from analytics.events.fastpath import load_split
from analytics.events.filters import matcher, parse_filters
from analytics.events.records import QueueItem
from analytics.events.registry import EventType, EventTypeRegistry, check_clear_paths
from analytics.events.schemas import event_query_schema, event_schema
from analytics.events.store import EventStore
from analytics.pipeline.admission import StreamEntry
from analytics.pipeline.intake import Intake
from analytics.pipeline.queue import EventQueue
from analytics.privacy.apikeys import ApiKey
from analytics.privacy.auditor import Auditor
from analytics.privacy.crypto import DecryptionError
from analytics.privacy.phi import Pairs
from analytics.redis_client import unavailable_as_error
from analytics.settings import Settings


@dataclass
class TrackResult:
    """What became of the events (or metric samples) of one call (the 202 body)."""

    accepted: int = 0
    rejected: list[dict[str, Any]] = field(default_factory=list)
    ids: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {"accepted": self.accepted, "rejected": self.rejected, "ids": self.ids}


@dataclass
class PreparedEvents:
    """Events validated and encoded, not queued yet (:meth:`EventService.prepare`)."""

    #: Rejections by index, and the ids of the valid events.
    result: TrackResult
    #: Queue lane -> the queue items to add to it as one entry.
    lanes: dict[str, list[QueueItem]]


@dataclass
class Validated:
    """One raw event after validation: the event, its PHI pairs when the fast
    path already split them, its priority; or the errors."""

    event: dict[str, Any] | None
    pairs: Pairs | None = None
    priority: str = ""
    errors: dict[str, Any] = field(default_factory=dict)


class EventService:
    def __init__(
        self,
        settings: Settings,
        codec: RecordCodec,
        registry: EventTypeRegistry,
        queue: EventQueue,
        store: EventStore,
        intake: Intake,
        auditor: Auditor,
        on_unreadable: Callable[[int], None] = lambda n: None,
    ) -> None:
        self._settings = settings
        self._auditor = auditor
        #: Told how many records of a page no configured key opened.
        self._on_unreadable = on_unreadable
        self._codec = codec
        self._registry = registry
        self._queue = queue
        self._store = store
        self._intake = intake

    # -- ingest --------------------------------------------------------------
    def validate(self, raw: Any) -> Validated:
        """Check one raw event: the fast path when it can decide, else the
        marshmallow schema of record; then its type against the registry."""
        if not isinstance(raw, dict):
            return Validated(None, errors={"_schema": ["An event must be a JSON object."]})
        if len(orjson.dumps(raw)) > self._settings.max_event_bytes:
            return Validated(None, errors={"_schema": [f"Event larger than {self._settings.max_event_bytes} bytes."]})
        loaded = load_split(raw, self._codec.policy)
        pairs: Pairs | None = None
        if loaded is None:  # invalid (or unusual): marshmallow, the schema of record, decides
            try:
                event = event_schema.load(raw)
            except marshmallow.ValidationError as exc:
                return Validated(None, errors=exc.normalized_messages())
        else:
            event, pairs = loaded
        event_type = self._registry.get(event["type"])
        if event_type is None:
            return Validated(None, errors={"type": ["Unknown event type: register it first (POST /v1/event-types)."]})
        return Validated(event, pairs, event["priority"] or event_type.priority)

    def prepare(
        self, events: Iterable[Any], *, sent_at: int | None = None, received_ms: int | None = None
    ) -> PreparedEvents:
        """Validate and encode ``events`` (PHI sealed, ids hashed) without
        queueing them. Writes nothing; reads Redis only to refresh the cached
        type registry."""
        received = received_ms if received_ms is not None else int(time.time() * 1000)
        result = TrackResult()
        by_priority: dict[str, list[QueueItem]] = {}
        for index, raw in enumerate(events):
            checked = self.validate(raw)
            if checked.event is None:
                result.rejected.append({"index": index, "errors": checked.errors})
                continue
            message_id, item = self._codec.encode_item(
                checked.event, checked.priority, received, sent_at, checked.pairs
            )
            by_priority.setdefault(checked.priority, []).append(item)
            # A client's own messageId is not echoed (it may carry anything):
            # the answer names that event by its id, as reads do.
            result.ids.append(self._codec.event_id(message_id) if checked.event.get("messageId") else message_id)
        return PreparedEvents(result, {keyspace.event_queue(p): items for p, items in by_priority.items()})

    def entries(self, lanes: dict[str, list[QueueItem]]) -> list[StreamEntry]:
        """The queue entries of ``lanes``: one per lane."""
        return [(lane, self._queue.item_fields(items)) for lane, items in lanes.items()]

    def track(self, event: dict[str, Any], *, sent_at: int | None = None) -> TrackResult:
        """Validate and durably queue one event."""
        return self.track_many([event], sent_at=sent_at)

    def track_many(
        self, events: Iterable[Any], *, sent_at: int | None = None, received_ms: int | None = None
    ) -> TrackResult:
        """Validate ``events`` one by one and queue the valid ones.

        Invalid events are reported by index; the others are accepted. When
        this returns, the accepted events are in Redis (the queue): they
        survive a worker crash. Raises :class:`StoreUnavailable` when Redis
        cannot take them (then none was accepted).
        """
        prepared = self.prepare(events, sent_at=sent_at, received_ms=received_ms)
        self._intake.write(self.entries(prepared.lanes))
        return _accepted(prepared)

    def track_as(
        self,
        secret: str | None,
        prepared: PreparedEvents,
        *,
        action: str = "ingest",
        where: str = "",
        remote: str | None = None,
    ) -> tuple[ApiKey, TrackResult]:
        """Authenticate ``secret`` for ``action`` and queue ``prepared``: one
        Redis round trip when there is something to queue (:meth:`Intake.admit`)."""
        key, _ = self._intake.admit(secret, self.entries(prepared.lanes), action=action, where=where, remote=remote)
        return key, _accepted(prepared)

    def records(self, message: Any, sent_at: int | None = None) -> list[dict[str, Any]]:
        """Queue records of a raw event validated again (a dead-letter
        replay), or a list of queued records as they are."""
        if isinstance(message, list):
            return message
        checked = self.validate(message)
        if checked.event is None:
            raise ValidationError("still invalid", checked.errors)
        return [self._codec.encode(checked.event, checked.priority, int(time.time() * 1000), sent_at, checked.pairs)]

    # -- queries -------------------------------------------------------------
    def get_events(
        self, query: dict[str, Any], *, reveal_phi: bool = True, scope_user_hash: str = ""
    ) -> tuple[list[dict[str, Any]], str | None]:
        """Events matching ``query`` (the ``GET /v1/events`` parameters, raw
        strings or loaded values), newest first, and the next cursor.

        ``scope_user_hash`` restricts to one user's events (a scoped key).
        ``properties.*`` parameters filter on properties (:mod:`analytics.events.filters`).
        """
        where = matcher(parse_filters(query, self._codec.policy))
        query = {k: v for k, v in query.items() if not k.startswith("properties.")}
        try:
            params = event_query_schema.load(query)
        except marshmallow.ValidationError as exc:
            raise ValidationError("invalid query", exc.normalized_messages()) from None
        if params["type"] is not None:
            if self._registry.get(params["type"]) is None:
                raise ValidationError("unknown event type", {"type": ["Unknown event type."]})
            types = [params["type"]]
        else:
            types = [t.name for t in self._registry.all()]
        user_hash = self._codec.user_hash(params["userId"]) if params["userId"] else None
        if scope_user_hash:
            if user_hash is not None and user_hash != scope_user_hash:
                return [], None
            user_hash = scope_user_hash
        with unavailable_as_error():
            records, cursor = self._store.query(
                types,
                start=params["start"],
                end=params["end"],
                user_hash=user_hash,
                priority=params["priority"],
                limit=params["limit"],
                cursor=params["cursor"],
                where=where,
            )
        return self._decode_page(records, reveal_phi), cursor

    def _decode_page(self, records: list[dict[str, Any]], reveal_phi: bool) -> list[dict[str, Any]]:
        """The API form of ``records``. A record whose seal no configured key
        opens (sealed under a key since removed) comes back as its clear part
        marked ``"phi": "unavailable"`` and is counted: one bad record never
        fails a page."""
        page, unreadable = [], 0
        for record in records:
            try:
                page.append(self._codec.decode(record, reveal_phi))
            except DecryptionError:
                unreadable += 1
                page.append({**self._codec.decode({**record, "s": None}, reveal_phi), "phi": "unavailable"})
        if unreadable:
            self._on_unreadable(unreadable)
        return page

    def count(
        self,
        event_type: str | None = None,
        *,
        start: int | None = None,
        end: int | None = None,
        user_id: str | None = None,
    ) -> int:
        """Stored events of a type (all types), time range (ms) and user:
        an upper bound of what a query with property filters returns."""
        types = [event_type] if event_type else [t.name for t in self._registry.all()]
        user_hash = self.user_hash(user_id) if user_id else None
        with unavailable_as_error():
            return int(self._store.count(types, start=start, end=end, user_hash=user_hash))

    def user_hash(self, user_id: str) -> str:
        """The keyed hash a user id is stored and audited under."""
        return self._codec.user_hash(user_id)

    def backlog(self) -> int:
        """Events queued and not processed yet (an import waits on it)."""
        return self._queue.length()

    def stored_count(self) -> int:
        """Events stored now (each messageId counted once; erased and
        expired events no longer count)."""
        return self._store.stored_count()

    # -- the type registry ---------------------------------------------------
    def event_types(self) -> list[EventType]:
        return self._registry.all()

    def event_type(self, name: str) -> EventType | None:
        return self._registry.get(name)

    def known_type(self, name: str) -> bool:
        """Registered, or with events stored (a type no longer configured)."""
        return self._registry.get(name) is not None or self._store.has_events(name)

    def replay_entry(self, records: list[dict[str, Any]]) -> StreamEntry:
        """The queue entry that puts ``records`` (of one priority) back in its lane."""
        return keyspace.event_queue(records[0]["p"]), self._queue.fields(records)

    def register_event_type(
        self,
        name: str,
        priority: str = "normal",
        description: str = "",
        clear: Iterable[str] = (),
        *,
        actor: str = "system",
        remote: str | None = None,
    ) -> EventType:
        """Register a type (or replace its settings) with the field paths
        that stay clear in its events; audited as ``event_type.register``
        (names and paths only)."""
        paths = check_clear_paths(list(clear), self._codec.policy)
        with unavailable_as_error():
            event_type = self._registry.register(name, priority, description, paths)
            self._auditor.record(
                "event_type.register",
                actor,
                remote,
                name=event_type.name,
                priority=event_type.priority,
                clear=list(event_type.clear),
            )
        return event_type


def _accepted(prepared: PreparedEvents) -> TrackResult:
    result = prepared.result
    result.accepted = len(result.ids) if prepared.lanes else 0
    return result
