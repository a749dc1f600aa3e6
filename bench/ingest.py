"""HTTP ingest alone (no worker running): one event per request and
100-event batches, against the bare Flask parse+LPUSH endpoint."""
from __future__ import annotations

from typing import Any

from bench.harness import bearer, cpu_us_per, create_key, event_batch, json_bytes, percentile, post_load, stack


def _summary(load: dict[str, Any], events_per_request: int) -> dict[str, Any]:
    lat = load["latencies"]
    return {"requests_per_s": load["requests"] / load["seconds"],
            "events_per_s": load["requests"] * events_per_request / load["seconds"],
            "p50_ms": percentile(lat, 50) * 1000, "p99_ms": percentile(lat, 99) * 1000,
            "errors": load["errors"]}


def ingest_once(app: str, requests: int, batch: int, connections: int = 8) -> dict[str, Any]:
    ours = app == "web:create_app()"
    with stack() as s:
        s.start_web(app)
        headers = bearer(create_key(s.env, "ingest")) if ours else {"Content-Type": "application/json"}
        if batch == 1:
            bodies = [json_bytes(e) for e in event_batch(requests, "one")]
        else:
            bodies = [json_bytes({"batch": event_batch(batch, "b", i * batch)}) for i in range(requests)]
        post_load(s.port, "/v1/events", headers, bodies[: max(50, requests // 10)], connections)  # warm-up
        cpu = s.cpu_seconds()
        load = post_load(s.port, "/v1/events", headers, bodies, connections)
        cpu_per_req = cpu_us_per(cpu, s.cpu_seconds(), max(1, load["requests"]), load["cpu_seconds"])
        return {**_summary(load, batch), "cpu_us_per_req": cpu_per_req}
