"""Faults injected into a real stack: workers killed, Redis restarted or full.

Every test here is ``slow`` (it starts its own Redis and Celery processes)
and runs in CI.
"""

from __future__ import annotations

import logging
import re
import signal
import threading
import time
from typing import Any

import msgpack
import pytest

from analytics import keyspace
from analytics.pipeline.deadletters import KINDS, dlq_key
from testkit import RedisServer, pages_indexed, records_in, service_env, stored_events, wait_until
from web import create_app


def send_events(
    client: Any,
    headers: dict[str, str],
    prefix: str,
    total: int,
    accepted: list[int],
    batch_size: int = 100,
    pause: float = 0.01,
) -> None:
    """Stream ``total`` events with messageIds ``{prefix}-{n}``, in batches
    ``pause`` s apart; adds each batch's accepted count to ``accepted``."""
    for start in range(0, total, batch_size):
        batch = [
            {"type": "click", "userId": f"u{n % 13}", "messageId": f"{prefix}-{n}", "properties": {"n": n}}
            for n in range(start, min(total, start + batch_size))
        ]
        response = client.post("/v1/events", json={"batch": batch}, headers=headers)
        assert response.status_code == 202, response.data
        accepted.append(response.json["accepted"])
        time.sleep(pause)


def send_metric_samples(
    client: Any,
    headers: dict[str, str],
    t0: int,
    total: int,
    accepted: list[int],
    batch_size: int = 200,
    pause: float = 0.01,
) -> None:
    """Stream ``total`` samples of metric ``load`` (timestamps within the hour
    from ``t0``), in batches; adds each batch's accepted count to ``accepted``."""
    for start in range(0, total, batch_size):
        batch = [
            {"name": "load", "value": n % 13, "tags": {"shard": f"s{n % 5}"}, "timestamp": t0 + n % 3600}
            for n in range(start, min(total, start + batch_size))
        ]
        response = client.post("/v1/metrics", json={"batch": batch}, headers=headers)
        assert response.status_code == 202, response.data
        accepted.append(response.json["accepted"])
        time.sleep(pause)


def assert_samples_counted_once(service: Any, t0: int, expected: int) -> None:
    params = {"start": str(t0), "end": str(t0 + 3600), "agg": "count"}
    for bucket in ("3600", "60", "10"):  # every rollup tier counted each sample once
        series = service.metrics.get_metric("load", {**params, "bucket": bucket})["series"]
        assert sum(v for s in series for _, v in s["points"] if v) == expected, bucket


def held(service: Any) -> int:
    """Queue entries (events and samples) a worker holds, unacknowledged."""
    return service.queue.pending() + service.metrics_queue.pending()


def assert_events_stored_once(data: Any, expected: int) -> None:
    assert stored_events(data) == expected
    assert len(records_in(data, "click")) == expected
    assert pages_indexed(data, "click")
    assert sum(data.xlen(dlq_key(kind)) for kind in KINDS) == 0


@pytest.mark.slow
def test_worker_sigkill_repeatedly_during_a_stream_of_20000_events_and_samples(make_stack) -> None:
    stack = make_stack(ANALYTICS_BATCH_SIZE="16")
    stack.beat()
    worker = stack.worker(concurrency=2)
    app = stack.app()
    service = app.extensions["analytics"]
    secret, _ = service.access.create("ingest")
    headers = {"Authorization": f"Bearer {secret}"}
    accepted: list[int] = []
    sampled: list[int] = []
    t0 = int(time.time()) // 3600 * 3600 - 3600  # a whole past hour
    # One sender per kind of input; each runs while the workers are killed.
    senders = [
        threading.Thread(target=send_events, args=(app.test_client(), headers, "ev", 20_000, accepted)),
        threading.Thread(target=send_metric_samples, args=(app.test_client(), headers, t0, 20_000, sampled)),
    ]
    for sender in senders:
        sender.start()
    kills = mid_batch = during_stream = 0
    while kills < 6 and (any(s.is_alive() for s in senders) or kills < 3):
        during_stream += any(s.is_alive() for s in senders)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and held(service) == 0:
            time.sleep(0.001)
        mid_batch += held(service) > 0
        worker.kill(signal.SIGKILL)
        worker.proc.wait(10)
        kills += 1
        worker = stack.worker(concurrency=2)
    for sender in senders:
        sender.join(120)
    assert sum(accepted) == 20_000 and sum(sampled) == 20_000
    assert mid_batch >= 1 and during_stream >= 1, (
        f"{kills} kills, {mid_batch} mid-batch, {during_stream} during the stream: proved nothing"
    )
    data = stack.redis.client()
    wait_until(
        lambda: (
            stored_events(data) >= 20_000
            and service.queue.pending() == 0
            and service.queue.length() == 0
            and service.metrics_queue.length() == 0
            and service.metrics_queue.pending() == 0
        ),
        90,
        0.2,
        "every accepted event and sample to be stored",
    )
    assert_events_stored_once(data, 20_000)
    assert_samples_counted_once(service, t0, 20_000)


