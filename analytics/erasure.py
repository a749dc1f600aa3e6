"""Erasure: removing every trace of one user.

What is removed, for the user's keyed hash ``h``:

1. A tombstone first: ``HSET analytics:erased h <now ms>`` (Redis clock).
   Events of the user still waiting in the queue streams, or held by a
   worker, were accepted before that instant; the commit script
   (``lua/commit_events.lua``) compares each queue entry's id (its XADD time)
   with the tombstone and deletes such events instead of storing them. So
   nothing accepted before the erasure can reappear after it, without
   draining or pausing the pipeline. Events the user sends *after* the
   erasure are new data and are stored normally.
2. Every stored record of the user, found through the user index
   ``analytics:events:user:{h}`` (the pages holding the user's records):
   each such page is rewritten without the user's records, keeping the
   other users' (or deleted, with its time index entry, when none is
   left), and the records' dedupe marks are removed, one page per atomic
   compare-and-set step (:meth:`analytics.store.EventStore.rewrite`); then
   the index.
3. Dead letters whose ``user`` field is ``h``, in every ``analytics:dlq:*``
   stream.
4. API keys scoped to the user: revoked.

Rollups and metrics are anonymous aggregates and stay. The tombstone keeps
the keyed hash (never the id) so that the guarantee of step 1 holds; it is
the same pseudonym the audit entry of the erasure records. Events carrying
the id only as ``anonymousId`` are not linked to the user and are not
erased by user id.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, cast

import redis

from analytics import keyspace, records
from analytics.apikeys import ApiKeyStore
from analytics.errors import AnalyticsError
from analytics.redis_client import StreamChunk
from analytics.store import EventStore

#: Index entries (pages) or dead letters read per step.
SLICE = 500
#: Attempts at rewriting a page that keeps changing under us (a commit
#: appending to it) before giving up on this run.
MAX_RACES = 50

# redis-py's annotations cover its async client too; these are what the
# synchronous client (decode_responses off) returns.


@dataclass
class ErasureReport:
    userHash: str  # noqa: N815 - the JSON field name of the API
    records: int = 0
    deadLetters: int = 0  # noqa: N815
    keysRevoked: list[str] = field(default_factory=list)  # noqa: N815
    erasedAt: int = 0  # noqa: N815

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


class Eraser:
    def __init__(self, client: redis.Redis, api_keys: ApiKeyStore,
                 store: EventStore | None = None) -> None:
        self._redis = client
        self._api_keys = api_keys
        self._store = store or EventStore(client)

    def tombstone(self, user_hash: str) -> int:
        """Mark ``user_hash`` erased as of now (Redis clock, ms); returns it."""
        seconds, micros = self._redis.time()
        now_ms = seconds * 1000 + micros // 1000
        self._redis.hset(keyspace.ERASED, user_hash, now_ms)
        return now_ms

    def erase(self, user_hash: str) -> ErasureReport:
        report = ErasureReport(user_hash)
        report.erasedAt = self.tombstone(user_hash)
        report.records = self._erase_records(user_hash)
        report.deadLetters = self._erase_dead_letters(user_hash)
        for key in self._api_keys.list():
            if key.user_hash == user_hash and not key.revoked:
                self._api_keys.revoke(key.id)
                report.keysRevoked.append(key.id)
        return report

    def _erase_records(self, user_hash: str) -> int:
        index = keyspace.user_index(user_hash)
        erased = 0
        while True:
            # The index only shrinks here (each rewrite removes the page's
            # member), so the first slice is always the next one to erase.
            members = [m.decode() for m in cast(list[bytes], self._redis.zrange(index, 0, SLICE - 1))]
            if not members:
                break
            for member in members:
                etype, _, page_id = member.rpartition(":")
                erased += self._erase_in_page(user_hash, etype, page_id)
                # Gone from the index even if the page held none of the
                # user's records any more (erased, expired meanwhile).
                self._redis.zrem(index, member)
        return erased

    def _erase_in_page(self, user_hash: str, etype: str, page_id: str) -> int:
        def keep(fields: list[Any], blob: bytes) -> bytes | None:
            return None if records.blob_owner(fields) == user_hash else blob

        for _ in range(MAX_RACES):
            page = self._store.page(etype, page_id)
            if page is None:
                return 0
            removed = self._store.rewrite(etype, page_id, page, keep)
            if removed >= 0:
                return removed
        raise AnalyticsError("a page kept changing during erasure; run the erasure again")

    def _erase_dead_letters(self, user_hash: str) -> int:
        erased = 0
        for stream in self._redis.scan_iter(match=keyspace.DLQ_PREFIX + "*", count=100,
                                            _type="stream"):
            start = "-"
            while True:
                chunk = cast(StreamChunk, self._redis.xrange(stream, start, "+", count=SLICE))
                doomed = [eid for eid, fields in chunk
                          if fields.get(b"user", b"").decode() == user_hash]
                if doomed:
                    erased += cast(int, self._redis.xdel(stream, *doomed))
                if len(chunk) < SLICE:
                    break
                start = "(" + chunk[-1][0].decode()
        return erased
