"""The codec between events as clients send them and records (the stored
form, :mod:`analytics.events.records`): PHI sealed on the way in, opened for
the keys allowed to see it on the way out, user ids as keyed hashes."""

from __future__ import annotations

import uuid
from typing import Any, cast

import msgpack
import orjson

from analytics.events.records import (
    FIELD_CODES,
    FIELD_NAMES,
    NESTED,
    PRIORITY_CODE,
    QueueItem,
    dedupe_member,
    item_record,
    iter_blobs,
    packb,
    unpack_fields,
)
from analytics.events.schemas import format_time_ms
from analytics.privacy import phi
from analytics.privacy.crypto import Vault


class RecordCodec:
    """Turns validated events into records and records into API events."""

    def __init__(self, vault: Vault, policy: phi.PhiPolicy, max_skew_ms: int) -> None:
        self.vault = vault
        self.policy = policy
        self.max_skew_ms = max_skew_ms

    def event_id(self, message_id: str) -> str:
        """The stored id of the event with ``message_id`` (its keyed hash)."""
        return self.vault.event_id(message_id)

    def user_hash(self, user_id: str) -> str:
        return self.vault.pseudonym(user_id)

    def encode(
        self,
        event: dict[str, Any],
        priority: str,
        received_ms: int,
        sent_at_ms: int | None,
        pairs: phi.Pairs | None = None,
    ) -> dict[str, Any]:
        """A record from an event loaded by :data:`analytics.events.schemas.event_schema`
        (``pairs``: see :meth:`encode_item`)."""
        return item_record(self.encode_item(event, priority, received_ms, sent_at_ms, pairs)[1])

    def encode_item(
        self,
        event: dict[str, Any],
        priority: str,
        received_ms: int,
        sent_at_ms: int | None,
        pairs: phi.Pairs | None = None,
    ) -> tuple[str, QueueItem]:
        """The messageId and queue item (:func:`queue_item`) of an event
        loaded by :data:`analytics.events.schemas.event_schema`. With ``pairs``, the
        event's objects are already without PHI and ``pairs`` is what
        :func:`phi.split` found (:func:`analytics.events.fastpath.load_split`).

        The ingest hot path: the blob is built from the vault's raw bytes
        directly, never through the text forms of a record dict.
        """
        vault = self.vault
        message_id = event.get("messageId")
        stored_message: bytes | None = None
        if not message_id:
            generated = uuid.uuid4()
            message_id, stored_message = str(generated), generated.bytes
        event_id = vault.event_id_raw(message_id)
        user_id, anonymous_id = event.get("userId"), event.get("anonymousId")
        user = vault.pseudonym_raw(user_id) if user_id else None
        anonymous = vault.pseudonym_raw(anonymous_id) if anonymous_id else None
        timestamp = event.get("timestamp")
        corrected: tuple[int, int] | tuple[()] = ()
        if timestamp is None:
            ts = received_ms
        elif sent_at_ms is not None:
            # Segment's rule: the client's clock is off by (sentAt - receivedAt).
            skew = max(-self.max_skew_ms, min(self.max_skew_ms, received_ms - sent_at_ms))
            ts = timestamp + skew
            corrected = (timestamp, sent_at_ms)
        else:
            ts = timestamp
        clear = event
        if pairs is None:
            clear, pairs = phi.split(event, self.policy)
        sealed = None
        if stored_message is None:
            # The client's messageId: sealed, kept in clear only as its keyed hash (the event id).
            pairs.append([[phi.MESSAGE_ID], message_id])
        if pairs:
            for path, _ in pairs:  # fresh lists (phi.split, load_split): changed in place
                path[0] = FIELD_CODES.get(path[0], path[0])
            sealed = vault.seal_raw(packb(pairs))
        fields: list[Any] = [
            event_id,
            stored_message,
            PRIORITY_CODE[priority],
            ts,
            received_ms - ts,
            user,
            anonymous,
            clear.get("properties") or None,
            clear.get("context") or None,
            clear.get("traits") or None,
            clear.get("metadata") or None,
            sealed,
            *corrected,
        ]
        while fields[-1] is None:
            fields.pop()
        shard, member = dedupe_member(event_id)
        owner = user or anonymous
        return message_id, [event["type"], ts, owner.hex() if owner else "", shard, member, packb(fields)]

    def decode(self, record: dict[str, Any], reveal_phi: bool) -> dict[str, Any]:
        """The API form of a record; PHI opened only when ``reveal_phi``."""
        event: dict[str, Any] = {
            "id": record["i"],
            # Without PHI access, a client's (sealed) messageId is the event id.
            "messageId": record["m"],
            "type": record["t"],
            "priority": record["p"],
            "timestamp": format_time_ms(record["ts"]),
            "receivedAt": format_time_ms(record["rt"]),
            "userId": None,
            "anonymousId": None,
        }
        if "ot" in record:
            event["originalTimestamp"] = format_time_ms(record["ot"])
            event["sentAt"] = format_time_ms(record["sa"])
        for field, short in NESTED:
            event[field] = record.get(short) or {}
        sealed = record.get("s")
        if sealed:
            pairs = open_pairs(self.vault.open(sealed))
            if reveal_phi:
                event = phi.merge(event, pairs)
            else:
                event = phi.redact(event, [pair for pair in pairs if pair[0] != [phi.MESSAGE_ID]])
        return event


def open_pairs(plain: bytes) -> list[list[Any]]:
    """The PHI pairs of an opened seal: msgpack with the top-level field of
    each path as a small code, or JSON (older records)."""
    if plain[:1] == b"[":
        return cast(list[list[Any]], orjson.loads(plain))
    pairs = msgpack.unpackb(plain)
    for pair in pairs:
        path = pair[0]
        if path and isinstance(path[0], int):
            path[0] = FIELD_NAMES[path[0]]
    return cast(list[list[Any]], pairs)


def live_records(message: bytes) -> list[dict[str, Any]]:
    """The records of a live fan-out message: a msgpack array of type,
    blobs, type, blobs... where each blobs is one or more blobs one after
    another (as the commit script publishes the records of each page)."""
    flat = msgpack.unpackb(message, raw=True)
    return [
        unpack_fields(flat[k].decode(), fields)
        for k in range(0, len(flat) - 1, 2)
        for fields in iter_blobs(flat[k + 1])
    ]
