"""``POST /v1/events`` in one Redis round trip (``lua/admit_events.lua``):
the answers of the two-trip path, in the same order, and nothing queued
unless the request was admitted."""
from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import msgpack
import pytest
import redis

from analytics import keyspace
from tests.conftest import service_env
from tests.support import RedisServer

EVENT = {"type": "click", "userId": "u-1", "properties": {"email": "a@example.org", "n": 1}}


def bearer(secret: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"}


def queued(data: redis.Redis) -> int:
    """Events in every queue lane."""
    return sum(len(msgpack.unpackb(fields[b"r"]))
               for lane in keyspace.EVENT_QUEUES for _, fields in data.xrange(lane))


def entries_added(data: redis.Redis) -> int:
    """Queue entries ever added (one per request and lane), whether or not
    the session's worker processed them since."""
    total = 0
    for lane in keyspace.EVENT_QUEUES:
        if data.exists(lane):
            total += int(data.xinfo_stream(lane)["entries-added"])
    return total


def audited_failures(service: Any) -> list[dict[str, Any]]:
    entries, _ = service.auditor.page(None, 100)
    return [e for e in entries if e["action"] == "auth.failure"]


@pytest.fixture
def private(tmp_path: Path, encryption_keys: str) -> Any:
    """An app on a Redis of its own: nothing else talks to it (MONITOR,
    maxmemory)."""
    from web import create_app

    server = RedisServer(tmp_path / "redis").start()
    env = service_env(server, encryption_keys, ANALYTICS_REGISTRY_TTL="600")
    try:
        yield server, create_app({**env, "TESTING": True})
    finally:
        server.stop()


def test_one_event_costs_one_round_trip(private) -> None:
    server, app = private
    client = app.test_client()
    headers = bearer(app.extensions["analytics"].create_api_key("ingest")[0])
    assert client.post("/v1/events", json=EVENT, headers=headers).status_code == 202  # warm
    watcher, data = server.client(), server.client()
    data.ping()  # connected before MONITOR starts
    commands: list[dict[str, Any]] = []
    with watcher.monitor() as monitor:
        def listen() -> None:
            for command in monitor.listen():
                if command["command"] == "ECHO done":
                    return
                commands.append(command)

        listener = threading.Thread(target=listen)
        listener.start()
        response = client.post("/v1/events", json=EVENT, headers=headers)
        data.echo("done")
        listener.join(10)
    assert response.status_code == 202 and response.json["accepted"] == 1
    sent = [c["command"].split()[0] for c in commands
            if c["db"] == 0 and c["client_type"] != "lua" and "ECHO" not in c["command"]]
    assert sent == ["EVALSHA"], sent
    inside = [c["command"].split()[0] for c in commands if c["client_type"] == "lua"]
    assert "XADD" in inside and "HGET" in inside
    assert queued(data) == 2


def test_bad_key_wins_over_a_bad_body(client, keys, service, data) -> None:
    bad = bearer("ak_not-a-key")
    invalid_event = {"type": "no-such-type", "userId": "u"}
    for kwargs in ({"data": b"{not json", "content_type": "application/json"},
                   {"json": invalid_event},
                   {"json": {"batch": [invalid_event]}},
                   {"json": {"batch": "not a list"}},
                   {"json": EVENT}):
        assert client.post("/v1/events", headers=bad, **kwargs).status_code == 401, kwargs
        assert client.post("/v1/events", **kwargs).status_code == 401, kwargs
        assert client.post("/v1/events", headers=keys["read"], **kwargs).status_code == 403, kwargs
    too_large = {**EVENT, "properties": {"x": "a" * 600_000}}
    assert client.post("/v1/events", headers=bad, json=too_large).status_code == 401
    assert client.post("/v1/events", headers=keys["ingest"], json=too_large).status_code == 413
    assert client.post("/v1/events", headers=keys["ingest"], json=invalid_event).status_code == 400
    assert entries_added(data) == 0
    # every failure counted; audited (once per window and address)
    assert service.auditor.auth_failures() == 11
    assert [(e["reason"], e["where"]) for e in audited_failures(service)] == [("invalid", "http")]


def test_a_revoked_key_is_refused_at_once_and_queues_nothing(client, service, data) -> None:
    secret, key = service.create_api_key("ingest")
    assert client.post("/v1/events", json=EVENT, headers=bearer(secret)).status_code == 202
    service.revoke_api_key(key.id)
    refused = client.post("/v1/events", json=EVENT, headers=bearer(secret))
    assert refused.status_code == 401 and refused.json["error"]["code"] == "unauthorized"
    batch = client.post("/v1/events", json={"batch": [EVENT, EVENT]}, headers=bearer(secret))
    assert batch.status_code == 401
    assert entries_added(data) == 1
    assert service.auditor.auth_failures() == 2


def test_the_rate_limit_counts_every_request_and_refuses_before_queueing(env) -> None:
    from web import create_app

    app = create_app({**env, "TESTING": True, "ANALYTICS_RATE_LIMIT": "0.01",
                      "ANALYTICS_RATE_BURST": "3"})
    client = app.test_client()
    service = app.extensions["analytics"]
    data = service.redis
    headers = bearer(service.create_api_key("ingest")[0])
    # a 400 takes its token like a 202
    assert client.post("/v1/events", json={"type": "click"}, headers=headers).status_code == 400
    assert client.post("/v1/events", json=EVENT, headers=headers).status_code == 202
    assert client.post("/v1/events", json={"batch": [EVENT] * 3}, headers=headers).status_code == 202
    refused = client.post("/v1/events", json=EVENT, headers=headers)
    assert refused.status_code == 429 and refused.json["error"]["code"] == "rate_limited"
    assert 1 <= int(refused.headers["Retry-After"]) <= 300
    # once limited, a bad body is still a 429 (the key is checked first)
    assert client.post("/v1/events", data=b"[", headers=headers,
                       content_type="application/json").status_code == 429
    assert entries_added(data) == 2
    # a key of the wrong role takes a token too, and queues nothing
    reader = bearer(service.create_api_key("read")[0])
    assert [client.post("/v1/events", json=EVENT, headers=reader).status_code
            for _ in range(4)] == [403, 403, 403, 429]
    assert entries_added(data) == 2


def test_redis_full_is_503_with_nothing_queued(private) -> None:
    server, app = private
    client = app.test_client()
    service = app.extensions["analytics"]
    secret = service.create_api_key("ingest")[0]
    data = server.client()
    assert client.post("/v1/events", json=EVENT, headers=bearer(secret)).status_code == 202

    def state() -> dict[bytes, Any]:
        # every key but the kick flag, which may expire meanwhile
        return {key: data.dump(key) for key in data.keys("analytics:*")
                if key != keyspace.KICK_EVENTS.encode()}

    before = state()
    data.config_set("maxmemory", 1)  # over the limit: every write is refused
    try:
        # one event, and a batch spanning several priority lanes
        mixed = {"batch": [{**EVENT, "priority": p} for p in ("low", "normal", "critical")]}
        for body in (EVENT, mixed):
            full = client.post("/v1/events", json=body, headers=bearer(secret))
            assert full.status_code == 503, full.json
            assert full.json["error"]["code"] == "unavailable" and "full" in full.json["error"]["message"]
        # nothing written at all: no entry, no kick flag, not even the token
        assert state() == before
        assert not data.exists(keyspace.KICK_EVENTS) or data.pttl(keyspace.KICK_EVENTS) > 0
    finally:
        data.config_set("maxmemory", 0)
    assert client.post("/v1/events", json=mixed, headers=bearer(secret)).status_code == 202
    assert queued(data) == 4


def test_a_redis_that_lost_its_scripts_is_given_them_again(client, keys, data) -> None:
    assert client.post("/v1/events", json=EVENT, headers=keys["ingest"]).status_code == 202
    data.script_flush()  # as after a restart: scripts are not persisted
    assert client.post("/v1/events", json=EVENT, headers=keys["ingest"]).status_code == 202
    assert entries_added(data) == 2
