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
   compare-and-set step (:meth:`analytics.events.store.EventStore.rewrite`); then
   the index. The index holds the records the hash *owns*
   (:mod:`analytics.events.records`): the user's, and anonymous-only records
   whose anonymousId is the same string; both go.
3. The user's anonymous ids, and their anonymous-only events. A record
   carrying both a userId and an anonymousId (an identify, or any event
   after logging in) links that anonymous id to the user, as Segment does.
   While the user's records are removed, the anonymous hashes they carry
   are collected; for each, ``a``: a tombstone (as in step 1, so that
   anonymous-only events of ``a`` still queued are dropped at commit), then
   the records of index ``a`` that have no userId (a visitor's events
   before logging in), as in step 2. Records of another user carrying
   ``a`` (a shared device) are that user's and stay.
4. Dead letters whose ``user`` field (their owner's hash) is ``h`` or one
   of the linked ``a``, in every ``analytics:dlq:*`` stream.
5. API keys scoped to the user: revoked.
6. The append-only file: a rewrite is started (``BGREWRITEAOF``) once the
   rest is done, when Redis runs with AOF. Until then the AOF still holds
   the commands that wrote the user's records; the rewrite replaces it with
   the data as it is now, without them (:meth:`Eraser.rewrite_aof`).

Rollups and metrics are anonymous aggregates and stay. The tombstones keep
the keyed hashes (never the ids) so that the guarantee of step 1 holds; the
user's is the same pseudonym the audit entry of the erasure records.

Restartable: a run that fails half-way (Redis gone, a page that kept
changing) can simply be run again. Each link is saved in
``analytics:erased:links:{h}`` before the page that shows it is rewritten,
so a second run still knows the anonymous ids of records the first one
removed; the set is deleted when the erasure completes.

Limits:

* Links are found from the user's *stored* records: an identify still
  waiting in the queue when the erasure runs links nothing (and is itself
  dropped by the tombstone).
* Anonymous-only events stored before anonymous-only records were indexed
  (by their anonymous hash) are in no index, so they are not found.
* One hop: the anonymous ids of the user's own records, not further ids
  linked to those (``alias`` calls are not followed).
* An anonymous id shared by two users (a shared device) is erased, with its
  anonymous-only events, when either user is erased.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any, cast

import redis

from analytics import keyspace
from analytics.errors import AnalyticsError
from analytics.events import records
from analytics.events.store import EventStore
from analytics.privacy.apikeys import ApiKeyStore
from analytics.redis_client import StreamChunk

log = logging.getLogger(__name__)

#: Index entries (pages) or dead letters read per step.
SLICE = 500
#: Attempts at rewriting a page that keeps changing under us (a commit
#: appending to it) before giving up on this run.
MAX_RACES = 50
#: How long an erasure waits for an AOF rewrite already running (it began
#: before the erasure, so it may keep the erased data) before starting its
#: own. Bounded: an erasure may be an HTTP request, and its audit entry is
#: written after it; past it, a warning asks for a BGREWRITEAOF instead.
AOF_WAIT_SECONDS = 10.0

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
    def __init__(self, client: redis.Redis, api_keys: ApiKeyStore, store: EventStore | None = None) -> None:
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
        links_key = keyspace.erasure_links(user_hash)
        # Links saved by an earlier run that did not complete.
        links = {m.decode() for m in cast(set[bytes], self._redis.smembers(links_key))}

        def link(fields: list[Any]) -> None:
            anonymous = records.blob_anonymous(fields)
            if (
                anonymous
                and anonymous != user_hash
                and anonymous not in links
                and records.blob_user(fields) == user_hash
            ):
                # Saved before the page is rewritten without the record.
                self._redis.sadd(links_key, anonymous)
                links.add(anonymous)

        report.records = self._erase_owned(user_hash, lambda fields: records.blob_owner(fields) == user_hash, link)
        for anonymous in sorted(links):
            self.tombstone(anonymous)
            report.records += self._erase_owned(anonymous, _anonymous_only(anonymous))
        report.deadLetters = self._erase_dead_letters({user_hash, *links})
        for key in self._api_keys.list():
            if key.user_hash == user_hash and not key.revoked:
                self._api_keys.revoke(key.id)
                report.keysRevoked.append(key.id)
        self._redis.delete(links_key)
        self.rewrite_aof()
        return report

    def rewrite_aof(self, wait: float = AOF_WAIT_SECONDS) -> str:
        """Start an AOF rewrite so that erased data leaves the disk: until
        the AOF is rewritten it still holds the commands that wrote them.

        Returns ``"started"`` (Redis may start it after a snapshot in
        progress), ``"off"`` when Redis runs without AOF, or
        ``"failed"`` (logged, with what to do; the erasure itself is done).
        A rewrite already running forked before the erasure and may keep
        the erased data, so this waits for it (up to ``wait`` s) and starts
        another. Never raises: the erasure is complete either way.
        """
        deadline = time.monotonic() + wait
        try:
            if not int(self._info_persistence().get("aof_enabled", 0)):
                return "off"
            while True:
                try:
                    self._redis.bgrewriteaof()
                except redis.ResponseError as exc:
                    if "in progress" not in str(exc) or time.monotonic() > deadline:
                        raise
                    time.sleep(0.1)  # a rewrite from before the erasure: wait for it, then ours
                    continue
                return "started"
        except redis.RedisError as exc:
            log.warning(
                "erasure done, but the AOF rewrite could not be started (%s): run BGREWRITEAOF "
                "so that the erased data leave the disk",
                type(exc).__name__,
            )
            return "failed"

    def _info_persistence(self) -> dict[str, Any]:
        return cast(dict[str, Any], self._redis.info("persistence"))

    def _erase_owned(
        self, owner: str, doomed: Callable[[list[Any]], bool], removing: Callable[[list[Any]], None] | None = None
    ) -> int:
        """Remove the records of the pages of index ``owner`` for which
        ``doomed(fields)`` holds (``removing(fields)`` is told of each first),
        and the index members of pages left without records of ``owner``."""
        index = keyspace.user_index(owner)
        erased = 0
        while True:
            # Members of pages still holding records of the owner that are
            # not doomed (those of a userId of the same string as an
            # anonymous id) stay: ``kept`` of them lie before the next one.
            kept, changed = 0, False
            while True:
                members = [m.decode() for m in cast(list[bytes], self._redis.zrange(index, kept, kept + SLICE - 1))]
                if not members:
                    break
                for member in members:
                    etype, _, page_id = member.rpartition(":")
                    removed, owned = self._erase_in_page(owner, etype, page_id, doomed, removing)
                    erased += removed
                    changed = changed or removed > 0
                    if owned:
                        kept += 1
                    else:
                        # Gone from the index even if the page held none of
                        # the owner's records any more (erased, expired
                        # meanwhile).
                        self._redis.zrem(index, member)
                        changed = True
            # With members kept, a commit meanwhile may have moved one past
            # the walk (scores change): walk again until nothing changes.
            if not (kept and changed):
                return erased

    def _erase_in_page(
        self,
        owner: str,
        etype: str,
        page_id: str,
        doomed: Callable[[list[Any]], bool],
        removing: Callable[[list[Any]], None] | None,
    ) -> tuple[int, bool]:
        """Rewrite one page without its doomed records: (records removed,
        whether records of ``owner`` are left in it)."""
        owned = False

        def keep(fields: list[Any], blob: bytes) -> bytes | None:
            nonlocal owned
            if doomed(fields):
                if removing is not None:
                    removing(fields)
                return None
            owned = owned or records.blob_owner(fields) == owner
            return blob

        for _ in range(MAX_RACES):
            owned = False
            page = self._store.page(etype, page_id)
            if page is None:
                return 0, False
            removed = self._store.rewrite(etype, page_id, page, keep)
            if removed >= 0:
                return removed, owned
        raise AnalyticsError("a page kept changing during erasure; run the erasure again")

    def _erase_dead_letters(self, owners: set[str]) -> int:
        erased = 0
        for stream in self._redis.scan_iter(match=keyspace.DLQ_PREFIX + "*", count=100, _type="stream"):
            start = "-"
            while True:
                chunk = cast(StreamChunk, self._redis.xrange(stream, start, "+", count=SLICE))
                doomed = [eid for eid, fields in chunk if fields.get(b"user", b"").decode() in owners]
                if doomed:
                    erased += cast(int, self._redis.xdel(stream, *doomed))
                if len(chunk) < SLICE:
                    break
                start = "(" + chunk[-1][0].decode()
        return erased


def _anonymous_only(anonymous: str) -> Callable[[list[Any]], bool]:
    """Whether a record is an anonymous-only one of ``anonymous``: a linked
    anonymous id's own events, not those of a user who carried it too."""

    def doomed(fields: list[Any]) -> bool:
        return not records.blob_user(fields) and records.blob_anonymous(fields) == anonymous

    return doomed
