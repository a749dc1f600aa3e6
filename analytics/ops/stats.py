"""Monitoring figures, kept in Redis so that any process can read them.

Workers record each processed batch in one pipelined round trip:

=============================================  ======  ================================
key                                            type    holds
=============================================  ======  ================================
``analytics:stats:processing:{epoch // 10}``   hash    ``events``, ``batches``, ``errors``,
                                                       ``dead`` of one 10 s bucket (TTL
                                                       5 min): rates over the last minute
``analytics:stats:totals``                     hash    the same, since the start, plus
                                                       ``seconds`` (for Prometheus counters)
                                                       and ``unreadable_records`` (records
                                                       read that no configured key opens)
``analytics:stats:batch-ms``                   list    ``epoch:ms`` of the last 512 batches
                                                       (p50/p99 of the processing time)
``analytics:stats:batch-hist``                 hash    batch duration histogram: count per
                                                       upper bound in s (``le``)
``analytics:stats:workers``                    zset    worker process name by last heartbeat
``analytics:stats:worker:{host-pid}``          hash    ``last_seen``, ``processed``, ``host``,
                                                       ``pid`` (TTL: gone when it stops)
``analytics:stats:ws:{host-pid}``              hash    WebSocket figures of a web process
                                                       (written by the live stream)
``analytics:stats:cleanup``                    hash    last cleanup run and what it removed
=============================================  ======  ================================

Reading never raises because Redis is away: :meth:`Stats.snapshot` then says
``redis: unavailable`` and leaves the Redis figures out.
"""

from __future__ import annotations

import math
import os
import resource
import time
from typing import Any

import orjson
import redis

from analytics.keyspace import PHI_SCREENED
from analytics.pipeline.deadletters import DeadLetters
from analytics.pipeline.queue import EventQueue
from analytics.redis_client import TRANSIENT_ERRORS

STATS = "analytics:stats:"
PROCESSING = STATS + "processing:"
TOTALS = STATS + "totals"
BATCH_MS = STATS + "batch-ms"
BATCH_HIST = STATS + "batch-hist"
WORKERS = STATS + "workers"
WORKER = STATS + "worker:"
WS = STATS + "ws:"
CLEANUP = STATS + "cleanup"

BUCKET_SECONDS = 10
BUCKET_TTL = 300
RATE_WINDOW = 60
RESERVOIR = 512
#: Upper bounds (s) of the batch duration histogram.
HISTOGRAM_BOUNDS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
#: A worker not heard from for this long is shown as lost, then forgotten.
WORKER_TTL = 30
WS_FIELDS = ("clients", "messages_total", "errors_total", "auth_failures_total")


