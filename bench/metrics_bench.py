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
    divided by the buckets they hold), per tier;
(d) separately (the ``detection`` entry of ``python -m bench``,
    :func:`detection_pairs`): (a) with live anomaly detection on against
    off, in alternating pairs of fresh stacks.

``run(quick)`` returns the figures as a dict.
"""

from __future__ import annotations

import argparse
import http.client
import json
import random
import statistics
import struct
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson

from analytics import Analytics, Settings, keyspace
from analytics.metrics.store import series_id
from bench import harness
from testkit import RedisServer, wait_until


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


def _ordered_samples(n: int, now: int) -> list[dict[str, Any]]:
    """``n`` samples of 50 series in time order over the last ``n // 50``
    minutes (one per series and minute): each batch of 1,000 closes 20
    one-minute buckets of every series, so live detection scores all the way."""
    rng = random.Random(3)
    minutes = n // 50
    start = (now // 60 - minutes - 1) * 60
    return [
        {
            "name": "bench.ordered",
            "value": rng.lognormvariate(3, 0.5),
            "tags": {"route": f"/r{i % 10}", "env": f"e{i // 10 % 5}"},
            "timestamp": start + (i // 50) * 60 + i % 50,
        }
        for i in range(minutes * 50)
    ]


def _points_scored(data: Any) -> int:
    """Buckets the live detectors (at the shipped 60 s) have scored, all series together: each
    state's point count (the ``I`` after the version byte of the layout in
    :mod:`analytics.anomaly.detector`)."""
    total = 0
    for member in data.zrange(keyspace.DETECTORS, 0, -1):
        name, sid = orjson.loads(member)
        raw = data.hget(keyspace.detector_state(name, 60, sid), "det")
        if raw:
            total += struct.unpack_from("<I", raw, 1)[0]
    return total


def _closer(samples: list[dict[str, Any]], res: int = 60) -> list[dict[str, Any]]:
    """One sample per series of ``samples``, two buckets after its newest
    (which that closes: :data:`analytics.anomaly.live.CLOSE_LAG`)."""
    newest: dict[tuple[str, tuple[tuple[str, str], ...]], dict[str, Any]] = {}
    for sample in samples:
        key = (sample["name"], tuple(sorted(sample["tags"].items())))
        if key not in newest or sample["timestamp"] > newest[key]["timestamp"]:
            newest[key] = sample
    return [{**sample, "timestamp": sample["timestamp"] // res * res + 2 * res} for sample in newest.values()]


def _scored_through(data: Any, closer: list[dict[str, Any]], res: int = 60) -> bool:
    """Whether every series' detector has gone up to the bucket its closing sample closes."""
    pipe = data.pipeline(transaction=False)
    for sample in closer:
        sid = series_id(sample["tags"])
        pipe.hget(keyspace.detector_state(sample["name"], res, sid), "last")
    lasts = pipe.execute()
    return all(
        last is not None and int(last) >= sample["timestamp"] - 2 * res
        for last, sample in zip(lasts, closer, strict=True)
    )


