"""The event store: committing processed batches and querying events.

Layout in :mod:`analytics.keyspace`. A commit runs ``lua/commit_events.lua``:
acknowledgement, messageId dedupe, the record, its time index, its user
index and the live fan-out happen in one atomic step.
"""
from __future__ import annotations

import base64
import heapq
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from importlib import resources
from typing import Any, cast

import orjson
import redis

from analytics import keyspace
from analytics.deadletters import DeadLetter, dlq_key
from analytics.errors import ValidationError
from analytics.queue import Entry

LIVE_EVENTS_CHANNEL = "analytics:live:events"


def load_script(name: str) -> str:
    return resources.files("analytics").joinpath("lua", name).read_text()


@dataclass
class CommitResult:
    stored: int = 0
    duplicates: int = 0
    skipped_entries: int = 0
    #: records of users erased after they were queued: deleted, not stored
    erased: int = 0
    #: records set aside in the dead-letter store in the same step
    dead_lettered: int = 0

    def __iadd__(self, other: CommitResult) -> CommitResult:
        self.stored += other.stored
        self.duplicates += other.duplicates
        self.skipped_entries += other.skipped_entries
        self.erased += other.erased
        self.dead_lettered += other.dead_lettered
        return self


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


def _scan_desc(client: redis.Redis, key: str, lo: int | None, hi: int | None,
               after: tuple[int, str] | None, page: int) -> Iterator[tuple[int, str]]:
    """Members of zset ``key`` in (score, member) descending order, within
    [lo, hi], strictly after the cursor position ``after``."""
    low: int | str = "-inf" if lo is None else lo
    high: int | str = "+inf" if hi is None else hi
    if after is not None:
        ts, member = after
        if hi is None or ts <= hi:
            for m in cast(list[bytes], client.zrevrangebyscore(key, ts, ts)):
                name = m.decode()
                if name < member:
                    yield ts, name
            high = f"({ts}"
    offset = 0
    while True:
        chunk = cast(list[tuple[bytes, float]],
                     client.zrevrangebyscore(key, high, low, start=offset, num=page, withscores=True))
        for m, score in chunk:
            yield int(score), m.decode()
        if len(chunk) < page:
            return
        offset += page


class EventStore:
    def __init__(self, client: redis.Redis, live_channel: str = LIVE_EVENTS_CHANNEL) -> None:
        self._redis = client
        self._commit = client.register_script(
            load_script("rollup_lib.lua") + "\n" + load_script("commit_events.lua"))
        self.live_channel = live_channel
        #: Trailing script arguments that count events into the
        #: ``events.{type}`` metrics (set by the service; see
        #: :meth:`analytics.metrics.MetricStore.event_metric_args`).
        self.metric_args: list[Any] = []

    # -- writing -------------------------------------------------------------
    def commit(self, entries: list[Entry], group: str = keyspace.GROUP, *,
               dead: dict[str, list[DeadLetter]] | None = None,
               ack: bool = True) -> CommitResult:
        """Store the records of ``entries`` and acknowledge them, atomically.

        Entries of several lanes are committed lane by lane (one script call
        each, since a script acknowledges on the lane it names). ``dead``
        maps an entry id to records set aside in the same step (moved to the
        dead-letter store only by the commit that acknowledges the entry).
        ``ack=False`` stores without acknowledging: a probe, safe to repeat
        since records are deduplicated.
        """
        result = CommitResult()
        dead = dead or {}
        by_lane: dict[str, list[Entry]] = {}
        for entry in entries:
            by_lane.setdefault(entry.lane, []).append(entry)
        for lane, items in by_lane.items():
            args: list[Any] = [group, keyspace.EVENTS_PROCESSED, keyspace.EVENTS_TIME,
                               keyspace.EVENTS_USER, keyspace.EVENT_IDS, self.live_channel,
                               "1" if ack else "0", round(time.time(), 3), len(items)]
            for entry in items:
                buried = dead.get(entry.id, [])
                args += (entry.id, len(entry.records), len(buried))
                for record in entry.records:
                    args += (record["t"], record["i"], record["ts"], record["u"],
                             orjson.dumps(record))
                for letter in buried:
                    args += letter.script_args()
            args += self.metric_args
            stored, dups, skipped, buried_count, erased = self._commit(
                keys=[lane, dlq_key("events"), keyspace.ERASED], args=args)
            result += CommitResult(stored, dups, skipped, erased, buried_count)
        return result

    # -- reading -------------------------------------------------------------
    def query(self, types: list[str], *, start: int | None = None, end: int | None = None,
              user_hash: str | None = None, priority: str | None = None,
              limit: int = 100, cursor: str | None = None,
              max_scan: int = 10_000,
              where: Callable[[Mapping[str, Any]], bool] | None = None,
              ) -> tuple[list[dict[str, Any]], str | None]:
        """Records newest first, and the cursor of the next page (or None).

        ``types`` restricts to those types (all given types are merged by
        time). ``user_hash`` reads the user's own index instead. At most
        ``max_scan`` index entries are examined per call; a page cut short by
        that still returns a cursor, so a client keeps paging. ``where`` is
        a predicate over the record's clear properties
        (:func:`analytics.filters.matcher`).
        """
        after = decode_cursor(cursor) if cursor else None
        page = min(max(limit * 2, 50), 1000)
        wanted = set(types)
        candidates: Iterator[tuple[int, str, str, str]]
        if user_hash is not None:
            candidates = self._user_candidates(user_hash, wanted, start, end, after, page)
        else:
            streams = [self._type_candidates(t, start, end, after, page) for t in sorted(wanted)]
            candidates = heapq.merge(*streams, key=lambda c: (c[0], c[1]), reverse=True)

        records: list[dict[str, Any]] = []
        last: tuple[int, str] | None = None
        scanned = 0
        exhausted = True
        while len(records) < limit:
            chunk = []
            for candidate in candidates:
                chunk.append(candidate)
                if len(chunk) >= limit - len(records):
                    break
            if not chunk:
                break
            pipe = self._redis.pipeline(transaction=False)
            for _, _, etype, eid in chunk:
                pipe.hget(keyspace.processed(etype), eid)
            for (ts, member, _, _), raw in zip(chunk, pipe.execute(), strict=True):
                last = (ts, member)
                scanned += 1
                if raw is None:
                    continue  # expired or erased between index and record
                record = orjson.loads(raw)
                if priority is not None and record.get("p") != priority:
                    continue
                if where is not None and not where(record.get("pr") or {}):
                    continue
                records.append(record)
            if scanned >= max_scan:
                exhausted = False
                break
        else:
            exhausted = False  # the page is full: there may be more
        next_cursor = None if exhausted or last is None else encode_cursor(*last)
        return records, next_cursor

    def _user_candidates(self, user_hash: str, wanted: set[str], start: int | None,
                         end: int | None, after: tuple[int, str] | None,
                         page: int) -> Iterator[tuple[int, str, str, str]]:
        for ts, member in _scan_desc(self._redis, keyspace.user_index(user_hash),
                                     start, end, after, page):
            etype, _, eid = member.rpartition(":")
            if etype in wanted:
                yield ts, member, etype, eid

    def _type_candidates(self, etype: str, start: int | None, end: int | None,
                         after: tuple[int, str] | None,
                         page: int) -> Iterator[tuple[int, str, str, str]]:
        for ts, eid in _scan_desc(self._redis, keyspace.time_index(etype), start, end, after, page):
            yield ts, eid, etype, eid
