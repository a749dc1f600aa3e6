"""``ANALYTICS_MIN_REPLICAS``: a 202 only once a replica has the queue
entries (``WAIT``), else a 503 that the client retries; the retry is stored
once. A real master and a real replica (``redis-server --replicaof``).

``slow``: it starts its own two Redis servers.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from analytics.errors import NotReplicated
from testkit import RedisServer, service_env, stored_events, wait_until
from web import create_app


@pytest.fixture
def master_and_replica(tmp_path: Path) -> Iterator[tuple[RedisServer, RedisServer]]:
    master = RedisServer(tmp_path / "master").start()
    replica = RedisServer(tmp_path / "replica", replica_of=master.port)
    try:
        replica.start()
        wait_until(lambda: replica.client().info("replication")["master_link_status"] == "up", 20, 0.05, "the link")
        yield master, replica
    finally:
        replica.process.kill(signal.SIGCONT)  # a stopped process cannot act on SIGTERM
        replica.stop()
        master.stop()


def batch(tag: str, n: int = 20) -> dict:
    return {"batch": [{"type": "click", "userId": f"u{i}", "messageId": f"{tag}-{i}"} for i in range(n)]}


@pytest.mark.slow
def test_202_only_once_a_replica_has_the_events_and_a_retry_is_stored_once(master_and_replica, encryption_keys) -> None:
    master, replica = master_and_replica
    env = service_env(master, encryption_keys, ANALYTICS_MIN_REPLICAS="1", ANALYTICS_REPLICA_TIMEOUT_MS="100")
    app = create_app({**env, "TESTING": True})
    service = app.extensions["analytics"]
    client = app.test_client()
    secret, _ = service.access.create("ingest")
    headers = {"Authorization": f"Bearer {secret}"}
    service.queue.ensure_groups()  # as a running worker has

    assert client.post("/v1/events", json=batch("up"), headers=headers).status_code == 202
    master.client().script_flush()  # as after a restart: loaded again, WAIT still on the same connection
    assert client.post("/v1/events", json=batch("reloaded"), headers=headers).status_code == 202
    service.events.track_many(batch("api-up")["batch"])  # the general path (MULTI/EXEC, WAIT)

    replica.process.kill(signal.SIGSTOP)  # connected, but acknowledges nothing
    refused = client.post("/v1/events", json=batch("stopped"), headers=headers)
    assert refused.status_code == 503, refused.data
    error = refused.json["error"]
    assert error["code"] == "unavailable" and "replica" in error["message"]
    assert error["details"] == {"replicas": 0, "required": 1, "retry_after": 1}
    assert refused.headers["Retry-After"] == "1"
    sample = {"name": "load", "value": 1, "tags": {"shard": "a"}}
    assert client.post("/v1/metrics", json=sample, headers=headers).status_code == 503
    # The refused events were written to the master all the same: a worker may
    # store them; the client's retry must not store them twice.
    service.processor.drain("test", budget=1)

    replica.process.kill(signal.SIGCONT)
    retried = client.post("/v1/events", json=batch("stopped"), headers=headers)
    assert retried.status_code == 202, retried.data
    service.processor.drain("test", budget=1)
    data = master.client()
    assert stored_events(data) == 80
    assert service.queue.length() == 0 and service.queue.pending() == 0

    # The general path (Python API, imports) waits too; a replica gone for
    # good (killed: the master sees the link drop) answers the same.
    replica.stop()
    with pytest.raises(NotReplicated):
        service.events.track_many(batch("api")["batch"])
    service.processor.drain("test", budget=1)
    assert stored_events(data) == 100  # written, processed: a retry would be deduplicated


def test_no_wait_without_replicas_asked(client, keys, data) -> None:
    """The default (0) never waits: a single Redis without replicas takes events."""
    assert data.info("replication")["connected_slaves"] == 0
    assert client.post("/v1/events", json=batch("single"), headers=keys["ingest"]).status_code == 202
