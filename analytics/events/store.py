"""The event store: committing processed batches and querying events.

Layout in :mod:`analytics.keyspace`. Records are stored in *pages*: a field
of ``analytics:events:processed:{type}`` holds the blobs
(:mod:`analytics.events.records`) of up to :data:`PAGE_BYTES` of records of one
type whose timestamps fall in one :data:`BUCKET_MS` time bucket, one after
another. Why: a hash field, a sorted-set member and a set member each cost
60 to 120 bytes of Redis overhead, more than a compact record itself, so
one of each per event cannot get below a few hundred bytes per event; per
page it is a byte or two. Pages are cut by time bucket, so a late event
never widens a page: every record of a page lies within ``BUCKET_MS`` below
its newest timestamp, which is the page's score in the time index
``analytics:events:time:{type}``. A page the commit closed (full) is
compressed by the worker right after (:meth:`EventStore.compress`).

A commit runs ``lua/commit_events.lua``: acknowledgement, messageId dedupe
(sharded integer sets), appending to pages, their time and user indexes and
the live fan-out happen in one atomic step. Erasure, retention and key
rotation rewrite whole pages with ``lua/rewrite_page.lua``, a
compare-and-set: a page that changed since it was read (a commit appended
to it) is read again.

Queries walk pages newest first (by score) and merge their records in a
heap; a record is returned only once no page left unread can hold a newer
one (its score is below the record's timestamp), so the order (timestamp,
then id, descending) and the cursor are exact.
"""

from __future__ import annotations

import base64
import heapq
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, cast

import orjson
import redis

from analytics import keyspace
from analytics.errors import ValidationError
from analytics.events import records
from analytics.lua_scripts import lua_source
from analytics.pipeline.deadletters import DeadLetter, dlq_key
from analytics.pipeline.queue import Entry
from analytics.tally import Tally

LIVE_EVENTS_CHANNEL = "analytics:live:events"

#: A page holds records whose timestamps fall in one bucket of this many ms.
BUCKET_MS = 60_000
#: A page is closed once the next record would take it over this size: a
#: value of 16,378 bytes plus Redis' string header fills a 16 KiB
#: allocation exactly (about 65 typical records).
PAGE_BYTES = 16_378

#: What the time index and user index give for a page: (score, type, page id).
PageRef = tuple[int, str, str]


@dataclass
class CommitResult(Tally):
    stored: int = 0
    duplicates: int = 0
    skipped_entries: int = 0
    #: records whose owner (user, else anonymous id) was erased after they
    #: were queued: deleted, not stored
    erased: int = 0
    #: records set aside in the dead-letter store in the same step
    dead_lettered: int = 0


def encode_cursor(ts: int, member: str) -> str:
    return base64.urlsafe_b64encode(orjson.dumps([ts, member])).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[int, str]:
    try:
        ts, member = orjson.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
        if not isinstance(ts, int) or not isinstance(member, str):
            raise ValueError
    except (ValueError, TypeError, orjson.JSONDecodeError):
        raise ValidationError("invalid cursor", {"cursor": ["Not a cursor returned by this API."]}) from None
    return ts, member


def page_bucket(page_id: str) -> str:
    """The bucket (field of the open-page hash) of a page id ``bucket.seq``."""
    return page_id.partition(".")[0]


_INVERT = bytes(255 - b for b in range(256))


def _descending(event_id: str) -> bytes:
    """A key that sorts ids in descending order (for a min-heap)."""
    return event_id.encode().translate(_INVERT) + b"\xff"


def _scan_pages(
    client: redis.Redis, key: str, lo: int | None, hi: int | None, chunk: int = 64
) -> Iterator[tuple[int, str]]:
    """(score, member) of zset ``key`` by descending score within [lo, hi]."""
    low: int | str = "-inf" if lo is None else lo
    high: int | str = "+inf" if hi is None else hi
    offset = 0
    while True:
        found = cast(
            list[tuple[bytes, float]], client.zrevrangebyscore(key, high, low, start=offset, num=chunk, withscores=True)
        )
        for member, score in found:
            yield int(score), member.decode()
        if len(found) < chunk:
            return
        offset += chunk


