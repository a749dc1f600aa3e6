"""Retention: removing what has expired, in bounded slices, under a lock.

What expires:

* raw events older than ``ANALYTICS_RETENTION_DAYS``: pages whose newest
  record is older are deleted whole, with their time index entry; the few
  pages straddling the cutoff (those of its time bucket) are rewritten
  without the expired records. Either way the expired records' messageId
  dedupe marks go, and the page's user index member for every owner (user,
  or anonymous id of an anonymous-only record) left without a record in it
  (:meth:`analytics.events.store.EventStore.rewrite`);
* rollup chunks past their tier's retention (``ANALYTICS_RETENTION_*_DAYS``):
  each chunk's expiry time is in ``analytics:rollups:expiry``, so finding them
  costs no scan;
* series whose every rollup has expired (newest sample older than the
  longest tier retention plus that tier's chunk span): forgotten from the
  series registry and tag index, so they stop counting against the
  cardinality limit and stop appearing in queries.

Why it is safe: every slice (at most ``slice_size`` items; for events,
one page at a time) is one atomic step (``MULTI``/``EXEC`` or a script), so
Redis is never blocked for long and a run killed halfway leaves each item
either wholly there or wholly gone; the next run carries on. A page that a
commit appended to between our read and our write is read again. A lock
(``SET NX PX`` with a random token, extended between slices, released
only by its owner) keeps two runs from doing the work twice; even without
it every step is idempotent (deleting what is already gone does nothing). The clock is a parameter, so tests can
expire data without waiting.
"""

from __future__ import annotations

import logging
import time
import uuid
from dataclasses import asdict, dataclass
from typing import Any, cast

import orjson
import redis

from analytics import keyspace
from analytics.anomaly.live import anomaly_retention
from analytics.events.records import record_owner, record_problem
from analytics.events.store import BUCKET_MS, EventStore
from analytics.lua_scripts import lua_source
from analytics.metrics.store import CHUNK_BUCKETS, TIERS
from analytics.pipeline.queue import EventQueue
from analytics.settings import Settings

#: The first layout's dedupe hash (event id -> type), emptied as its records
#: are queued again.
LEGACY_EVENT_IDS = "analytics:events:ids"

log = logging.getLogger(__name__)

#: How long the lock lives without being extended (a killed run's lock
#: frees itself after this).
LOCK_MS = 60_000