def process_rss() -> int:
    """Resident memory of this process, bytes."""
    try:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):  # not Linux: peak instead of current
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def percentile(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile (``q`` in 0..1) of ``values``."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, math.ceil(q * len(ordered)) - 1))
    return ordered[rank]


def _int(value: bytes | None) -> int:
    try:
        return int(float(value)) if value is not None else 0
    except ValueError:
        return 0


def _decode(mapping: dict[bytes, bytes]) -> dict[str, str]:
    return {k.decode(): v.decode(errors="replace") for k, v in mapping.items()}


class Stats:
    """Writes and reads the monitoring figures."""

    def __init__(self, client: redis.Redis) -> None:
        self._redis = client
        #: Events this process has processed (for its heartbeat).
        self.processed = 0

    # -- writing -------------------------------------------------------------
    def record_batch(
        self, events: int, seconds: float, errors: int = 0, dead: int = 0, now: float | None = None
    ) -> None:
        """Count one processed batch (one round trip)."""
        now = time.time() if now is None else now
        self.processed += events
        bucket = f"{PROCESSING}{int(now) // BUCKET_SECONDS}"
        le = next((str(b) for b in HISTOGRAM_BOUNDS if seconds <= b), "+Inf")
        pipe = self._redis.pipeline(transaction=False)
        for key in (bucket, TOTALS):
            pipe.hincrby(key, "events", events)
            pipe.hincrby(key, "batches", 1)
            if errors:
                pipe.hincrby(key, "errors", errors)
            if dead:
                pipe.hincrby(key, "dead", dead)
        pipe.expire(bucket, BUCKET_TTL)
        pipe.hincrbyfloat(TOTALS, "seconds", seconds)
        pipe.hincrby(BATCH_HIST, le, 1)
        pipe.lpush(BATCH_MS, f"{now:.0f}:{seconds * 1000:.2f}")
        pipe.ltrim(BATCH_MS, 0, RESERVOIR - 1)
        pipe.execute()

    def record_unreadable(self, records: int) -> None:
        """Count records a read met that no configured key opens (each
        time one is read: a rising figure says a key is missing)."""
        try:
            self._redis.hincrby(TOTALS, "unreadable_records", records)
        except TRANSIENT_ERRORS:
            pass  # a figure, not worth failing the read that is being answered

    def heartbeat(self, name: str, processed: int, now: float | None = None) -> None:
        """Say that worker process ``name`` is alive."""
        now = time.time() if now is None else now
        host, _, pid = name.rpartition("-")
        pipe = self._redis.pipeline(transaction=False)
        pipe.hset(WORKER + name, mapping={"last_seen": round(now, 3), "processed": processed, "host": host, "pid": pid})
        pipe.expire(WORKER + name, WORKER_TTL * 10)
        pipe.zadd(WORKERS, {name: now})
        pipe.execute()

    # -- reading -------------------------------------------------------------
    def snapshot(self, queue: EventQueue, dead_letters: DeadLetters, now: float | None = None) -> dict[str, Any]:
        """Every figure of ``/v1/stats``, ``/metrics`` and ``analytics stats``."""
        now = time.time() if now is None else now
        figures: dict[str, Any] = {
            "time": round(now, 3),
            "redis": {"status": "unavailable"},
            "process": {"pid": os.getpid(), "rss_bytes": process_rss()},
        }
        try:
            figures["redis"] = self._redis_figures()
            figures["queue"] = self._queue_figures(queue, dead_letters, now)
            figures["unreadable_records"] = figures["queue"]["totals"].get("unreadable_records", 0)
            figures["phi_screened"] = int(self._redis.get(PHI_SCREENED) or 0)  # clear values sealed anyway
            figures["workers"] = self._workers(now)
            figures["websocket"] = self._websocket(now)
            figures["cleanup"] = self._cleanup()
        except TRANSIENT_ERRORS:
            figures["redis"] = {"status": "unavailable"}
            for key in ("queue", "workers", "websocket", "cleanup", "unreadable_records", "phi_screened"):
                figures.pop(key, None)
        return figures

    def _redis_figures(self) -> dict[str, Any]:
        info = self._redis.info("memory")
        return {
            "status": "ok",
            "used_memory_bytes": int(info.get("used_memory", 0)),
            "maxmemory_bytes": int(info.get("maxmemory", 0)),
            "maxmemory_policy": str(info.get("maxmemory_policy", "")),
        }

    def _queue_figures(self, queue: EventQueue, dead_letters: DeadLetters, now: float) -> dict[str, Any]:
        lengths = queue.lengths()
        pending = queue.pending()
        first = int(now - RATE_WINDOW) // BUCKET_SECONDS
        last = int(now) // BUCKET_SECONDS
        pipe = self._redis.pipeline(transaction=False)
        for bucket in range(first + 1, last + 1):
            pipe.hgetall(f"{PROCESSING}{bucket}")
        pipe.hgetall(TOTALS)
        pipe.lrange(BATCH_MS, 0, -1)
        pipe.hgetall(BATCH_HIST)
        *buckets, totals, recent, hist = pipe.execute()
        window = {"events": 0, "batches": 0, "errors": 0, "dead": 0}
        for bucket in buckets:
            for name in window:
                window[name] += _int(bucket.get(name.encode()))
        # The window covers the buckets fully past plus the current one.
        seconds = (now - (first + 1) * BUCKET_SECONDS) or 1.0
        durations = []
        for item in recent:
            _, _, ms = item.decode().partition(":")
            try:
                durations.append(float(ms))
            except ValueError:
                continue
        p50, p99 = percentile(durations, 0.5), percentile(durations, 0.99)
        lag, added = queue.backlog(int(now * 1000))
        return {
            "length": sum(lengths.values()),
            "lanes": {lane: n for lane, n in lengths.items()},
            # Age of the oldest work not done, and queue entries (one per
            # ingest request and lane) ever added: the dashboard's "in" rate.
            "lag_seconds": round(lag, 3),
            "entries_added": added,
            "pending": pending,
            "rate_per_second": round(window["events"] / seconds, 3),
            "error_rate_per_second": round((window["errors"] + window["dead"]) / seconds, 3),
            "last_minute": window,
            "batch_ms_p50": None if p50 is None else round(p50, 2),
            "batch_ms_p99": None if p99 is None else round(p99, 2),
            "batches_sampled": len(durations),
            "dead_letters": dead_letters.lengths(),
            "totals": {k.decode(): float(v) if k == b"seconds" else _int(v) for k, v in totals.items()},
            "batch_histogram": {k.decode(): _int(v) for k, v in hist.items()},
        }

    def _workers(self, now: float) -> list[dict[str, Any]]:
        # Forget workers silent for long; show recently silent ones as lost.
        self._redis.zremrangebyscore(WORKERS, "-inf", now - WORKER_TTL * 10)
        members: Any = self._redis.zrange(WORKERS, 0, -1)
        names = [n.decode() for n in members]
        pipe = self._redis.pipeline(transaction=False)
        for name in names:
            pipe.hgetall(WORKER + name)
        workers = []
        for name, fields in zip(names, pipe.execute(), strict=True):
            if not fields:
                continue
            values = _decode(fields)
            last_seen = float(values.get("last_seen", 0))
            age = max(0.0, now - last_seen)
            workers.append(
                {
                    "name": name,
                    "host": values.get("host", ""),
                    "pid": _int(fields.get(b"pid")),
                    "last_seen": last_seen,
                    "seconds_since_seen": round(age, 1),
                    "status": "alive" if age <= WORKER_TTL else "lost",
                    "processed": _int(fields.get(b"processed")),
                }
            )
        return workers

    def _websocket(self, now: float) -> dict[str, Any]:
        totals: dict[str, float] = {name: 0 for name in WS_FIELDS}
        totals["messages_rate"] = 0.0
        processes = 0
        keys = list(self._redis.scan_iter(match=WS + "*", count=1000))
        pipe = self._redis.pipeline(transaction=False)
        for key in keys:
            pipe.hgetall(key)
        for fields in pipe.execute():
            if not fields:
                continue
            updated = float(fields.get(b"updated", b"0") or 0)
            if updated and now - updated > WORKER_TTL * 2:
                continue  # a web process that stopped without cleaning up
            processes += 1
            for name in WS_FIELDS:
                totals[name] += _int(fields.get(name.encode()))
            try:
                totals["messages_rate"] += float(fields.get(b"messages_rate", b"0"))
            except ValueError:
                pass
        totals["messages_rate"] = round(totals["messages_rate"], 2)
        return {"processes": processes, **totals}

    def _cleanup(self) -> dict[str, Any] | None:
        fields: Any = self._redis.hgetall(CLEANUP)
        if not fields:
            return None
        out: dict[str, Any] = {}
        for key, value in _decode(fields).items():
            try:  # the cleanup task writes numbers and JSON values
                out[key] = orjson.loads(value)
            except orjson.JSONDecodeError:
                out[key] = value
        return out