def _closed_buckets(samples: list[dict[str, Any]], res: int = 60) -> int:
    """Buckets live detection has to score once ``samples`` are in: every
    bucket with data but the newest of its series (open until more comes)."""
    buckets: dict[tuple[str, tuple[tuple[str, str], ...]], set[int]] = {}
    for sample in samples:
        key = (sample["name"], tuple(sorted(sample["tags"].items())))
        buckets.setdefault(key, set()).add(sample["timestamp"] // res)
    return sum(len(found) - 1 for found in buckets.values())


def detection_once(detection: bool, workload: str, n: int) -> dict[str, Any]:
    """End-to-end metric samples per second on a fresh stack, live anomaly
    detection on or off (``ANALYTICS_ANOMALY_DETECTION``, at the shipped
    one-minute resolution), with the CPU of each process per sample. With
    detection on, the end is when every closed bucket is also scored (at
    most 30 s after the last rollup). ``points_scored`` below
    ``closed_buckets``: buckets passed over without a point (their samples
    were queued after a later bucket's, by concurrent requests)."""
    env = {"ANALYTICS_ANOMALY_DETECTION": "1" if detection else "0"}
    with harness.stack(web_workers=2, worker_concurrency=2, env=env) as s:
        s.start_web()
        s.start_worker()
        headers = harness.bearer(harness.create_key(s.env))
        service = Analytics.create(Settings.from_env(s.env))
        now = int(time.time())
        samples = _throughput_samples(n, now) if workload == "recent" else _ordered_samples(n, now)
        data = s.redis.client(0)
        closer = _closer(samples)
        closed = _closed_buckets(samples + closer)
        cpu = s.cpu_seconds()
        started = time.perf_counter()
        figures = _post_all(s, headers, samples, service)
        # A worker process that found buckets closed while the other held
        # older samples scores them at its next commit: one more sample per
        # series, as a live stream brings, so that the run ends with every
        # bucket but the newest scored.
        _post_all(s, headers, closer, service)
        if detection:
            deadline = time.perf_counter() + 30
            while not _scored_through(data, closer) and time.perf_counter() < deadline:
                time.sleep(0.05)
            figures["seconds"] = round(time.perf_counter() - started, 2)
            figures["end_to_end_per_s"] = round(len(samples) / (time.perf_counter() - started))
        figures["cpu_us_per_sample"] = harness.cpu_us_per(cpu, s.cpu_seconds(), len(samples))
        figures["detectors"] = data.zcard(keyspace.DETECTORS)
        figures["points_scored"] = _points_scored(data)
        figures["closed_buckets"] = closed
        figures["scored_through"] = detection and _scored_through(data, closer)
        return figures


def detection_cpu(n: int, batch_size: int) -> dict[str, Any]:
    """Worker CPU of live detection per scored point, against the commit's
    per sample, measured in this process (no Celery, no neighbour in the
    figure): ``n`` time-ordered samples queued, then drained by one consumer
    reading ``batch_size`` entries (of 1,000 samples) at a time, timing the
    commit and the detection steps apart. One entry per read is a worker
    keeping up with a stream (about 20 buckets per series per step); 64 is a
    worker catching up."""
    with tempfile.TemporaryDirectory(prefix="analytics-bench-") as tmp:
        redis_server = RedisServer(Path(tmp) / "redis", appendfsync="everysec").start()
        try:
            env = {**harness.service_settings(redis_server), "ANALYTICS_BATCH_SIZE": str(batch_size)}
            service = Analytics.create(Settings.from_env(env))
            samples = _ordered_samples(n, int(time.time()))
            for at in range(0, len(samples), 1000):
                assert service.metrics.track_metrics(samples[at : at + 1000]).accepted == len(samples[at : at + 1000])
            processor = service.processor
            spent = {"commit": 0.0, "detect": 0.0, "points": 0}
            commit, detect = processor._process_samples, processor._detect

            def timed_commit(entries: Any) -> Any:
                started = time.process_time()
                report = commit(entries)
                spent["commit"] += time.process_time() - started
                return report

            def timed_detect(entries: Any) -> Any:
                started = time.process_time()
                report = detect(entries)
                spent["detect"] += time.process_time() - started
                spent["points"] += report.points
                return report

            processor._process_samples, processor._detect = timed_commit, timed_detect  # type: ignore[method-assign]
            while processor.drain("bench", budget=0).metric_entries:
                pass
        finally:
            redis_server.stop()
    return {
        "points": spent["points"],
        "detect_us_per_point": round(spent["detect"] * 1e6 / max(1, spent["points"]), 1),
        "commit_us_per_sample": round(spent["commit"] * 1e6 / len(samples), 1),
    }


def detection_pairs(quick: bool = False) -> dict[str, Any]:
    """Live detection on against off, in alternating pairs of fresh stacks,
    for two workloads: ``recent`` (the throughput samples above: 30 series,
    timestamps over the last 10 minutes in every batch, so few buckets
    close) and ``ordered`` (50 series in time order: every batch closes
    buckets of every series, the detector's worst case). ``quick``: one
    pair of the second."""
    reps = 1 if quick else 3
    # The smoke run: one pair, the workload where detection does the most.
    # ``ordered``: 1,200 minutes, within the 1,440 buckets a new series' first step scores.
    workloads = [("ordered", 10_000)] if quick else [("recent", 200_000), ("ordered", 60_000)]
    out: dict[str, Any] = {"runs": {}}
    for workload, n in workloads:
        on: list[dict[str, Any]] = []
        off: list[dict[str, Any]] = []
        for _ in range(reps):
            on.append(detection_once(True, workload, n))
            off.append(detection_once(False, workload, n))
        assert all(r["detectors"] > 0 for r in on) and all(r["detectors"] == 0 for r in off), "detection not as set"
        rate = "end_to_end_per_s"
        out[f"{workload}_on_samples_per_s"] = harness.median_range([r[rate] for r in on])
        out[f"{workload}_off_samples_per_s"] = harness.median_range([r[rate] for r in off])
        out[f"{workload}_ratio_pairs"] = harness.median_range([a[rate] / b[rate] for a, b in zip(on, off, strict=True)])
        for side, runs in (("on", on), ("off", off)):
            for role in runs[0]["cpu_us_per_sample"]:
                out[f"{workload}_{side}_cpu_us_per_sample_{role}"] = harness.median_range(
                    [r["cpu_us_per_sample"][role] for r in runs]
                )
        out["runs"][workload] = {"on": on, "off": off}
        out[f"{workload}_on_points_scored"] = harness.median_range([r["points_scored"] for r in on])
        out[f"{workload}_closed_buckets"] = on[0]["closed_buckets"]
    for batch in (1, 64):
        cpu = detection_cpu(10_000 if quick else 100_000, batch)
        out[f"inprocess_batch{batch}_detect_us_per_point"] = cpu["detect_us_per_point"]
        out[f"inprocess_batch{batch}_commit_us_per_sample"] = cpu["commit_us_per_sample"]
        out[f"inprocess_batch{batch}_points"] = cpu["points"]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller volumes (smoke run)")
    args = parser.parse_args()
    print(json.dumps(run(args.quick), indent=2))


if __name__ == "__main__":
    main()
