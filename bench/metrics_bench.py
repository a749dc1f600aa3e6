"""Metrics benchmark: ``python -m bench.metrics_bench [--quick]``.

Starts its own ``redis-server`` on a free port and a real Celery worker,
then measures:

(a) metric samples per second end to end: HTTP batch ingest (the Flask app
    in process, through WSGI) until every sample is rolled up;
(b) ``GET /v1/metrics`` latency (p50/p99) for a 24 h range at 1 min buckets
    with a tag filter, over a metric with 50 series (also without filter and
    for p99 aggregates, for comparison);
(c) Redis memory per rollup bucket (``MEMORY USAGE`` of the chunk hashes
    divided by the buckets they hold), per tier.

``run(quick)`` returns the figures as a dict (the suite's entry point).
"""
from __future__ import annotations

import argparse
import json
import random
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from cryptography.fernet import Fernet

from tests.support import RedisServer, python_env, start_worker, wait_until


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def _drained(service: Any) -> bool:
    return service.metrics_queue.length() == 0 and service.metrics_queue.pending() == 0


def _ingest_throughput(client: Any, headers: dict[str, str], service: Any, samples: int) -> dict[str, Any]:
    rng = random.Random(1)
    now = int(time.time())
    batch_size = 1000
    batches = []
    for start in range(0, samples, batch_size):
        batches.append({"batch": [
            {"name": "bench.ingest", "value": rng.lognormvariate(3, 1),
             "tags": {"route": f"/r{i % 10}", "env": f"e{i % 3}"}, "timestamp": now - (i % 600)}
            for i in range(start, min(samples, start + batch_size))]})
    started = time.perf_counter()
    for body in batches:
        response = client.post("/v1/metrics", json=body, headers=headers)
        assert response.status_code == 202, response.json
    accepted = time.perf_counter() - started
    wait_until(lambda: _drained(service), 600, 0.01, "the worker to roll up every sample")
    total = time.perf_counter() - started
    return {"samples": samples, "ingest_only_per_s": round(samples / accepted),
            "end_to_end_per_s": round(samples / total), "seconds": round(total, 2)}


def _load_day(service: Any, per_minute: int) -> int:
    """24 h of a metric with 50 series (10 routes x 5 envs), ``per_minute``
    samples per series per minute."""
    rng = random.Random(2)
    now = int(time.time())
    start = now - 86_400
    batch: list[dict[str, Any]] = []
    count = 0
    for minute in range(1440):
        for route in range(10):
            for env in range(5):
                for k in range(per_minute):
                    batch.append({"name": "bench.latency", "value": rng.lognormvariate(3, 0.8),
                                  "tags": {"route": f"/r{route}", "env": f"e{env}"},
                                  "timestamp": start + minute * 60 + (k * 7) % 60})
        if len(batch) >= 2000:
            count += service.track_metrics(batch).accepted
            batch = []
    if batch:
        count += service.track_metrics(batch).accepted
    wait_until(lambda: _drained(service), 900, 0.05, "the worker to roll up the day")
    return count


def _query_latency(client: Any, headers: dict[str, str], url: str, repeat: int) -> dict[str, Any]:
    client.get(url, headers=headers)  # warm up (script and connection caches)
    timings = []
    body: Any = None
    for _ in range(repeat):
        started = time.perf_counter()
        response = client.get(url, headers=headers)
        timings.append((time.perf_counter() - started) * 1000)
        assert response.status_code == 200, response.json
        body = response.json
    series = body["series"]
    return {"p50_ms": round(_percentile(timings, 0.5), 2), "p99_ms": round(_percentile(timings, 0.99), 2),
            "mean_ms": round(statistics.fmean(timings), 2), "series": len(series),
            "points_per_series": len(series[0]["points"]) if series else 0}


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
                "sketch_bytes_per_bucket": round(sketch_bytes / buckets, 1)}
    return figures


def run(quick: bool = False) -> dict[str, Any]:
    """Run the benchmark; ``quick`` uses smaller volumes (a smoke run)."""
    from web import create_app

    with tempfile.TemporaryDirectory(prefix="metrics-bench-") as tmp:
        root = Path(tmp)
        server = RedisServer(root / "redis").start()
        worker = None
        try:
            env = {"REDIS_URL": server.url(0), "CELERY_BROKER_URL": server.url(1),
                   "ANALYTICS_ENCRYPTION_KEYS": Fernet.generate_key().decode(),
                   "ANALYTICS_DRAIN_SECONDS": "5", "ANALYTICS_BATCH_SIZE": "64"}
            worker = start_worker("bench-worker", python_env(env), root, concurrency=2)
            app = create_app({**env, "TESTING": True})
            service = app.extensions["analytics"]
            client = app.test_client()
            headers = {"Authorization": f"Bearer {service.create_api_key('admin')[0]}"}
            data = server.client(0)

            results: dict[str, Any] = {"quick": quick}
            results["ingest"] = _ingest_throughput(client, headers, service, 20_000 if quick else 200_000)
            results["day_samples"] = _load_day(service, 1 if quick else 3)
            now = int(time.time())
            base = f"/v1/metrics/bench.latency?start={now - 86_400}&end={now}&bucket=60"
            repeat = 30 if quick else 200
            results["query"] = {
                "avg_tag_filter": _query_latency(client, headers, base + "&agg=avg&tags=route:/r3", repeat),
                "p99_tag_filter": _query_latency(client, headers, base + "&agg=p99&tags=route:/r3", repeat),
                "avg_one_series": _query_latency(client, headers, base + "&agg=avg&tags=route:/r3,env:e1", repeat),
                "avg_all_50_grouped": _query_latency(client, headers, base + "&agg=avg&groupBy=route", repeat // 2),
                "p99_all_50_merged": _query_latency(client, headers, base + "&agg=p99", repeat // 2),
            }
            results["memory"] = _memory(data)
            return results
        finally:
            if worker is not None:
                worker.stop()
            server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller volumes (smoke run)")
    args = parser.parse_args()
    print(json.dumps(run(args.quick), indent=2))


if __name__ == "__main__":
    main()
