"""The audit log: an append-only Redis stream, hash-chained with an HMAC.

Each entry carries ``mac = HMAC(key, previous mac | entry fields)``. Deleting,
reordering or editing an entry breaks the chain at that point, which
:meth:`AuditLog.verify` reports. The chain head (last mac) is kept beside the
stream and advanced in the same Lua step as the XADD, so concurrent writers
from several processes cannot fork the chain. The HMAC key never leaves the
processes (it is derived from the encryption keys), so someone with Redis
access alone cannot forge a consistent chain.

Entries never hold PHI: actors are key ids, users appear as keyed hashes.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, cast

import orjson
import redis

from analytics.errors import AnalyticsError
from analytics.lua_scripts import lua_source
from analytics.privacy.crypto import Vault
from analytics.redis_client import StreamChunk

AUDIT_STREAM = "analytics:audit"
AUDIT_HEAD = "analytics:audit:head"


@dataclass(frozen=True)
class VerifyResult:
    ok: bool
    checked: int
    broken_at: str | None = None
    reason: str = ""


class AuditLog:
    def __init__(self, client: redis.Redis, vault: Vault) -> None:
        self._redis = client
        self._vault = vault
        # The mac is computed in Python over (previous mac, fields); the
        # script only appends when the head is still the previous mac the
        # caller saw, so a racing writer retries with the new head instead
        # of forking the chain.
        self._append = client.register_script(lua_source("append_audit_entry.lua"))

    def _mac(self, prev: str, data: bytes) -> str:
        return self._vault.audit_mac(prev.encode() + b"|" + data)

    def _head(self) -> str:
        return (cast(bytes | None, self._redis.get(AUDIT_HEAD)) or b"").decode()

    def record(self, action: str, actor: str, **fields: Any) -> str:
        """Append an entry: ``action`` (``events.read``, ``key.create``...),
        ``actor`` (a key id, ``cli`` or ``system``) and PHI-free details."""
        entry = {"ts": round(time.time(), 3), "action": action, "actor": actor, **fields}
        data = orjson.dumps(entry, option=orjson.OPT_SORT_KEYS)
        head = self._head()
        for _ in range(50):
            ok, value = self._append(keys=[AUDIT_STREAM, AUDIT_HEAD], args=[head, data, self._mac(head, data)])
            if ok:
                return value.decode()
            head = value.decode()
        raise AnalyticsError("audit log contention: could not append")

    def entries(self, start: str = "-", count: int = 100) -> list[dict[str, Any]]:
        """Entries oldest first from stream id ``start``."""
        out = []
        for entry_id, fields in cast(StreamChunk, self._redis.xrange(AUDIT_STREAM, start, "+", count=count)):
            out.append({"id": entry_id.decode(), **orjson.loads(fields[b"data"])})
        return out

    def verify(self, page: int = 1000) -> VerifyResult:
        """Walk the whole chain; say where it first breaks."""
        prev = ""
        checked = 0
        start = "-"
        while True:
            chunk = cast(StreamChunk, self._redis.xrange(AUDIT_STREAM, start, "+", count=page))
            for entry_id, fields in chunk:
                eid = entry_id.decode()
                if fields.get(b"prev", b"").decode() != prev:
                    return VerifyResult(False, checked, eid, "an entry before this one is missing")
                if fields.get(b"mac", b"").decode() != self._mac(prev, fields.get(b"data", b"")):
                    return VerifyResult(False, checked, eid, "this entry was altered")
                prev = fields[b"mac"].decode()
                checked += 1
            if len(chunk) < page:
                break
            start = "(" + chunk[-1][0].decode()
        head = self._head()
        if head != prev:
            return VerifyResult(False, checked, None, "entries at the end are missing")
        return VerifyResult(True, checked)
