"""The processing pipeline with real workers: priorities, crashes, outages."""
from __future__ import annotations

import signal
import threading
import time
from typing import Any

import orjson
import pytest

from analytics import keyspace
from tests.support import wait_until


def queued(service: Any) -> int:
    return service.queue.length()


@pytest.fixture
def idle(make_stack) -> tuple[Any, Any]:
    """A service on a private Redis that no worker reads (the session worker
    may be running): the test plays the worker. Yields (service, data)."""
    stack = make_stack()
    return stack.app().extensions["analytics"], stack.redis.client(0)


def test_commit_of_a_redelivered_entry_is_a_no_op(idle) -> None:
    service, data = idle
    service.track_many([{"type": "click", "userId": "u", "messageId": f"m{i}"} for i in range(5)])
    entries = service.queue.read("consumer-a", 10)
    first = service.process(entries)
    again = service.process(entries)  # a second worker committing the same entries
    assert (first.stored, again.stored, again.skipped_entries) == (5, 0, 1)
    assert data.hlen(keyspace.EVENT_IDS) == 5 and service.queue.pending() == 0


def test_stale_entries_are_claimed_from_dead_consumers(idle) -> None:
    service, _ = idle
    service.track_many([{"type": "click", "userId": "u"} for _ in range(3)])
    assert service.queue.read("dead-consumer", 10)  # read, never committed
    assert service.recover("rescuer").entries == 0  # not idle long enough yet
    time.sleep(service.settings.claim_idle_seconds + 0.2)
    report = service.recover("rescuer")
    assert report.entries == 1 and report.committed.stored == 3
    assert service.queue.pending() == 0


@pytest.mark.slow
def test_backlog_drains_highest_priority_first(make_stack) -> None:
    stack = make_stack(ANALYTICS_BATCH_SIZE="10")
    service = stack.app().extensions["analytics"]
    for i in range(200):
        service.track({"type": "click", "userId": "u", "priority": "low", "messageId": f"low-{i}"})
    for i in range(20):
        service.track({"type": "click", "userId": "u", "priority": "critical", "messageId": f"crit-{i}"})
    order: list[str] = []
    pubsub = stack.redis.client().pubsub()
    pubsub.subscribe("analytics:live:events")

    def listen() -> None:
        for message in pubsub.listen():
            if message["type"] == "message":
                order.extend(r["m"] for r in orjson.loads(message["data"]))
            if len(order) >= 220:
                return

    listener = threading.Thread(target=listen, daemon=True)
    listener.start()
    wait_until(lambda: pubsub.subscribed, 5)
    stack.worker(concurrency=1)
    listener.join(60)
    assert len(order) == 220
    last_critical = max(i for i, m in enumerate(order) if m.startswith("crit"))
    assert last_critical < 40, f"critical events were stored late (last at {last_critical})"


@pytest.mark.slow
def test_worker_sigkill_mid_batch_loses_nothing_and_stores_nothing_twice(make_stack) -> None:
    stack = make_stack(ANALYTICS_BATCH_SIZE="16")
    stack.beat()
    worker = stack.worker(concurrency=2)
    app = stack.app()
    service = app.extensions["analytics"]
    client = app.test_client()
    secret, _ = service.create_api_key("ingest")
    headers = {"Authorization": f"Bearer {secret}"}
    total = 0
    kills_mid_batch = 0
    for round_ in range(4):
        for i in range(25):
            batch = [{"type": "click", "userId": f"u{j % 7}", "messageId": f"r{round_}-{i}-{j}"}
                     for j in range(100)]
            response = client.post("/v1/events", json={"batch": batch}, headers=headers)
            assert response.status_code == 202
            total += response.json["accepted"]
        # Kill the worker while it holds unacknowledged entries.
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and service.queue.pending() == 0:
            pass
        kills_mid_batch += service.queue.pending() > 0
        worker.kill(signal.SIGKILL)
        worker.proc.wait(10)
        worker = stack.worker(concurrency=2)
    assert kills_mid_batch >= 1, "no kill landed mid-batch: the test proved nothing"
    data = stack.redis.client()
    wait_until(lambda: data.hlen(keyspace.EVENT_IDS) >= total and service.queue.pending() == 0
               and queued(service) == 0, 60, 0.2, "all accepted events to be stored")
    assert data.hlen(keyspace.EVENT_IDS) == total == 10_000
    assert data.zcard(keyspace.time_index("click")) == total
    assert data.hlen(keyspace.processed("click")) == total


@pytest.mark.slow
def test_redis_outage_answers_503_and_recovers(make_stack) -> None:
    stack = make_stack()
    stack.beat()
    stack.worker()
    app = stack.app()
    service = app.extensions["analytics"]
    client = app.test_client()
    secret, _ = service.create_api_key("admin")
    headers = {"Authorization": f"Bearer {secret}"}
    batch = {"batch": [{"type": "login", "userId": f"u{i}"} for i in range(50)]}
    assert client.post("/v1/events", json=batch, headers=headers).status_code == 202

    stack.redis.stop()
    down = client.post("/v1/events", json=batch, headers=headers)
    assert down.status_code == 503 and down.json["error"]["code"] == "unavailable"
    assert client.get("/readyz").status_code == 503
    assert client.get("/healthz").status_code == 200

    stack.redis.start()  # same port and AOF directory
    assert client.get("/readyz").status_code == 200
    assert client.post("/v1/events", json=batch, headers=headers).status_code == 202
    data = stack.redis.client()
    wait_until(lambda: data.hlen(keyspace.EVENT_IDS) == 100, 60, 0.2,
               "events accepted before and after the outage to be stored")
