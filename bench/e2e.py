"""End to end: HTTP batch ingest -> validation, PHI sealing, durable queue,
Celery processing, store (and whatever else is switched on) -> stored and
queryable. Against the naive one-task-per-event pipeline in the same run."""

from __future__ import annotations

import time
from typing import Any

from bench.harness import bearer, cpu_us_per, create_key, event_batch, json_bytes, post_load, stack
from testkit import stored_events, wait_until


def _bodies(total: int, batch: int, tag: str) -> list[bytes]:
    return [json_bytes({"batch": event_batch(batch, tag, start)}) for start in range(0, total, batch)]


def pipeline_once(total: int, batch: int = 100, connections: int = 4) -> dict[str, Any]:
    with stack() as s:
        s.start_web()
        s.start_worker()
        key = create_key(s.env)
        data = s.redis.client()
        bodies = _bodies(total, batch, "e2e")
        cpu = s.cpu_seconds()
        started = time.perf_counter()
        load = post_load(s.port, "/v1/events", bearer(key), bodies, connections)
        wait_until(lambda: stored_events(data) >= total, 300, 0.05, "all events stored")
        elapsed = time.perf_counter() - started
        cpu_per_event = cpu_us_per(cpu, s.cpu_seconds(), total, load["cpu_seconds"])
        stored = stored_events(data)
        return {
            "events": total,
            "stored": stored,
            "seconds": elapsed,
            "events_per_s": total / elapsed,
            "ingest_seconds": load["seconds"],
            "errors": load["errors"],
            "cpu_us_per_event": cpu_per_event,
        }


def naive_once(total: int, batch: int = 100, connections: int = 4) -> dict[str, Any]:
    with stack() as s:
        s.start_web("bench.naive:create_app()")
        s.start_worker("bench.naive")
        data = s.redis.client()
        bodies = _bodies(total, batch, "naive")
        cpu = s.cpu_seconds()
        started = time.perf_counter()
        load = post_load(s.port, "/v1/events", {"Content-Type": "application/json"}, bodies, connections)
        wait_until(lambda: data.hlen("naive:events:page_view") >= total, 600, 0.05, "all naive events stored")
        elapsed = time.perf_counter() - started
        cpu_per_event = cpu_us_per(cpu, s.cpu_seconds(), total, load["cpu_seconds"])
        return {
            "events": total,
            "seconds": elapsed,
            "events_per_s": total / elapsed,
            "ingest_seconds": load["seconds"],
            "errors": load["errors"],
            "cpu_us_per_event": cpu_per_event,
        }
