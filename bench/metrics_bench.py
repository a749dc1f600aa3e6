"""Metrics benchmark: ``python -m bench.metrics_bench [--quick]`` (also part
of ``python -m bench``).

Starts its own stack (:mod:`bench.harness`: a private ``redis-server``,
gunicorn with 2 workers, a Celery worker with 2 processes) and measures:

(a) metric samples per second end to end: batches of 1,000 samples POSTed to
    ``/v1/metrics`` over 4 keep-alive connections, until every sample is
    rolled up (the metrics queue is empty: entries are deleted by the same
    script that writes their rollups);
(b) ``GET /v1/metrics`` latency (p50/p99, real HTTP, one connection) for a
    24 h range at 1 min buckets over a metric with 50 series (10 routes x 5
    envs), with a tag filter (``route:/r3``, 5 series), for ``avg`` and
    ``p99``; also one series, and all 50 series grouped or merged;
(c) Redis memory per rollup bucket (``MEMORY USAGE`` of the chunk hashes
    divided by the buckets they hold), per tier.

``run(quick)`` returns the figures as a dict.
"""

from __future__ import annotations

import argparse
import http.client
import json
import random
import statistics
import time
from typing import Any

import orjson

from analytics import Analytics, Settings
from bench import harness
from testkit import wait_until


def _drained(service: Any) -> bool:
    return service.metrics_queue.length() == 0 and service.metrics_queue.pending() == 0


def _post_all(
    s: harness.Stack, headers: dict[str, str], samples: list[dict[str, Any]], service: Any, batch: int = 1000
) -> dict[str, Any]:
    bodies = [orjson.dumps({"batch": samples[i : i + batch]}) for i in range(0, len(samples), batch)]
    started = time.perf_counter()
    load = harness.post_load(s.port, "/v1/metrics", headers, bodies, connections=4, max_seconds=600)
    accepted = time.perf_counter() - started
    assert load["errors"] == 0 and load["requests"] == len(bodies), "requests failed"
    wait_until(lambda: _drained(service), 900, 0.02, "the worker to roll up every sample")
    total = time.perf_counter() - started
    return {
        "samples": len(samples),
        "ingest_only_per_s": round(len(samples) / accepted),
        "end_to_end_per_s": round(len(samples) / total),
        "seconds": round(total, 2),
        "request_p99_ms": round(harness.percentile(load["latencies"], 99) * 1000, 1),
    }


def _throughput_samples(n: int, now: int) -> list[dict[str, Any]]:
    rng = random.Random(1)
    return [
        {
            "name": "bench.ingest",
            "value": rng.lognormvariate(3, 1),
            "tags": {"route": f"/r{i % 10}", "env": f"e{i % 3}"},
            "timestamp": now - (i % 600),
        }
        for i in range(n)
    ]


def _day_samples(per_minute: int, now: int) -> list[dict[str, Any]]:
    """24 h of a metric with 50 series, ``per_minute`` samples per series and minute."""
    rng = random.Random(2)
    start = now - 86_400
    return [
        {
            "name": "bench.latency",
            "value": rng.lognormvariate(3, 0.8),
            "tags": {"route": f"/r{route}", "env": f"e{env}"},
            "timestamp": start + minute * 60 + (k * 7) % 60,
        }
        for minute in range(1440)
        for route in range(10)
        for env in range(5)
        for k in range(per_minute)
    ]


def _query_latency(port: int, headers: dict[str, str], path: str, repeat: int) -> dict[str, Any]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    timings = []
    body: Any = None
    for i in range(repeat + 1):
        started = time.perf_counter()
        conn.request("GET", path, headers=headers)
        response = conn.getresponse()
        data = response.read()
        if i:  # the first one warms caches up
            timings.append((time.perf_counter() - started) * 1000)
        assert response.status == 200, data[:200]
        body = orjson.loads(data)
    conn.close()
    series = body["series"]
    return {
        "p50_ms": round(harness.percentile(timings, 50), 2),
        "p99_ms": round(harness.percentile(timings, 99), 2),
        "mean_ms": round(statistics.fmean(timings), 2),
        "series": len(series),
        "points_per_series": len(series[0]["points"]) if series else 0,
    }


def _memory(data: Any) -> dict[str, Any]:
    figures: dict[str, Any] = {}
    for resolution in (10, 60, 3600, 86400):
        stats_bytes = sketch_bytes = buckets = 0
        for key in data.scan_iter(match=f"analytics:metrics:bench.latency:r{resolution}:*", count=1000):
            usage = data.memory_usage(key, samples=0) or 0
            if key.endswith(b":q"):
                sketch_bytes += usage
            else:
                stats_bytes += usage
                buckets += data.hlen(key)
        if buckets:
            figures[f"r{resolution}"] = {
                "buckets": buckets,
                "bytes_per_bucket": round((stats_bytes + sketch_bytes) / buckets, 1),
                "stats_bytes_per_bucket": round(stats_bytes / buckets, 1),
                "sketch_bytes_per_bucket": round(sketch_bytes / buckets, 1),
            }
    return figures


def run(quick: bool = False) -> dict[str, Any]:
    """Run the benchmark; ``quick`` uses smaller volumes (a smoke run)."""

    with harness.stack(web_workers=2, worker_concurrency=2) as s:
        s.start_web()
        s.start_worker()
        headers = harness.bearer(harness.create_key(s.env))
        service = Analytics.create(Settings.from_env(s.env))
        now = int(time.time())
        results: dict[str, Any] = {"quick": quick}
        results["ingest"] = _post_all(s, headers, _throughput_samples(20_000 if quick else 200_000, now), service)
        day = _day_samples(1 if quick else 3, now)
        results["day_load"] = _post_all(s, headers, day, service)
        base = f"/v1/metrics/bench.latency?start={now - 86_400}&end={now}&bucket=60"
        repeat = 30 if quick else 300
        cases = {  # name: (query, repetitions)
            "avg_tag_filter": ("&agg=avg&tags=route:/r3", repeat),
            "p99_tag_filter": ("&agg=p99&tags=route:/r3", repeat),
            "avg_one_series": ("&agg=avg&tags=route:/r3,env:e1", repeat),
            "avg_all_50_grouped": ("&agg=avg&groupBy=route", repeat // 3),
            "p99_all_50_merged": ("&agg=p99", repeat // 3),
        }
        results["query"] = {
            name: _query_latency(s.port, headers, base + extra, times) for name, (extra, times) in cases.items()
        }
        results["memory"] = _memory(s.redis.client(0))
        return results


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller volumes (smoke run)")
    args = parser.parse_args()
    print(json.dumps(run(args.quick), indent=2))


if __name__ == "__main__":
    main()
