"""The stored form of an event (a *record*) and its conversions.

A record is what goes on the queue and into the store: the event with its PHI
taken out and sealed (:mod:`analytics.phi`), user ids replaced by keyed
hashes, times as integer milliseconds. Short keys, because every byte is paid
per stored event:

====  ===============================  ====  ==============================
key   meaning                          key   meaning
====  ===============================  ====  ==============================
i     event id (keyed hash of m)       u     keyed hash of userId, or ""
m     messageId                        a     keyed hash of anonymousId, or ""
t     type                             pr    properties without PHI
p     priority                         cx    context without PHI
ts    timestamp (ms, skew-corrected)   tr    traits without PHI
rt    receivedAt (ms)                  md    metadata without PHI
ot    original timestamp (ms), when    sa    batch sentAt (ms), when given
      corrected                        s     sealed PHI pairs, when any
====  ===============================  ====  ==============================
"""
from __future__ import annotations

import uuid
from typing import Any

import orjson

from analytics import phi
from analytics.crypto import Vault
from analytics.schemas import format_time_ms

_NESTED = (("properties", "pr"), ("context", "cx"), ("traits", "tr"), ("metadata", "md"))


class RecordCodec:
    """Turns validated events into records and records into API events."""

    def __init__(self, vault: Vault, policy: phi.PhiPolicy, max_skew_ms: int) -> None:
        self.vault = vault
        self.policy = policy
        self.max_skew_ms = max_skew_ms

    def user_hash(self, user_id: str) -> str:
        return self.vault.pseudonym(user_id)

    def encode(self, event: dict[str, Any], priority: str, received_ms: int,
               sent_at_ms: int | None) -> dict[str, Any]:
        """A record from an event loaded by :data:`analytics.schemas.event_schema`."""
        message_id = event.get("messageId") or str(uuid.uuid4())
        record: dict[str, Any] = {
            "i": self.vault.event_id(message_id),
            "m": message_id,
            "t": event["type"],
            "p": priority,
            "rt": received_ms,
            "u": self.user_hash(event["userId"]) if event.get("userId") else "",
            "a": self.user_hash(event["anonymousId"]) if event.get("anonymousId") else "",
        }
        timestamp = event.get("timestamp")
        if timestamp is None:
            record["ts"] = received_ms
        elif sent_at_ms is not None:
            # Segment's rule: the client's clock is off by (sentAt - receivedAt).
            skew = max(-self.max_skew_ms, min(self.max_skew_ms, received_ms - sent_at_ms))
            record["ts"] = timestamp + skew
            record["ot"] = timestamp
            record["sa"] = sent_at_ms
        else:
            record["ts"] = timestamp
        clear, pairs = phi.split(event, self.policy)
        for field, short in _NESTED:
            if clear.get(field):
                record[short] = clear[field]
        if pairs:
            record["s"] = self.vault.seal(orjson.dumps(pairs))
        return record

    def decode(self, record: dict[str, Any], reveal_phi: bool) -> dict[str, Any]:
        """The API form of a record; PHI opened only when ``reveal_phi``."""
        event: dict[str, Any] = {
            "id": record["i"],
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
        for field, short in _NESTED:
            event[field] = record.get(short) or {}
        sealed = record.get("s")
        if sealed:
            pairs = orjson.loads(self.vault.open(sealed))
            event = phi.merge(event, pairs) if reveal_phi else phi.redact(event, pairs)
        return event
