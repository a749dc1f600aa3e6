"""``/v1`` JSON API: events and the event-type registry. Views only parse,
authorize and shape; the work is in :class:`analytics.Analytics`."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict
from typing import Any, TypeVar

import marshmallow
import orjson
from flask import Blueprint, Response, current_app, g, jsonify, request
from flask.typing import ResponseReturnValue

from analytics.errors import PayloadTooLarge, ValidationError
from analytics.events.schemas import event_batch_schema, event_type_schema
from analytics.events.service import TrackResult
from analytics.privacy.apikeys import ApiKey
from analytics.privacy.phi import BUILTIN_CLEAR
from web.auth import bearer_token, prepare_after_key, require
from web.body import json_body
from web.extensions import get_analytics

api = Blueprint("api", __name__, url_prefix="/v1")

P = TypeVar("P")


def load(schema: marshmallow.Schema, data: Any) -> dict[str, Any]:
    try:
        return schema.load(data)
    except marshmallow.ValidationError as exc:
        raise ValidationError("invalid request", exc.normalized_messages()) from None


def _items(schema: marshmallow.Schema, body: Any, noun: str) -> tuple[list[Any], dict[str, Any]]:
    """The items of an ingest body (one item, or ``{"batch": [...]}``) and
    the loaded batch envelope (empty for a single item)."""
    if isinstance(body, dict) and "batch" in body:
        envelope = load(schema, body)
        limit = current_app.config["ANALYTICS_SETTINGS"].max_batch_events
        if len(envelope["batch"]) > limit:
            raise PayloadTooLarge(f"more than {limit} {noun}s in one batch")
        return envelope["batch"], envelope
    return [body], {}


def _answer(result: TrackResult, batch: bool, noun: str) -> Response:
    """The ``202``; a single invalid item, or a batch of which none was
    accepted, is a ``400`` naming the fields."""
    if batch:
        if result.accepted == 0 and result.rejected:
            raise ValidationError(f"no {noun} was accepted", {"rejected": result.rejected})
    elif result.rejected:
        raise ValidationError(f"invalid {noun}", result.rejected[0]["errors"])
    # orjson: the body lists every id of the batch; Flask's encoder costs more.
    return Response(orjson.dumps(result.as_dict()), status=202, mimetype="application/json")


def admit(
    schema: marshmallow.Schema,
    noun: str,
    prepare: Callable[[list[Any], dict[str, Any]], P],
    track_as: Callable[..., tuple[ApiKey, TrackResult]],
) -> Response:
    """The ``202`` of an ingest endpoint taking one item or ``{"batch": [...]}``.

    ``prepare(items, envelope)`` validates and encodes the items, no I/O
    (``envelope``: the loaded batch envelope, empty for a single item);
    ``track_as(secret, prepared, where=, remote=)`` checks the key and queues
    them in one Redis round trip. Whatever fails in the body is answered
    only after the key was checked, as ``@require`` does: a bad key's 401
    (or a 429, 403) comes before the body's 400 or 413.
    """
    secret = bearer_token()

    def parse() -> tuple[dict[str, Any], P]:
        items, envelope = _items(schema, json_body(), noun)
        return envelope, prepare(items, envelope)

    envelope, prepared = prepare_after_key(secret, "ingest", parse)
    _, result = track_as(secret, prepared, where="http", remote=request.remote_addr)
    return _answer(result, bool(envelope), noun)


@api.post("/events")
def post_events() -> ResponseReturnValue:
    """The hot path: the events are validated and encoded first (no I/O),
    then one Redis round trip checks the key (role, rate limit) and queues
    them (:meth:`EventService.track_as`)."""
    events = get_analytics().events
    return admit(
        event_batch_schema,
        "event",
        lambda items, envelope: events.prepare(items, sent_at=envelope.get("sentAt")),
        events.track_as,
    )


@api.get("/events")
@require("read")
def get_events() -> ResponseReturnValue:
    key = g.api_key
    query: dict[str, Any] = request.args.to_dict()
    # Property filters may repeat (properties.amount=gte:10&properties.amount=lt:20).
    query.update({k: request.args.getlist(k) for k in query if k.startswith("properties.")})
    service = get_analytics()
    # A key created without PHI access gets sealed values redacted, and may
    # not pick a person's events out by their id (a lookup by identifier).
    if query.get("userId"):
        key.require_phi("select events by userId")
    events, cursor = service.events.get_events(query, reveal_phi=key.reveal_phi, scope_user_hash=key.user_hash)
    service.privacy.audit_read(key.id, query, len(events), request.remote_addr, scoped=key.scoped, phi=key.reveal_phi)
    return jsonify(events=events, next=cursor)


@api.get("/event-types")
@require("read")
def list_event_types() -> ResponseReturnValue:
    key = g.api_key
    types = [asdict(t) for t in get_analytics().events.event_types()]
    if key.scoped:  # names and priorities only: the rest describes everyone's data
        types = [{"name": t["name"], "priority": t["priority"]} for t in types]
    get_analytics().privacy.record("eventTypes.read", key.id, request.remote_addr, count=len(types), scoped=key.scoped)
    return jsonify(eventTypes=types, builtinClear=list(BUILTIN_CLEAR))


@api.post("/event-types")
@require("admin")
def register_event_type() -> ResponseReturnValue:
    """Register (or update) a type with the fields that stay clear in its
    events; audited as ``event_type.register`` (names and paths only)."""
    data = load(event_type_schema, json_body())
    event_type = get_analytics().events.register_event_type(
        data["name"],
        data["priority"],
        data["description"],
        data["clear"],
        actor=g.api_key.id,
        remote=request.remote_addr,
    )
    return jsonify(asdict(event_type)), 201
