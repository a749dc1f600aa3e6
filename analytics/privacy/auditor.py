"""What the service writes to the audit log, in one place.

:class:`analytics.privacy.audit.AuditLog` is the tamper-evident stream; this module
decides what an entry says, so every face (HTTP, WebSocket, CLI, exports)
audits the same way:

* the actor is a key id (``cli`` for the command line, ``system`` for
  internal work), never the key;
* user ids appear only as their keyed hash (``userHash``);
* the caller's address (``remote``) may itself identify a person (a
  browser's IP), so it is sealed like PHI; ``remoteHash`` (a keyed hash)
  lets an auditor group entries by address without opening them.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import redis

from analytics import keyspace
from analytics.privacy.audit import AuditLog
from analytics.privacy.crypto import DecryptionError, Vault
from analytics.privacy.phi import IDENTITY_FIELDS, PhiPolicy

#: Longest filter value kept in an entry (a cursor, a type name...).
MAX_FILTER_CHARS = 200


class Auditor:
    def __init__(
        self, client: redis.Redis, log: AuditLog, vault: Vault, policy: PhiPolicy, auth_failure_window: int = 60
    ) -> None:
        self._redis = client
        self.log = log
        self._vault = vault
        self._policy = policy
        self._window = auth_failure_window

    # -- shaping -------------------------------------------------------------
    def remote_fields(self, remote: str | None) -> dict[str, str]:
        if not remote:
            return {}
        return {"remote": self._vault.seal(remote.encode()), "remoteHash": self._vault.pseudonym(remote, "remote")}

    def safe_filters(self, filters: Mapping[str, Any]) -> dict[str, Any]:
        """Query filters as an entry may hold them: identifying values and
        property filter values hashed (a repeated parameter: its list)."""
        out: dict[str, Any] = {}
        for name, value in filters.items():
            if value is None or value == "":
                continue
            # Property filters hold values of events: never in clear, even
            # on clear fields (a value the screen would seal may be asked for).
            if name in IDENTITY_FIELDS or name.startswith("properties.") or self._policy.is_phi(name):
                out[name + "Hash"] = self._vault.pseudonym(str(value))
            else:
                out[name] = str(value)[:MAX_FILTER_CHARS]
        return out

    def metric_query(self, query: Mapping[str, Any]) -> dict[str, Any]:
        """A metric query (``GET /v1/metrics/{name}`` parameters, validated)
        as an entry may hold it: the aggregation, range and ``groupBy`` (a
        tag key) as given; tag filter values as keyed hashes (a tag value may
        be an id), their keys clear."""
        out: dict[str, Any] = {"agg": str(query.get("agg") or "avg")[:MAX_FILTER_CHARS]}
        for name in ("start", "end", "bucket", "groupBy"):
            if query.get(name) not in (None, ""):
                out[name] = str(query[name])[:MAX_FILTER_CHARS]
        tags = query.get("tags")
        if tags:
            pairs = tags.items() if isinstance(tags, Mapping) else (p.partition(":")[::2] for p in str(tags).split(","))
            out["tagHashes"] = {k.strip(): self._vault.pseudonym(str(v).strip()) for k, v in pairs}
        return out

    # -- entries -------------------------------------------------------------
    def record(self, action: str, actor: str, remote: str | None = None, **fields: Any) -> str:
        return self.log.record(action, actor, **fields, **self.remote_fields(remote))

    def data_read(
        self, action: str, actor: str, filters: Mapping[str, Any], count: int, remote: str | None = None, **extra: Any
    ) -> str:
        """A read of event data: ``events.read``, ``events.export``,
        ``stream.open``... with the filters and how many records left."""
        return self.record(action, actor, remote, filters=self.safe_filters(filters), count=count, **extra)

    def auth_failure(self, where: str, remote: str | None = None, reason: str = "") -> bool:
        """Count an authentication failure; audit it unless this address
        already failed within the window (then only every 100th is written,
        with the count). Returns whether an entry was written."""
        remote_hash = self._vault.pseudonym(remote or "-", "remote")
        pipe = self._redis.pipeline(transaction=False)
        pipe.incr(keyspace.AUTH_FAILURES_TOTAL)
        pipe.incr(keyspace.AUTH_FAILURES_BY_REMOTE + remote_hash)
        pipe.expire(keyspace.AUTH_FAILURES_BY_REMOTE + remote_hash, self._window, nx=True)
        _, in_window, _ = pipe.execute()
        if in_window != 1 and in_window % 100:
            return False
        self.record("auth.failure", "anonymous", remote, where=where, reason=reason, failuresInWindow=in_window)
        return True

    def auth_failures(self) -> int:
        return int(self._redis.get(keyspace.AUTH_FAILURES_TOTAL) or 0)

    # -- reading -------------------------------------------------------------
    def page(self, after: str | None, limit: int, reveal: bool = True) -> tuple[list[dict[str, Any]], str | None]:
        """Entries oldest first after stream id ``after``, and the next cursor."""
        start = f"({after}" if after else "-"
        entries = self.log.entries(start, limit + 1)
        more = len(entries) > limit
        entries = entries[:limit]
        for entry in entries:
            sealed = entry.pop("remote", None)
            if sealed and reveal:
                try:
                    entry["remote"] = self._vault.open(sealed).decode()
                except DecryptionError:
                    entry["remote"] = None  # sealed under a key no longer configured
        return entries, (entries[-1]["id"] if more and entries else None)
