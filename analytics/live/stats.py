"""WebSocket figures for monitoring, shared by all web processes.

Each web process counts its own WebSocket figures (:class:`WsCounters`) and
writes them every couple of seconds to the hash
``analytics:stats:ws:{hostname-pid}`` with a short TTL, so a process that
dies simply drops out of the sum. :func:`ws_totals` adds up the hashes of
the live processes: ``/v1/stats``, ``/metrics`` and the dashboard use it.

Fields of each hash: ``clients`` (connected now), ``messages_total``,
``errors_total``, ``auth_failures_total`` (counters since the process
started), ``messages_rate`` (messages per second over the last interval)
and ``updated`` (epoch seconds).
"""

from __future__ import annotations

import threading
import time
from typing import Any

import redis

from analytics import keyspace

#: Seconds a process's hash outlives its last write.
STATS_TTL = 30
#: Seconds between two writes of a process's hash.
STATS_INTERVAL = 2.0

_COUNTERS = ("messages_total", "errors_total", "auth_failures_total")


class WsCounters:
    """The WebSocket figures of one process; thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.clients = 0
        self.messages_total = 0
        self.errors_total = 0
        self.auth_failures_total = 0
        self._last_messages = 0
        self._last_time = time.monotonic()

    def add(self, *, clients: int = 0, messages: int = 0, errors: int = 0, auth_failures: int = 0) -> None:
        with self._lock:
            self.clients += clients
            self.messages_total += messages
            self.errors_total += errors
            self.auth_failures_total += auth_failures

    def snapshot(self) -> dict[str, float]:
        """The figures now, with the message rate since the last snapshot."""
        with self._lock:
            now = time.monotonic()
            elapsed = max(now - self._last_time, 1e-6)
            rate = (self.messages_total - self._last_messages) / elapsed
            self._last_messages, self._last_time = self.messages_total, now
            return {
                "clients": self.clients,
                "messages_total": self.messages_total,
                "errors_total": self.errors_total,
                "auth_failures_total": self.auth_failures_total,
                "messages_rate": round(rate, 2),
                "updated": round(time.time(), 3),
            }


def write_ws_stats(client: redis.Redis, process: str, figures: dict[str, float]) -> None:
    """Publish one process's figures (``process`` is ``hostname-pid``)."""
    key = keyspace.WS_STATS + process
    pipe = client.pipeline(transaction=True)
    pipe.hset(key, mapping={k: str(v) for k, v in figures.items()})
    pipe.expire(key, STATS_TTL)
    pipe.execute()


def ws_totals(client: redis.Redis) -> dict[str, Any]:
    """The WebSocket figures of every live web process, summed.

    Returns ``clients``, ``messages_total``, ``errors_total``,
    ``auth_failures_total``, ``messages_rate`` (per second), ``processes``
    (web processes that reported in the last :data:`STATS_TTL` seconds) and
    ``updated`` (the newest report, epoch seconds, or ``None``).
    """
    totals: dict[str, Any] = {
        "clients": 0,
        **{name: 0 for name in _COUNTERS},
        "messages_rate": 0.0,
        "processes": 0,
        "updated": None,
    }
    keys = list(client.scan_iter(match=keyspace.WS_STATS + "*", count=200))
    if not keys:
        return totals
    pipe = client.pipeline(transaction=False)
    for key in keys:
        pipe.hgetall(key)
    for raw in pipe.execute():
        if not raw:
            continue  # expired between SCAN and HGETALL
        fields = {k.decode(): v.decode() for k, v in raw.items()}
        totals["processes"] += 1
        totals["clients"] += int(float(fields.get("clients", 0)))
        for name in _COUNTERS:
            totals[name] += int(float(fields.get(name, 0)))
        totals["messages_rate"] += float(fields.get("messages_rate", 0))
        updated = float(fields.get("updated", 0))
        totals["updated"] = max(totals["updated"] or 0.0, updated)
    totals["messages_rate"] = round(totals["messages_rate"], 2)
    return totals