class EventStore:
    def __init__(self, client: redis.Redis, live_channel: str = LIVE_EVENTS_CHANNEL) -> None:
        self._redis = client
        self._commit = client.register_script(lua_source("rollup_lib.lua", "commit_events.lua"))
        self._rewrite = client.register_script(lua_source("rewrite_page.lua"))
        self._compress = client.register_script(lua_source("compress_pages.lua"))
        self.live_channel = live_channel
        #: Size limit of a page (tests make it small to get many pages).
        self.page_bytes = PAGE_BYTES
        #: Trailing script arguments that count events into the
        #: ``events.{type}`` metrics (set by the service; see
        #: :meth:`analytics.metrics.MetricStore.event_metric_args`).
        self.metric_args: list[Any] = []

    # -- writing -------------------------------------------------------------
    def commit(
        self,
        entries: list[Entry],
        group: str = keyspace.GROUP,
        *,
        dead: dict[str, list[DeadLetter]] | None = None,
        ack: bool = True,
    ) -> CommitResult:
        """Store the records of ``entries`` and acknowledge them, atomically.

        Entries of several lanes are committed lane by lane (one script call
        each, since a script acknowledges on the lane it names). ``dead``
        maps an entry id to records set aside in the same step (moved to the
        dead-letter store only by the commit that acknowledges the entry).
        ``ack=False`` stores without acknowledging: a probe, safe to repeat
        since records are deduplicated. The queue items go to the script as
        they are: no record is decoded here.
        """
        result = CommitResult()
        dead = dead or {}
        by_lane: dict[str, list[Entry]] = {}
        for entry in entries:
            by_lane.setdefault(entry.lane, []).append(entry)
        for lane, items in by_lane.items():
            args: list[Any] = [
                group,
                keyspace.EVENTS_PROCESSED,
                keyspace.EVENTS_TIME,
                keyspace.EVENTS_USER,
                keyspace.EVENT_IDS,
                keyspace.EVENT_PAGES,
                keyspace.EVENT_COUNT,
                self.live_channel,
                "1" if ack else "0",
                round(time.time(), 3),
                self.page_bytes,
                BUCKET_MS,
                len(items),
            ]
            for entry in items:
                buried = dead.get(entry.id, [])
                args += (entry.id, len(entry.items), len(buried))
                for item in entry.items:
                    args += item
                for letter in buried:
                    args += letter.script_args()
            args += self.metric_args
            stored, dups, skipped, buried_count, erased, closed = self._commit(
                keys=[lane, dlq_key("events"), keyspace.ERASED], args=args
            )
            result += CommitResult(stored, dups, skipped, erased, buried_count)
            if closed:
                self.compress([(closed[k].decode(), closed[k + 1].decode()) for k in range(0, len(closed), 2)])
        return result

    def compress(self, pages: list[tuple[str, str]]) -> int:
        """Compress the pages ``(type, page id)``, which the commit closed
        (full: nothing is appended to them any more); a page changed
        meanwhile (rewritten by an erasure, say) is left as it is. Returns
        the pages compressed. Should the worker die before this, a page just
        stays uncompressed: it reads the same."""
        pipe = self._redis.pipeline(transaction=False)
        for etype, page_id in pages:
            pipe.hget(keyspace.processed(etype), page_id)
        args: list[Any] = []
        for (etype, page_id), old in zip(pages, pipe.execute(), strict=True):
            if old and not records.is_compressed(old):
                args += (keyspace.processed(etype), page_id, old, records.compress_page(old))
        return int(self._compress(args=args)) if args else 0

    def has_events(self, event_type: str) -> bool:
        """Whether events of ``event_type`` are stored (its time index exists)."""
        return bool(self._redis.exists(keyspace.time_index(event_type)))

    def stored_count(self) -> int:
        """Events stored now (the size of the dedupe index)."""
        return int(cast(bytes | None, self._redis.get(keyspace.EVENT_COUNT)) or 0)

    # -- pages ---------------------------------------------------------------
    def page(self, event_type: str, page_id: str) -> bytes | None:
        return cast(bytes | None, self._redis.hget(keyspace.processed(event_type), page_id))

    def rewrite(
        self, event_type: str, page_id: str, old: bytes, keep: Callable[[list[Any], bytes], bytes | None]
    ) -> int:
        """Rewrite one page read as ``old``: each record is replaced by what
        ``keep(fields, blob)`` returns for it (its decoded blob and its
        bytes): the same bytes, new ones, or None to leave it out, with its dedupe mark and, for
        owners (:func:`analytics.events.records.blob_owner`) left without records
        in the page, their user index member.
        Returns the records left out, or -1 when the page changed since it
        was read (the caller reads it again)."""
        parts: list[bytes] = []
        gone: list[Any] = []
        owners_kept: set[str] = set()
        owners_gone: set[str] = set()
        newest = None
        for fields, blob in records.split_page(old):
            new = keep(fields, blob)
            owner = records.blob_owner(fields)
            if new is None:
                gone += records.dedupe_key(records.blob_id(fields))
                if owner:
                    owners_gone.add(owner)
                continue
            parts.append(new)
            if owner:
                owners_kept.add(owner)
            newest = fields[3] if newest is None else max(newest, fields[3])
        data = b"".join(parts)
        if data == records.page_data(old):
            return 0
        page = records.compress_page(data) if data and records.is_compressed(old) else data
        return int(
            self._rewrite(
                keys=[
                    keyspace.processed(event_type),
                    keyspace.time_index(event_type),
                    keyspace.open_pages(event_type),
                    keyspace.EVENT_COUNT,
                ],
                args=[
                    page_id,
                    old,
                    page,
                    newest if newest is not None else 0,
                    page_bucket(page_id),
                    keyspace.EVENTS_USER,
                    f"{event_type}:{page_id}",
                    keyspace.EVENT_IDS,
                    len(gone) // 2,
                    *gone,
                    *sorted(owners_gone - owners_kept),
                ],
            )
        )

    # -- reading -------------------------------------------------------------
    def query(
        self,
        types: list[str],
        *,
        start: int | None = None,
        end: int | None = None,
        user_hash: str | None = None,
        priority: str | None = None,
        limit: int = 100,
        cursor: str | None = None,
        max_scan: int = 10_000,
        where: Callable[[Mapping[str, Any]], bool] | None = None,
    ) -> tuple[list[dict[str, Any]], str | None]:
        """Records newest first, and the cursor of the next page (or None).

        ``types`` restricts to those types (all given types are merged by
        time). ``user_hash`` reads the user's own index instead, and only
        records whose user field is that hash (the index also holds
        anonymous-only records whose anonymousId hashes the same). At most
        ``max_scan`` records are examined per call; a page cut short by that
        still returns a cursor, so a client keeps paging. ``where`` is a
        predicate over the record's clear properties
        (:func:`analytics.events.filters.matcher`).

        Order: timestamp descending, then id descending. A stored page is
        read only when the next record to return could be in it.
        """
        after = decode_cursor(cursor) if cursor else None
        high = end
        if after is not None:
            high = after[0] if high is None else min(high, after[0])
        # A page's records lie within BUCKET_MS below its score.
        page_high = None if high is None else high + BUCKET_MS - 1
        wanted = set(types)
        pages: Iterator[PageRef]
        user_raw: bytes | None = None
        if user_hash is not None:
            pages = self._user_pages(user_hash, wanted, start, page_high)
            user_raw = bytes.fromhex(user_hash) if len(user_hash) == 32 else None
        else:
            streams = [self._type_pages(t, start, page_high) for t in sorted(wanted)]
            pages = heapq.merge(*streams, key=lambda p: p[0], reverse=True)

        # Heap of (-ts, descending id, id, type, fields): the newest record on top.
        heap: list[tuple[int, bytes, str, str, list[Any]]] = []
        found: list[dict[str, Any]] = []
        last: tuple[int, str] | None = None
        scanned = 0
        upcoming = next(pages, None)
        while len(found) < limit:
            while upcoming is not None and (not heap or upcoming[0] >= -heap[0][0]):
                _, etype, page_id = upcoming
                raw = self.page(etype, page_id)
                for fields in records.iter_blobs(raw or b""):
                    ts = fields[3]
                    if (start is not None and ts < start) or (high is not None and ts > high):
                        continue
                    if user_hash is not None:
                        user = fields[5] if len(fields) > 5 else None
                        if user != user_raw and records.blob_user(fields) != user_hash:
                            continue
                    event_id = records.blob_id(fields)
                    if after is not None and ts == after[0] and event_id >= after[1]:
                        continue
                    heapq.heappush(heap, (-ts, _descending(event_id), event_id, etype, fields))
                upcoming = next(pages, None)
            if not heap:
                return found, None
            neg_ts, _, event_id, etype, fields = heapq.heappop(heap)
            last = (-neg_ts, event_id)
            scanned += 1
            record = records.unpack_fields(etype, fields)
            if (priority is None or record["p"] == priority) and (where is None or where(record.get("pr") or {})):
                found.append(record)
            if scanned >= max_scan:
                break
        if not heap and upcoming is None:
            return found, None
        return found, encode_cursor(*last) if last is not None else None

    def count(
        self, types: list[str], *, start: int | None = None, end: int | None = None, user_hash: str | None = None
    ) -> int:
        """Records of ``types`` (of one user: by the user field, as
        :meth:`query`) with a timestamp in [start, end]: every page that may
        hold one is read (an export's size)."""
        high = None if end is None else end + BUCKET_MS - 1
        refs: Iterator[PageRef]
        if user_hash is not None:
            refs = self._user_pages(user_hash, set(types), start, high)
        else:
            refs = (ref for t in sorted(set(types)) for ref in self._type_pages(t, start, high))
        total = 0
        for _, etype, page_id in refs:
            for fields in records.iter_blobs(self.page(etype, page_id) or b""):
                if (
                    (start is None or fields[3] >= start)
                    and (end is None or fields[3] <= end)
                    and (user_hash is None or records.blob_user(fields) == user_hash)
                ):
                    total += 1
        return total

    def _user_pages(self, user_hash: str, wanted: set[str], start: int | None, high: int | None) -> Iterator[PageRef]:
        for score, member in _scan_pages(self._redis, keyspace.user_index(user_hash), start, high):
            etype, _, page_id = member.rpartition(":")
            if etype in wanted:
                yield score, etype, page_id

    def _type_pages(self, etype: str, start: int | None, high: int | None) -> Iterator[PageRef]:
        for score, page_id in _scan_pages(self._redis, keyspace.time_index(etype), start, high):
            yield score, etype, page_id