@dataclass
class CleanupReport:
    """What one cleanup run did (also kept in ``analytics:stats:cleanup``)."""

    skipped: bool = False
    complete: bool = True
    events: int = 0
    rollup_chunks: int = 0
    rollup_buckets: int = 0
    series: int = 0
    #: anomalies older than the rollups they were found in
    anomalies: int = 0
    #: records of the old layout (one JSON record per hash field) queued again
    legacy_requeued: int = 0
    started: float = 0.0
    duration: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class Cleanup:
    def __init__(self, client: redis.Redis, settings: Settings, slice_size: int = 500) -> None:
        self._redis = client
        self.settings = settings
        self.slice_size = slice_size
        self._extend = client.register_script(lua_source("extend_lock.lua"))
        self._release = client.register_script(lua_source("release_lock.lua"))
        self._drop_series = client.register_script(lua_source("drop_series.lua"))
        self._store = EventStore(client)
        self._queue = EventQueue(client)
        #: A series is forgotten once its newest sample is this old.
        self.series_horizon = int(max(settings.rollup_retention_days) * 86400 + TIERS[-1] * CHUNK_BUCKETS)

    def run(self, now: float | None = None, budget: float = 30.0) -> CleanupReport:
        """Remove what has expired at ``now`` (epoch seconds; default: the
        clock), for at most about ``budget`` seconds. Returns a skipped
        report if another run holds the lock."""
        now = time.time() if now is None else now
        started = time.monotonic()
        report = CleanupReport(started=round(time.time(), 3))
        token = uuid.uuid4().hex
        if not self._redis.set(keyspace.CLEANUP_LOCK, token, nx=True, px=LOCK_MS):
            report.skipped = True
            self._redis.hset(keyspace.CLEANUP_STATS, "last_skipped", report.started)
            return report
        try:
            deadline = started + budget
            cutoff_ms = int((now - self.settings.retention_days * 86400) * 1000)
            for event_type in self._event_types():
                cursor = None
                while cursor != 0 and time.monotonic() < deadline and self._still_mine(token):
                    cursor, requeued = self._requeue_legacy(event_type, cursor or 0)
                    report.legacy_requeued += requeued
                if cursor != 0:
                    report.complete = False
                while time.monotonic() < deadline and self._still_mine(token):
                    removed, listed = self._expire_events(event_type, cutoff_ms)
                    report.events += removed
                    if listed < self.slice_size:
                        report.events += self._trim_straddling(event_type, cutoff_ms)
                        break
                else:
                    report.complete = False
            while time.monotonic() < deadline and self._still_mine(token):
                chunks, buckets = self._expire_rollups(now)
                report.rollup_chunks += chunks
                report.rollup_buckets += buckets
                if chunks < self.slice_size:
                    break
            else:
                report.complete = False
            for seen_key in self._redis.scan_iter(match=keyspace.metric_seen("*"), count=1000):
                while time.monotonic() < deadline and self._still_mine(token):
                    dropped, listed = self._expire_series(seen_key, now - self.series_horizon)
                    report.series += dropped
                    if listed < self.slice_size:
                        break
                else:
                    report.complete = False
            # Anomalies last as long as the rollups they were found in.
            oldest = now - anomaly_retention(self.settings)
            for key in self._redis.scan_iter(match=keyspace.anomalies("*"), count=1000):
                report.anomalies += int(self._redis.zremrangebyscore(key, "-inf", f"({oldest}"))
        finally:
            self._release(keys=[keyspace.CLEANUP_LOCK], args=[token])
        report.duration = round(time.monotonic() - started, 3)
        self._record(report)
        return report

    def status(self) -> dict[str, Any]:
        """The last run's figures, for monitoring (empty before the first run)."""
        raw = cast(dict[bytes, bytes], self._redis.hgetall(keyspace.CLEANUP_STATS))
        return {k.decode(): orjson.loads(v) for k, v in raw.items()}

    # -- steps -----------------------------------------------------------------
    def _still_mine(self, token: str) -> bool:
        return bool(self._extend(keys=[keyspace.CLEANUP_LOCK], args=[token, LOCK_MS]))

    def _event_types(self) -> list[str]:
        """Types that have stored events (a SCAN: cursor-based, never blocks)."""
        prefix = keyspace.EVENTS_TIME
        return sorted({key.decode()[len(prefix) :] for key in self._redis.scan_iter(match=prefix + "*", count=1000)})

    def _requeue_legacy(self, event_type: str, cursor: int) -> tuple[int, int]:
        """Records stored by the first layout (one JSON record per field of
        the processed hash, indexed by id in the time, user and
        ``analytics:events:ids`` indexes) are queued again, to be stored in
        pages, and removed with their index entries in the same step
        (``MULTI``). Returns (the HSCAN cursor, records queued)."""
        key = keyspace.processed(event_type)
        cursor, items = cast(tuple[int, dict[bytes, bytes]], self._redis.hscan(key, cursor, count=self.slice_size))
        legacy = {name: raw for name, raw in items.items() if raw[:1] == b"{"}
        if not legacy:
            return cursor, 0
        records: dict[bytes, dict[str, Any]] = {}
        for name, raw in legacy.items():
            try:
                record = orjson.loads(raw)
            except orjson.JSONDecodeError:
                continue  # unreadable: removed (it could never be read either)
            if isinstance(record, dict):
                records[name] = record
        # A record whose owner (user, else anonymous id) was erased since it
        # was received is not queued again (queued now, the commit would take
        # it for newer than the erasure).
        owners = {name: record_owner(r) for name, r in records.items()}
        wanted = sorted(set(owners.values()) - {""})
        erased = dict(zip(wanted, self._redis.hmget(keyspace.ERASED, wanted), strict=True)) if wanted else {}
        lanes: dict[str, list[dict[str, Any]]] = {}
        pipe = self._redis.pipeline(transaction=True)
        for name, record in records.items():
            at = erased.get(owners[name])
            gone = at is not None and (not isinstance(record.get("rt"), int) or record["rt"] <= int(at))
            if record_problem(record) is None and not gone:
                lanes.setdefault(keyspace.event_queue(record["p"]), []).append(record)
            if owners[name]:
                pipe.zrem(keyspace.user_index(owners[name]), f"{event_type}:{name.decode()}")
        for lane, queued in lanes.items():
            pipe.xadd(lane, self._queue.fields(queued))
        pipe.hdel(key, *legacy)
        pipe.zrem(keyspace.time_index(event_type), *legacy)
        pipe.hdel(LEGACY_EVENT_IDS, *legacy)
        pipe.execute()
        return cursor, sum(len(q) for q in lanes.values())

    def _expire_events(self, event_type: str, cutoff_ms: int) -> tuple[int, int]:
        """Delete up to ``slice_size`` pages wholly older than the cutoff:
        (records removed, pages listed)."""
        pages = cast(
            list[bytes],
            self._redis.zrangebyscore(
                keyspace.time_index(event_type), "-inf", f"({cutoff_ms}", start=0, num=self.slice_size
            ),
        )
        removed = sum(self._rewrite(event_type, page.decode(), cutoff_ms) for page in pages)
        return removed, len(pages)

    def _trim_straddling(self, event_type: str, cutoff_ms: int) -> int:
        """Rewrite the pages of the cutoff's time bucket without their
        expired records. (Pages of later buckets have a newest timestamp
        past this bucket's end, pages of earlier ones below the cutoff.)"""
        bucket_end = cutoff_ms - cutoff_ms % BUCKET_MS + BUCKET_MS - 1
        pages = cast(list[bytes], self._redis.zrangebyscore(keyspace.time_index(event_type), cutoff_ms, bucket_end))
        return sum(self._rewrite(event_type, page.decode(), cutoff_ms) for page in pages)

    def _rewrite(self, event_type: str, page_id: str, cutoff_ms: int) -> int:
        def keep(fields: list[Any], blob: bytes) -> bytes | None:
            return blob if fields[3] >= cutoff_ms else None

        while True:
            page = self._store.page(event_type, page_id)
            if page is None:
                # Listed but gone: the index entry of a page removed by
                # someone else; drop it so the scan moves on.
                self._redis.zrem(keyspace.time_index(event_type), page_id)
                return 0
            removed = self._store.rewrite(event_type, page_id, page, keep)
            if removed >= 0:
                return removed

    def _expire_rollups(self, now: float) -> tuple[int, int]:
        keys = cast(
            list[bytes], self._redis.zrangebyscore(keyspace.ROLLUP_EXPIRY, "-inf", now, start=0, num=self.slice_size)
        )
        if not keys:
            return 0, 0
        pipe = self._redis.pipeline(transaction=True)
        for key in keys:
            pipe.hlen(key)
        for key in keys:
            pipe.delete(key, key + b":q")
        pipe.zrem(keyspace.ROLLUP_EXPIRY, *keys)
        replies = pipe.execute()
        return len(keys), sum(replies[: len(keys)])

    def _expire_series(self, seen_key: bytes, cutoff: float) -> tuple[int, int]:
        sids = self._redis.zrangebyscore(seen_key, "-inf", cutoff, start=0, num=self.slice_size)
        if not sids:
            return 0, 0
        name = seen_key.decode()[len(keyspace.METRICS) : -len(":seen")]
        dropped = self._drop_series(
            keys=[keyspace.metric_series(name), keyspace.metric_tags(name), seen_key],
            args=[cutoff, keyspace.detector_prefix(name), keyspace.DETECTORS, name, *sids],
        )
        return int(dropped), len(sids)

    def _record(self, report: CleanupReport) -> None:
        pipe = self._redis.pipeline(transaction=False)
        pipe.hset(
            keyspace.CLEANUP_STATS,
            mapping={
                "last_run": report.started,
                "duration": report.duration,
                "complete": orjson.dumps(report.complete),
                "removed": orjson.dumps(
                    {
                        "events": report.events,
                        "rollup_chunks": report.rollup_chunks,
                        "rollup_buckets": report.rollup_buckets,
                        "series": report.series,
                    }
                ),
            },
        )
        pipe.hincrby(keyspace.CLEANUP_STATS, "runs", 1)
        pipe.execute()
        if report.events or report.rollup_chunks:
            log.info(
                "cleanup removed %d events and %d rollup chunks in %.2f s",
                report.events,
                report.rollup_chunks,
                report.duration,
            )
