"""RabbitMQ as the Celery broker (``CELERY_BROKER_URL=amqp://...``): Celery
carries only wake-ups, the data stays in Redis. A private rabbitmq-server
(never the machine's own), a real worker, beat and Flower on it: events
flow from ingest to query, a SIGKILLed worker's entries are recovered.

``slow``: it starts its own RabbitMQ, Redis and Celery processes.
"""

from __future__ import annotations

import signal
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from analytics import keyspace
from testkit import Process, RabbitServer, free_port, python_env, stored_events, wait_until
from tests.tasks.test_faults import assert_events_stored_once, held


@pytest.fixture
def rabbit(tmp_path: Path) -> Iterator[RabbitServer]:
    server = RabbitServer(tmp_path / "rabbitmq").start()
    yield server
    server.stop()


def flower(env: dict[str, str], log_dir: Path) -> tuple[Process, str]:
    port = free_port()
    argv = [sys.executable, "-m", "celery", "-A", "tasks", "flower", f"--port={port}", "--address=127.0.0.1"]
    proc = Process("flower", argv, python_env({**env, "FLOWER_BASIC_AUTH": "ops:pw"}), log_dir).start()
    return proc, f"http://127.0.0.1:{port}"


@pytest.mark.slow
def test_events_flow_and_a_killed_workers_entries_are_recovered_over_amqp(rabbit, make_stack, tmp_path) -> None:
    stack = make_stack(CELERY_BROKER_URL=rabbit.url(), ANALYTICS_BATCH_SIZE="4")
    worker = stack.worker(concurrency=1)
    stack.beat()
    monitor, base = flower(stack.env, tmp_path)
    stack.processes.append(monitor)
    app = stack.app()
    assert app.extensions["celery"].conf.broker_url.startswith("amqp://")
    service = app.extensions["analytics"]
    client = app.test_client()
    ingest = {"Authorization": f"Bearer {service.access.create('ingest')[0]}"}
    read = {"Authorization": f"Bearer {service.access.create('read')[0]}"}
    data = stack.redis.client()

    def post(tag: str, n: int = 50) -> None:
        batch = [{"type": "click", "userId": "u-amqp", "messageId": f"{tag}-{i}"} for i in range(n)]
        assert client.post("/v1/events", json={"batch": batch}, headers=ingest).status_code == 202

    # Ingest -> stored (a worker woken over AMQP) -> queried.
    post("first")
    wait_until(lambda: stored_events(data) == 50, 30, 0.1, "the first batch to be stored")
    found = client.get("/v1/events?type=click&userId=u-amqp&limit=100", headers=read)
    assert found.status_code == 200 and len(found.json["events"]) == 50

    # A worker killed while it holds entries: they are taken over.
    total, left_pending = 50, 0
    for round_ in range(10):
        for i in range(20):
            post(f"kill{round_}-{i}")
        total += 20 * 50
        wait_until(lambda: held(service) > 0 or service.queue.length() == 0, 20, 0.001, "a worker to hold entries")
        worker.kill(signal.SIGKILL)
        worker.proc.wait(10)
        left_pending = held(service)
        worker = stack.worker(concurrency=1)
        if left_pending:
            break
    assert left_pending, "no kill left entries pending: proved nothing"
    wait_until(
        lambda: stored_events(data) == total and held(service) == 0 and service.queue.length() == 0,
        60,
        0.2,
        "every accepted event to be stored after the kill",
    )
    assert_events_stored_once(data, total)
    assert sum(int(v) for v in data.hgetall(keyspace.BEAT_STATS).values()) > 0  # beat sends over AMQP too

    # Flower sees the worker over AMQP (its broker page needs RabbitMQ's
    # management plugin, which this node does not run).
    def flower_workers() -> dict:
        try:
            reply = requests.get(f"{base}/api/workers?refresh=1", auth=("ops", "pw"), timeout=10)
        except requests.ConnectionError:
            return {}
        return reply.json() if reply.status_code == 200 else {}

    names = wait_until(flower_workers, 60, 1.0, "flower to list the worker")
    assert any(name.startswith(worker.name + "@") for name in names), names
