"""The dead-letter store: what could not be processed, with a typed reason.

One stream per kind (``analytics:dlq:events``, ``analytics:dlq:metrics``,
``analytics:dlq:segment``). An entry holds:

* ``reason``: a short machine-readable reason (``invalid_record``,
  ``processing_error``, ``invalid_message``...), never a PHI value;
* ``attempts``: deliveries before it was set aside;
* ``record``: the record as queued (PHI already sealed), or, for input that
  never became a record, ``sealed``: the whole raw message sealed, since it
  may carry PHI anywhere;
* ``user``: the user's keyed hash when known (for erasure).
"""
from __future__ import annotations

import time
from typing import Any

import orjson
import redis

from analytics.crypto import Vault

DLQ_PREFIX = "analytics:dlq:"
KINDS = ("events", "metrics", "segment")


def dlq_key(kind: str) -> str:
    return DLQ_PREFIX + kind


class DeadLetters:
    def __init__(self, client: redis.Redis, vault: Vault) -> None:
        self._redis = client
        self._vault = vault

    def add_record(self, kind: str, record: dict[str, Any], reason: str, attempts: int,
                   pipe: redis.client.Pipeline | None = None) -> None:
        """Set aside a queued record (its PHI is sealed already)."""
        target = pipe if pipe is not None else self._redis
        target.xadd(dlq_key(kind), {
            "reason": reason, "attempts": attempts, "ts": round(time.time(), 3),
            "record": orjson.dumps(record), "user": record.get("u", "")})

    def add_raw(self, kind: str, message: Any, reason: str, user_hash: str = "",
                details: dict[str, Any] | None = None) -> None:
        """Set aside raw input that failed validation, sealed whole."""
        self._redis.xadd(dlq_key(kind), {
            "reason": reason, "attempts": 0, "ts": round(time.time(), 3),
            "sealed": self._vault.seal(orjson.dumps(message)), "user": user_hash,
            "details": orjson.dumps(details or {})})

    def length(self, kind: str | None = None) -> int:
        kinds = (kind,) if kind else KINDS
        return sum(self._redis.xlen(dlq_key(k)) for k in kinds)
