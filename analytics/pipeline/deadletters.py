"""The dead-letter store: what could not be processed, with a typed reason.

One stream per kind (``analytics:dlq:events``, ``analytics:dlq:metrics``,
``analytics:dlq:segment``). An entry holds:

* ``reason``: a short machine-readable reason (``invalid_record``,
  ``processing_error``, ``invalid_message``...), never a PHI value;
* ``attempts``: deliveries before it was set aside;
* ``record``: the record as queued (PHI already sealed), or, for input that
  never became a record, ``sealed``: the whole raw message sealed, since it
  may carry PHI anywhere;
* ``user``: the owner's keyed hash when known, for erasure: the user hash,
  else the anonymous hash of an anonymous-only event
  (:func:`analytics.events.records.record_owner`).

Moving in and out is exactly-once: records are set aside by the commit
script in the same step that acknowledges their queue entry
(:mod:`analytics.events.store`, :mod:`analytics.metrics.store`), and a replay
deletes the dead letter and queues its record again in one script
(:meth:`DeadLetters.requeue`), so two concurrent replays cannot both
queue it.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson
import redis

from analytics.events.records import record_owner
from analytics.lua_scripts import lua_source
from analytics.privacy.crypto import Vault

DLQ_PREFIX = "analytics:dlq:"
KINDS = ("events", "metrics", "segment")

#: Reasons the processing side uses (the ingestion side adds its own).
INVALID_RECORD = "invalid_record"
MALFORMED_ENTRY = "malformed_entry"
PROCESSING_ERROR = "processing_error"


def dlq_key(kind: str) -> str:
    return DLQ_PREFIX + kind


@dataclass(frozen=True)
class DeadLetter:
    """A record (or raw payload) to set aside, as the commit script takes it."""

    reason: str
    attempts: int
    field: str  # "record" (sealed PHI inside) or "sealed" (whole payload sealed)
    payload: bytes | str
    user: str = ""

    @classmethod
    def of_record(cls, record: Any, reason: str, attempts: int) -> DeadLetter:
        return cls(reason, attempts, "record", orjson.dumps(record), record_owner(record))

    @classmethod
    def of_raw(cls, vault: Vault, raw: bytes, reason: str, attempts: int) -> DeadLetter:
        return cls(reason, attempts, "sealed", vault.seal(raw))

    def script_args(self) -> tuple[Any, ...]:
        return (self.reason, self.attempts, self.field, self.payload, self.user)


class DeadLetters:
    def __init__(self, client: redis.Redis, vault: Vault) -> None:
        self._redis = client
        self._vault = vault
        # Delete and queue again in one step: a replay racing another
        # cannot queue the record twice.
        self._requeue = client.register_script(lua_source("requeue_dead_letter.lua"))

    def add_record(
        self, kind: str, record: dict[str, Any], reason: str, attempts: int, pipe: redis.client.Pipeline | None = None
    ) -> None:
        """Set aside a queued record (its PHI is sealed already)."""
        target = pipe if pipe is not None else self._redis
        target.xadd(
            dlq_key(kind),
            {
                "reason": reason,
                "attempts": attempts,
                "ts": round(time.time(), 3),
                "record": orjson.dumps(record),
                "user": record_owner(record),
            },
        )

    def add_raw(
        self, kind: str, message: Any, reason: str, user_hash: str = "", details: dict[str, Any] | None = None
    ) -> None:
        """Set aside raw input that failed validation, sealed whole."""
        stream, fields = self.raw_entry(kind, message, reason, user_hash, details)
        self._redis.xadd(stream, fields)

    def raw_entry(
        self, kind: str, message: Any, reason: str, user_hash: str = "", details: dict[str, Any] | None = None
    ) -> tuple[str, dict[Any, Any]]:
        """The stream and fields of :meth:`add_raw`'s entry, for a caller
        that writes it with others (no I/O)."""
        return dlq_key(kind), {
            "reason": reason,
            "attempts": 0,
            "ts": round(time.time(), 3),
            "sealed": self._vault.seal(orjson.dumps(message)),
            "user": user_hash,
            "details": orjson.dumps(details or {}),
        }

    def length(self, kind: str | None = None) -> int:
        kinds = (kind,) if kind else KINDS
        return sum(self._redis.xlen(dlq_key(k)) for k in kinds)

    def lengths(self) -> dict[str, int]:
        pipe = self._redis.pipeline(transaction=False)
        for kind in KINDS:
            pipe.xlen(dlq_key(kind))
        return dict(zip(KINDS, pipe.execute(), strict=True))

    # -- reading -------------------------------------------------------------
    def entries(self, kind: str, start: str = "-", count: int = 100) -> list[dict[str, Any]]:
        """Dead letters of ``kind``, oldest first, from stream id ``start``.

        Each has ``id``, ``kind``, ``reason``, ``attempts``, ``ts`` and either
        ``record`` (the parsed record, PHI still sealed) or ``sealed``
        (the sealed raw payload), and ``details``.
        """
        out = []
        found: Any = self._redis.xrange(dlq_key(kind), start, "+", count=count)
        for entry_id, fields in found:
            out.append(self._decode(kind, entry_id, fields))
        return out

    def get(self, kind: str, entry_id: str) -> dict[str, Any] | None:
        found: Any = self._redis.xrange(dlq_key(kind), entry_id, entry_id)
        return self._decode(kind, *found[0]) if found else None

    @staticmethod
    def _decode(kind: str, entry_id: bytes, fields: dict[bytes, bytes]) -> dict[str, Any]:
        item: dict[str, Any] = {
            "id": entry_id.decode(),
            "kind": kind,
            "reason": fields.get(b"reason", b"").decode(),
            "attempts": int(fields.get(b"attempts", b"0")),
            "ts": float(fields.get(b"ts", b"0")),
            "user": fields.get(b"user", b"").decode(),
            "details": {},
        }
        if b"details" in fields:
            try:
                item["details"] = orjson.loads(fields[b"details"])
            except orjson.JSONDecodeError:
                pass
        if b"record" in fields:
            try:
                item["record"] = orjson.loads(fields[b"record"])
            except orjson.JSONDecodeError:
                item["record"] = None
        if b"sealed" in fields:
            item["sealed"] = fields[b"sealed"].decode()
        return item

    def open_sealed(self, item: dict[str, Any]) -> bytes:
        """The raw payload of a sealed dead letter (may hold PHI: never log it)."""
        return self._vault.open(item["sealed"])

    # -- replay --------------------------------------------------------------
    def requeue(self, kind: str, entry_id: str, lane: str, fields: Mapping[str, bytes]) -> bool:
        """Delete the dead letter and queue an entry of ``fields`` (as
        :meth:`analytics.pipeline.queue.EventQueue.fields` packs it) on ``lane``, in
        one step. False when another replay took it first."""
        flat: list[Any] = [entry_id]
        for name, value in fields.items():
            flat += (name, value)
        return bool(self._requeue(keys=[dlq_key(kind), lane], args=flat))

    def discard(self, kind: str, entry_id: str) -> bool:
        return bool(self._redis.xdel(dlq_key(kind), entry_id))
