"""``POST /v1/events``, ``POST /v1/metrics`` and the Segment-compatible
paths in one Redis round trip (``lua/admit_events.lua``): the answers of
the two-trip path, in the same order, and nothing queued unless the request
was admitted."""

from __future__ import annotations

import base64
import contextlib
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import msgpack
import pytest
import redis

from analytics import keyspace
from analytics.privacy.crypto import hash_api_key
from testkit import RedisServer, service_env
from tests.web.test_segment import records
from web import create_app

EVENT = {"type": "click", "userId": "u-1", "properties": {"email": "a@example.org", "n": 1}}


def bearer(secret: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"}


def queued(data: redis.Redis) -> int:
    """Events in every queue lane."""
    return sum(len(msgpack.unpackb(fields[b"r"])) for lane in keyspace.EVENT_QUEUES for _, fields in data.xrange(lane))


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

    server = RedisServer(tmp_path / "redis").start()
    env = service_env(server, encryption_keys, ANALYTICS_REGISTRY_TTL="600")
    try:
        yield server, create_app({**env, "TESTING": True})
    finally:
        server.stop()


def round_trip(server: RedisServer, send: Callable[[], Any]) -> tuple[Any, list[str], list[str]]:
    """``send()`` under MONITOR: its answer, the commands the app sent to
    Redis, and the commands scripts ran with their first key ("SET key")."""
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
        response = send()
        data.echo("done")
        listener.join(10)
    sent = [
        c["command"].split()[0]
        for c in commands
        if c["db"] == 0 and c["client_type"] != "lua" and "ECHO" not in c["command"]
    ]
    inside = [" ".join(c["command"].split()[:2]) for c in commands if c["client_type"] == "lua"]
    return response, sent, inside


def test_one_event_costs_one_round_trip(private) -> None:
    server, app = private
    client = app.test_client()
    headers = bearer(app.extensions["analytics"].access.create("ingest")[0])
    assert client.post("/v1/events", json=EVENT, headers=headers).status_code == 202  # warm
    response, sent, inside = round_trip(server, lambda: client.post("/v1/events", json=EVENT, headers=headers))
    assert response.status_code == 202 and response.json["accepted"] == 1
    assert sent == ["EVALSHA"], sent
    assert f"XADD {keyspace.event_queue('normal')}" in inside
    assert f"HGET {keyspace.API_KEYS}" in inside
    assert queued(server.client()) == 2


def test_the_rate_limit_stays_out_of_the_aof(private) -> None:
    """The bucket is soft state: Redis has it, its AOF does not (nor do
    replicas), while the events it admitted are there."""
    server, app = private
    client = app.test_client()
    secret = app.extensions["analytics"].access.create("ingest")[0]
    for _ in range(3):
        assert client.post("/v1/events", json=EVENT, headers=bearer(secret)).status_code == 202
    bucket = keyspace.rate_bucket(hash_api_key(secret))
    assert server.client().exists(bucket)
    aof = b"".join(path.read_bytes() for path in (server.dir / "appendonlydir").iterdir())
    assert aof.count(keyspace.event_queue("normal").encode()) == 3
    assert keyspace.RATE_BUCKET.encode() not in aof


def test_bad_key_wins_over_a_bad_body(client, keys, service, data) -> None:
    bad = bearer("ak_not-a-key")
    invalid_event = {"type": "no-such-type", "userId": "u"}
    for kwargs in (
        {"data": b"{not json", "content_type": "application/json"},
        {"json": invalid_event},
        {"json": {"batch": [invalid_event]}},
        {"json": {"batch": "not a list"}},
        {"json": EVENT},
    ):
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
    secret, key = service.access.create("ingest")
    assert client.post("/v1/events", json=EVENT, headers=bearer(secret)).status_code == 202
    service.access.revoke(key.id)
    refused = client.post("/v1/events", json=EVENT, headers=bearer(secret))
    assert refused.status_code == 401 and refused.json["error"]["code"] == "unauthorized"
    batch = client.post("/v1/events", json={"batch": [EVENT, EVENT]}, headers=bearer(secret))
    assert batch.status_code == 401
    assert entries_added(data) == 1
    assert service.auditor.auth_failures() == 2


def rate_limited(env: dict[str, str]) -> tuple[Any, Any, redis.Redis, dict[str, str]]:
    """A test client of an app whose keys get 3 requests, then one per 100 s;
    its service, data client, and an ingest key's headers."""

    app = create_app({**env, "TESTING": True, "ANALYTICS_RATE_LIMIT": "0.01", "ANALYTICS_RATE_BURST": "3"})
    service = app.extensions["analytics"]
    return app.test_client(), service, service.redis, bearer(service.access.create("ingest")[0])


def test_the_rate_limit_counts_every_request_and_refuses_before_queueing(env) -> None:
    client, service, data, headers = rate_limited(env)
    # a 400 takes its token like a 202
    assert client.post("/v1/events", json={"type": "click"}, headers=headers).status_code == 400
    assert client.post("/v1/events", json=EVENT, headers=headers).status_code == 202
    assert client.post("/v1/events", json={"batch": [EVENT] * 3}, headers=headers).status_code == 202
    refused = client.post("/v1/events", json=EVENT, headers=headers)
    assert refused.status_code == 429 and refused.json["error"]["code"] == "rate_limited"
    assert 1 <= int(refused.headers["Retry-After"]) <= 300
    # once limited, a bad body is still a 429 (the key is checked first)
    assert client.post("/v1/events", data=b"[", headers=headers, content_type="application/json").status_code == 429
    assert entries_added(data) == 2
    # a key of the wrong role takes a token too, and queues nothing
    reader = bearer(service.access.create("read")[0])
    assert [client.post("/v1/events", json=EVENT, headers=reader).status_code for _ in range(4)] == [403, 403, 403, 429]
    assert entries_added(data) == 2


def ingest_client(private: Any) -> tuple[Any, dict[str, str], redis.Redis]:
    """The private app's test client, an ingest key's headers, and a client
    on its Redis."""
    server, app = private
    headers = bearer(app.extensions["analytics"].access.create("ingest")[0])
    return app.test_client(), headers, server.client()


@contextlib.contextmanager
def nothing_written_while_full(data: redis.Redis) -> Iterator[None]:
    """Redis over its memory limit inside the block (every write refused);
    on leaving it, checks that nothing at all was written: no entry, not
    even a token, no kick flag (whose expiry alone may move)."""

    def everything_but_the_kick() -> dict[bytes, Any]:
        return {key: data.dump(key) for key in data.keys("analytics:*") if key != keyspace.KICK_EVENTS.encode()}

    before = everything_but_the_kick()
    data.config_set("maxmemory", 1)
    try:
        yield
        assert everything_but_the_kick() == before
        assert not data.exists(keyspace.KICK_EVENTS) or data.pttl(keyspace.KICK_EVENTS) > 0
    finally:
        data.config_set("maxmemory", 0)


def test_redis_full_is_503_with_nothing_queued(private) -> None:
    client, headers, data = ingest_client(private)
    assert client.post("/v1/events", json=EVENT, headers=headers).status_code == 202
    # one event, and a batch spanning several priority lanes
    mixed = {"batch": [{**EVENT, "priority": p} for p in ("low", "normal", "critical")]}
    with nothing_written_while_full(data):
        for body in (EVENT, mixed):
            full = client.post("/v1/events", json=body, headers=headers)
            assert full.status_code == 503, full.json
            assert full.json["error"]["code"] == "unavailable" and "full" in full.json["error"]["message"]
    assert client.post("/v1/events", json=mixed, headers=headers).status_code == 202
    assert queued(data) == 4


def test_a_redis_that_lost_its_scripts_is_given_them_again(client, keys, data) -> None:
    assert client.post("/v1/events", json=EVENT, headers=keys["ingest"]).status_code == 202
    data.script_flush()  # as after a restart: scripts are not persisted
    assert client.post("/v1/events", json=EVENT, headers=keys["ingest"]).status_code == 202
    assert entries_added(data) == 2


# -- metrics and Segment: the same admission -----------------------------------
SAMPLE = {"name": "api.latency", "value": 12.5, "tags": {"route": "/home"}}
DLQ = "analytics:dlq:segment"
#: A Segment batch of three messages, one of which cannot be mapped (a dead
#: letter) and two with different sentAt (two calls of prepare_events).
SEGMENT_BATCH = {
    "batch": [
        {"type": "track", "event": "click", "userId": "u-1", "properties": {"n": 1}},
        {"type": "track", "userId": "u-2"},  # a track call without an event name
        {"type": "page", "name": "Home", "anonymousId": "a-1", "sentAt": "2026-01-01T00:00:00Z"},
    ]
}


def metric_entries(data: redis.Redis) -> int:
    """Metric queue entries ever added."""
    if not data.exists(keyspace.METRICS_QUEUE):
        return 0
    return int(data.xinfo_stream(keyspace.METRICS_QUEUE)["entries-added"])


def dead_letters(data: redis.Redis) -> int:
    return int(data.xinfo_stream(DLQ)["entries-added"]) if data.exists(DLQ) else 0


def written(data: redis.Redis) -> tuple[int, int, int]:
    """Event entries, metric entries and Segment dead letters ever added."""
    return entries_added(data), metric_entries(data), dead_letters(data)


def basic(secret: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{secret}:".encode()).decode()}


def test_one_metric_post_costs_one_round_trip(private) -> None:
    server, app = private
    client = app.test_client()
    headers = bearer(app.extensions["analytics"].access.create("ingest")[0])
    # warm: the first sample of a series registers it (key, registration,
    # queue); the second loads the admission script
    for _ in range(2):
        assert client.post("/v1/metrics", json=SAMPLE, headers=headers).status_code == 202
    batch = {"batch": [SAMPLE, {**SAMPLE, "value": 3}, {"name": "bad name!", "value": 1}]}
    response, sent, inside = round_trip(server, lambda: client.post("/v1/metrics", json=batch, headers=headers))
    assert response.status_code == 202, response.json
    assert sent == ["EVALSHA"], sent
    assert f"HGET {keyspace.API_KEYS}" in inside
    assert inside.count(f"XADD {keyspace.METRICS_QUEUE}") == 1
    body = response.json
    assert body["accepted"] == 2 and [r["index"] for r in body["rejected"]] == [2]
    # the ids name the entry the script added, as the pipeline's did
    data = server.client()
    last = data.xrevrange(keyspace.METRICS_QUEUE, count=1)[0][0].decode()
    assert body["ids"] == [f"{last}:0", f"{last}:1"]
    assert metric_entries(data) == 3


@pytest.mark.parametrize(
    "path, body",
    [
        ("/v1/batch", SEGMENT_BATCH),
        ("/v1/track", {"event": "click", "userId": "u-1"}),
        ("/v1/t", {"userId": "u-1"}),  # dead-lettered only (no event name)
    ],
)
def test_one_segment_post_costs_one_round_trip(private, path, body) -> None:
    server, app = private
    client = app.test_client()
    headers = basic(app.extensions["analytics"].access.create("ingest")[0])
    assert client.post("/v1/batch", json=SEGMENT_BATCH, headers=headers).status_code == 200  # warm
    data = server.client()
    before = written(data)
    response, sent, inside = round_trip(server, lambda: client.post(path, json=body, headers=headers))
    assert response.status_code == 200 and response.json == {"success": True}
    assert sent == ["EVALSHA"], sent  # dead letters in the same script
    events, _, letters = written(data)
    assert f"HGET {keyspace.API_KEYS}" in inside
    assert [c.split()[0] for c in inside].count("XADD") == events - before[0] + letters - before[2]
    expected = {"/v1/batch": (1, 1), "/v1/track": (1, 0), "/v1/t": (0, 1)}[path]
    assert (events - before[0], letters - before[2]) == expected
    if path == "/v1/t":
        # nothing for a worker: the wake-up flag is left alone
        assert f"SET {keyspace.KICK_EVENTS}" not in inside


def test_segment_keeps_messages_and_dead_letters_of_a_one_trip_batch(client, keys, data, worker) -> None:

    response = client.post(
        "/v1/batch", json={**SEGMENT_BATCH, "sentAt": "2026-01-01T00:00:01Z"}, headers=keys["ingest"]
    )
    assert response.status_code == 200
    assert sorted(r["t"] for r in records(data, 2)) == ["click", "page"]
    ((_, letter),) = data.xrange(DLQ)
    assert letter[b"reason"] == b"invalid_message" and b"event" in letter[b"details"]


@pytest.mark.parametrize("path", ["/v1/metrics", "/v1/batch", "/v1/track"])
def test_bad_key_wins_over_a_bad_body_on_metrics_and_segment(client, keys, service, data, path) -> None:
    bad = bearer("ak_not-a-key")
    good = {"/v1/metrics": SAMPLE, "/v1/batch": SEGMENT_BATCH, "/v1/track": {"event": "click", "userId": "u"}}[path]
    bodies = [
        {"data": b"{not json", "content_type": "application/json"},
        {"json": {"batch": "not a list"}},
        {"json": good},
    ]
    if path == "/v1/metrics":
        bodies += [{"json": {"name": "bad name!", "value": 1}}, {"json": {"batch": [{"value": "x"}]}}]
    for kwargs in bodies:
        assert client.post(path, headers=bad, **kwargs).status_code == 401, kwargs
        # Segment may find the key in the body: a body that is not JSON is a
        # 400 without a key in the headers, as before
        no_key = 400 if path != "/v1/metrics" and "data" in kwargs else 401
        assert client.post(path, **kwargs).status_code == no_key, kwargs
        assert client.post(path, headers=keys["read"], **kwargs).status_code == 403, kwargs
    too_large = {"json": {"batch": [good] * 3000}}
    assert client.post(path, headers=bad, **too_large).status_code == 401
    assert client.post(path, headers=keys["read"], **too_large).status_code == 403
    # Segment answers 400 where the others answer 413
    assert client.post(path, headers=keys["ingest"], **too_large).status_code in (400, 413)
    assert (
        client.post(path, headers=keys["ingest"], data=b"{not json", content_type="application/json").status_code == 400
    )
    assert written(data) == (0, 0, 0)  # not even a dead letter for a refused key
    assert service.auditor.auth_failures() == 2 * len(bodies) + 1 - (path != "/v1/metrics")
    assert [(e["reason"], e["where"]) for e in audited_failures(service)] == [("invalid", "http")]


def test_a_segment_write_key_in_the_body_is_checked_in_the_same_trip(client, service, data) -> None:
    secret, key = service.access.create("ingest")
    body = {**SEGMENT_BATCH, "writeKey": secret}
    assert client.post("/v1/batch", json=body).status_code == 200
    service.access.revoke(key.id)
    refused = client.post("/v1/batch", json=body)
    assert refused.status_code == 401 and refused.json["success"] is False
    assert written(data) == (1, 0, 1)


@pytest.mark.parametrize(
    "path, body",
    [("/v1/metrics", SAMPLE), ("/v1/batch", SEGMENT_BATCH), ("/v1/track", {"event": "click", "userId": "u"})],
)
def test_metrics_and_segment_take_a_token_per_request_and_queue_nothing_refused(env, path, body) -> None:
    client, service, data, headers = rate_limited(env)
    # a 400 takes its token like a 202
    assert client.post(path, data=b"[", headers=headers, content_type="application/json").status_code == 400
    ok = 202 if path == "/v1/metrics" else 200
    assert [client.post(path, json=body, headers=headers).status_code for _ in range(2)] == [ok, ok]
    after = written(data)
    refused = client.post(path, json=body, headers=headers)
    assert refused.status_code == 429 and refused.headers["Retry-After"].isdigit()
    assert 1 <= int(refused.headers["Retry-After"]) <= 300
    assert client.post(path, data=b"[", headers=headers, content_type="application/json").status_code == 429
    assert written(data) == after
    reader = bearer(service.access.create("read")[0])
    assert [client.post(path, json=body, headers=reader).status_code for _ in range(4)] == [403, 403, 403, 429]
    assert written(data) == after


def test_metrics_and_segment_when_redis_is_full_are_503_with_nothing_written(private) -> None:
    client, headers, data = ingest_client(private)
    assert client.post("/v1/metrics", json=SAMPLE, headers=headers).status_code == 202
    assert client.post("/v1/batch", json=SEGMENT_BATCH, headers=headers).status_code == 200
    with nothing_written_while_full(data):
        for path, body in (
            ("/v1/metrics", {"batch": [SAMPLE] * 3}),
            ("/v1/batch", SEGMENT_BATCH),
            ("/v1/t", {"userId": "u"}),
        ):
            full = client.post(path, json=body, headers=headers)
            assert full.status_code == 503, (path, full.json)
    assert client.post("/v1/metrics", json=SAMPLE, headers=headers).status_code == 202
    assert written(data) == (1, 2, 1)


def test_a_new_series_is_registered_after_the_key_is_checked(client, keys, service, data) -> None:
    new = {"name": "fresh", "value": 1, "tags": {"region": "eu"}}
    assert client.post("/v1/metrics", json=new, headers=bearer("ak_not-a-key")).status_code == 401
    assert client.post("/v1/metrics", json=new, headers=keys["read"]).status_code == 403
    assert not data.exists(keyspace.metric_series("fresh"))
    accepted = client.post("/v1/metrics", json=new, headers=keys["ingest"])
    assert accepted.status_code == 202 and accepted.json["accepted"] == 1
    assert data.hlen(keyspace.metric_series("fresh")) == 1 and metric_entries(data) == 1
