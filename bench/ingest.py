"""HTTP ingest alone (no worker running): one event per request and
100-event batches, against the bare Flask parse+LPUSH endpoint.

Both servers stay up for the whole measurement, each on a Redis of its own,
and take the load in turns: ours, bare, ours, bare... in rounds of a few
seconds. On shared cores the neighbours' load moves the CPU time of a
request by a fifth within minutes; the two halves of a round see about the
same machine, so the ratio within a round is much steadier than a ratio of
runs taken a minute apart. An idle server costs next to nothing.
"""

from __future__ import annotations

import contextlib
from typing import Any

from analytics import keyspace
from bench.harness import (
    APPS,
    bearer,
    cpu_us_per,
    create_key,
    event_batch,
    json_bytes,
    percentile,
    post_load,
    stack,
)

#: What each app writes, emptied after every round (no worker drains it).
WRITTEN = {"ours": keyspace.EVENT_QUEUES, "bare": ("bare:events",)}


def _summary(load: dict[str, Any], events_per_request: int) -> dict[str, Any]:
    lat = load["latencies"]
    seconds = load["busy_seconds"]
    return {
        "requests_per_s": load["requests"] / seconds,
        "events_per_s": load["requests"] * events_per_request / seconds,
        "p50_ms": percentile(lat, 50) * 1000,
        "p99_ms": percentile(lat, 99) * 1000,
        "errors": load["errors"],
    }


def ingest_rounds(rounds: int, requests: int, batch: int, connections: int = 8) -> dict[str, list[dict[str, Any]]]:
    """``rounds`` rounds of the same ``requests`` requests (``batch`` events
    each) to each app in turn; every round's figures, by app."""
    if batch == 1:
        bodies = [json_bytes(e) for e in event_batch(requests, "one")]
    else:
        bodies = [json_bytes({"batch": event_batch(batch, "b", i * batch)}) for i in range(requests)]
    with contextlib.ExitStack() as servers:
        stacks = {name: servers.enter_context(stack()) for name in APPS}
        headers: dict[str, dict[str, str]] = {}
        for name, s in stacks.items():
            # The data is emptied after each round; an AOF rewrite's fork
            # would still land in some round or other.
            s.redis.client().config_set("auto-aof-rewrite-percentage", 0)
            s.start_web(APPS[name])
            headers[name] = (
                bearer(create_key(s.env, "ingest")) if name == "ours" else {"Content-Type": "application/json"}
            )
            post_load(s.port, "/v1/events", headers[name], bodies[: max(50, requests // 5)], connections)  # warm-up
        runs: dict[str, list[dict[str, Any]]] = {name: [] for name in APPS}
        for _ in range(rounds):
            for name, s in stacks.items():
                cpu = s.cpu_seconds()
                load = post_load(s.port, "/v1/events", headers[name], bodies, connections)
                cpu_per_req = cpu_us_per(cpu, s.cpu_seconds(), max(1, load["requests"]), load["cpu_seconds"])
                runs[name].append({**_summary(load, batch), "cpu_us_per_req": cpu_per_req})
                s.redis.client().delete(*WRITTEN[name])
    return runs
