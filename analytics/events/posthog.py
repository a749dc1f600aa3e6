"""PostHog-compatible ingestion: PostHog capture bodies become Segment
messages, which :class:`analytics.events.segment.SegmentIngest` then
validates, seals and queues (dead letters included) like any other. This
module is the pure mapping: no I/O.

=====================  =======================================================
PostHog event          Segment message
=====================  =======================================================
``$pageview``          ``track`` ``page_view``
``$identify``,         ``identify``; ``traits`` = ``$set_once`` overlaid with
``$set``               ``$set`` (from the event or its ``properties``)
anything else          ``track`` of that name: unknown names follow
                       ``ANALYTICS_SEGMENT_UNKNOWN_EVENTS`` as Segment's do
=====================  =======================================================

``distinct_id`` is the ``userId``, unless the event says its person is
anonymous (``$user_state`` ``anonymous``, ``$is_identified`` false, or
``$process_person_profile`` false, as posthog-js and the server SDKs mark
events sent before an identification): then it is the ``anonymousId``. An
``$identify`` keeps the id it replaces, ``$anon_distinct_id``, as its
``anonymousId``. ``uuid`` is the ``messageId``; ``timestamp`` is kept and
the request's ``sent_at`` (or posthog-js's ``_`` query parameter, in ms)
corrects clock skew. The project token (``api_key``, ``token``,
``properties.token``) is a secret and is never stored; every other property
is kept as sent, under the PHI rules of every event.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from analytics.errors import ValidationError

#: PostHog events that become identify calls.
IDENTIFY_EVENTS = frozenset({"$identify", "$set"})
#: PostHog event names that become track calls of another name.
RENAMED = {"$pageview": "page_view"}
#: Where PostHog SDKs put the project token (one per request).
TOKEN_FIELDS = ("api_key", "token", "$token")
#: Properties consumed by the mapping (the token is a secret).
_CONSUMED = frozenset({"token", "$token", "$set", "$set_once", "$anon_distinct_id"})


def events_of(body: Any) -> list[Any]:
    """The events of a capture body: a batch (``{"batch": [...]}``, or a
    bare list as posthog-js sends), else one event."""
    if isinstance(body, list):
        return body
    if not isinstance(body, dict):
        raise ValidationError("the body must be a JSON object or array of events")
    batch = body.get("batch", body.get("data"))
    if batch is None:
        return [body]
    if isinstance(batch, dict):
        return [batch]
    if not isinstance(batch, list):
        raise ValidationError("batch must be an array of events", {"batch": ["Not a valid list."]})
    return batch


def token_of(body: Any, events: list[Any]) -> str | None:
    """The project token (our ingest key): the body's, else the first event's."""
    for holder in ([body] if isinstance(body, dict) else []) + events[:1]:
        if not isinstance(holder, dict):
            continue
        properties = holder.get("properties")
        for source in (holder, properties if isinstance(properties, dict) else {}):
            for name in TOKEN_FIELDS:
                value = source.get(name)
                if isinstance(value, str) and value:
                    return value
    return None


def sent_at_of(body: Any, query_ms: str | None) -> str | None:
    """The request's send time: ``sent_at`` in the body, else posthog-js's
    ``_`` query parameter (ms since the epoch)."""
    if isinstance(body, dict) and isinstance(body.get("sent_at"), str):
        return str(body["sent_at"])
    if query_ms and query_ms.isdigit():
        return datetime.fromtimestamp(int(query_ms) / 1000, tz=UTC).isoformat()
    return None


def _anonymous(properties: dict[str, Any]) -> bool:
    return (
        properties.get("$user_state") == "anonymous"
        or properties.get("$is_identified") is False
        or properties.get("$process_person_profile") is False
    )


def to_segment(event: Any, sent_at: str | None = None) -> Any:
    """One PostHog event as a Segment message. What is not an event object
    is passed on unchanged: the Segment ingest dead-letters it."""
    if not isinstance(event, dict):
        return event
    raw_properties = event.get("properties")
    properties = dict(raw_properties) if isinstance(raw_properties, dict) else {}
    name = event.get("event")
    distinct_id = event.get("distinct_id", properties.get("distinct_id"))
    properties.pop("distinct_id", None)
    message: dict[str, Any] = {}
    if name in IDENTIFY_EVENTS:
        traits: dict[str, Any] = {}
        for field in ("$set_once", "$set"):
            for source in (properties, event):
                value = source.get(field)
                if isinstance(value, dict):
                    traits.update(value)
        message.update(type="identify", traits=traits, userId=distinct_id)
        anon = properties.get("$anon_distinct_id")
        if anon is not None and anon != distinct_id:
            message["anonymousId"] = anon
    else:
        # An event without a name is passed on so: the track schema refuses it.
        message.update(type="track", event=RENAMED.get(name, name) if isinstance(name, str) else name)
        message["anonymousId" if _anonymous(properties) else "userId"] = distinct_id
    message["properties"] = {k: v for k, v in properties.items() if k not in _CONSUMED}
    if event.get("uuid") is not None:
        message["messageId"] = event["uuid"]
    if event.get("timestamp") is not None:
        message["timestamp"] = event["timestamp"]
    event_sent_at = event.get("sent_at", sent_at)
    if event_sent_at is not None:
        message["sentAt"] = event_sent_at
    return message


def to_segment_batch(body: Any, query_ms: str | None = None) -> tuple[str | None, list[Any]]:
    """The token and the Segment messages of a PostHog capture body."""
    events = events_of(body)
    sent_at = sent_at_of(body, query_ms)
    return token_of(body, events), [to_segment(e, sent_at) for e in events]