def outage_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if re.search(r"(?i)redis|connect|broker", line)]


@pytest.mark.slow
def test_redis_restart_answers_503_logs_one_line_and_loses_nothing(make_stack, caplog) -> None:
    stack = make_stack()
    beat = stack.beat()
    worker = stack.worker()
    app = stack.app()
    service = app.extensions["analytics"]
    client = app.test_client()
    secret, _ = service.access.create("admin")
    headers = {"Authorization": f"Bearer {secret}"}

    def batch(tag: str) -> dict:
        return {"batch": [{"type": "login", "userId": f"u{i}", "messageId": f"{tag}-{i}"} for i in range(50)]}

    assert client.post("/v1/events", json=batch("before"), headers=headers).status_code == 202
    worker_log, beat_log = len(worker.log()), len(beat.log())
    caplog.set_level(logging.INFO)
    stack.redis.stop()
    for _ in range(5):
        down = client.post("/v1/events", json=batch("during"), headers=headers)
        assert down.status_code == 503 and down.json["error"]["code"] == "unavailable"
    assert client.get("/v1/events", headers=headers).status_code == 503
    assert client.get("/v1/stats", headers=headers).status_code == 503
    assert client.get("/readyz").status_code == 503
    assert client.get("/healthz").status_code == 200
    scrape = client.get("/metrics")
    assert scrape.status_code == 200 and "analytics_redis_up 0.0" in scrape.get_data(as_text=True)
    time.sleep(4)  # worker and beat notice the outage and retry meanwhile

    stack.redis.start()  # same port and AOF directory
    wait_until(lambda: client.get("/readyz").status_code == 200, 30, 0.2, "readyz")
    assert client.post("/v1/events", json=batch("after"), headers=headers).status_code == 202
    data = stack.redis.client()
    wait_until(lambda: stored_events(data) == 100, 90, 0.2, "events accepted before and after the outage to be stored")
    # Worker and beat reconnected by themselves (the worker keeps heartbeating).
    wait_until(
        lambda: any(
            w["status"] == "alive" and w["seconds_since_seen"] < 5 for w in service.ops.stats_snapshot()["workers"]
        ),
        30,
        0.5,
        "a worker heartbeat after the outage",
    )

    web = [r for r in caplog.records if r.name == "analytics.outage"]
    assert [r.levelname for r in web] == ["ERROR", "WARNING"], [r.getMessage() for r in web]
    assert "Redis unavailable" in web[0].getMessage()
    for name, text in (("worker", worker.log()[worker_log:]), ("beat", beat.log()[beat_log:])):
        traceback = "Traceback" in text or 'File "' in text
        assert not traceback, f"{name} logged a traceback:\n{text[-3000:]}"
        assert outage_lines(text), f"{name} said nothing about the outage"


@pytest.mark.slow
def test_redis_full_answers_503_and_keeps_everything_accepted(tmp_path, encryption_keys) -> None:

    server = RedisServer(tmp_path / "redis", maxmemory="6mb").start()
    try:
        app = create_app({**service_env(server, encryption_keys), "TESTING": True})
        client = app.test_client()
        service = app.extensions["analytics"]
        secret, _ = service.access.create("ingest")
        headers = {"Authorization": f"Bearer {secret}"}
        service.queue.ensure_groups()  # as a running worker has
        accepted, n = 0, 0
        for _ in range(200):
            batch = [
                {"type": "click", "userId": "u", "messageId": f"full-{n + j}", "properties": {"pad": "x" * 2000}}
                for j in range(50)
            ]
            response = client.post("/v1/events", json={"batch": batch}, headers=headers)
            if response.status_code != 202:
                break
            accepted += response.json["accepted"]
            n += 50
        assert response.status_code == 503, "Redis never filled up"
        error = response.json["error"]
        assert error["code"] == "unavailable" and "full" in error["message"]
        assert accepted > 0
        # Nothing accepted was evicted: every accepted event is still queued.
        data = server.client()
        queued = sum(len(msgpack.unpackb(fields[b"r"])) for _, fields in data.xrange(keyspace.EVENT_QUEUE))
        assert queued == accepted
        assert data.info("memory")["maxmemory_policy"] == "noeviction"
        assert client.get("/readyz").status_code == 200
        # A worker meanwhile waits (one log line), it neither fails nor drops anything.
        service.processor.drain("w1", budget=1)
        assert service.queue.length() == accepted // 50  # one entry per batch, none lost
    finally:
        server.stop()
