"""The contract's ingest and query shapes, through the real app and Redis.
Processing is done by the session's real Celery worker."""

from __future__ import annotations

import gzip
import time
from typing import Any

import orjson
import pytest

from analytics import keyspace
from analytics.events.schemas import format_time_ms, parse_time_ms
from testkit import stored_events, wait_until


def stored_count(data: Any) -> int:
    return stored_events(data)


def test_single_event_is_accepted_queued_and_processed(client, keys, data, worker) -> None:
    response = client.post(
        "/v1/events",
        headers=keys["ingest"],
        json={
            "type": "page_view",
            "userId": "u-17",
            "properties": {"path": "/home"},
            "timestamp": "2026-11-28T10:00:00.123Z",
            "messageId": "msg-1",
        },
    )
    assert response.status_code == 202
    # The client's messageId is not echoed: the answer names the event by its id.
    [event_id] = response.json["ids"]
    assert response.json["accepted"] == 1 and event_id != "msg-1"
    wait_until(lambda: stored_count(data) == 1, 10, message="the worker to store the event")
    body = client.get("/v1/events?type=page_view", headers=keys["read"]).json
    assert body["next"] is None
    [event] = body["events"]
    assert event["messageId"] == "msg-1" and event["userId"] == "u-17" and event["id"] == event_id
    assert event["timestamp"] == "2026-11-28T10:00:00.123Z"
    assert event["properties"] == {"path": "/home"} and event["priority"] == "normal"


def test_batch_reports_rejections_by_index(client, keys) -> None:
    batch = [
        {"type": "click", "userId": "a"},
        {"type": "no_such_type", "userId": "a"},
        {"type": "click"},
        {"type": "click", "anonymousId": "x", "priority": "urgent"},
        "not an object",
        {"type": "click", "anonymousId": "x", "surprise": 1},
        {"type": "login", "anonymousId": "x"},
    ]
    response = client.post("/v1/events", headers=keys["ingest"], json={"batch": batch})
    assert response.status_code == 202
    body = response.json
    assert body["accepted"] == 2 and len(body["ids"]) == 2
    rejected = {r["index"]: r["errors"] for r in body["rejected"]}
    assert set(rejected) == {1, 2, 3, 4, 5}
    assert "type" in rejected[1] and "userId" in rejected[2]
    assert "priority" in rejected[3] and "surprise" in rejected[5]


@pytest.mark.parametrize(
    "body, status, code",
    [
        (b"{not json", 400, "validation_error"),
        (b"", 400, "validation_error"),
        (b'{"type": "nope", "userId": "u"}', 400, "validation_error"),
        (b'{"batch": "no"}', 400, "validation_error"),
    ],
)
def test_bad_bodies_get_json_errors(client, keys, body, status, code) -> None:
    response = client.post("/v1/events", headers=keys["ingest"], data=body, content_type="application/json")
    assert response.status_code == status
    assert response.json["error"]["code"] == code


def test_gzip_and_text_plain_bodies_are_read(client, keys) -> None:
    raw = orjson.dumps({"type": "click", "userId": "u"})
    response = client.post(
        "/v1/events",
        headers={**keys["ingest"], "Content-Encoding": "gzip"},
        data=gzip.compress(raw),
        content_type="text/plain",
    )
    assert response.status_code == 202 and response.json["accepted"] == 1


def test_roles_and_missing_keys(client, keys) -> None:
    event = {"type": "click", "userId": "u"}
    assert client.post("/v1/events", json=event).status_code == 401
    bad = client.post("/v1/events", json=event, headers={"Authorization": "Bearer ak_nope"})
    assert bad.status_code == 401 and bad.json["error"]["code"] == "unauthorized"
    assert client.post("/v1/events", json=event, headers=keys["read"]).status_code == 403
    assert client.get("/v1/events", headers=keys["ingest"]).status_code == 403
    assert client.get("/v1/events", headers=keys["admin"]).status_code == 200
    assert client.post("/v1/event-types", json={"name": "t"}, headers=keys["read"]).status_code == 403


def test_revoked_key_is_refused_at_once(client, service) -> None:
    secret, key = service.access.create("ingest")
    headers = {"Authorization": f"Bearer {secret}"}
    assert client.post("/v1/events", json={"type": "click", "userId": "u"}, headers=headers).status_code == 202
    service.api_keys.revoke(key.id)
    assert client.post("/v1/events", json={"type": "click", "userId": "u"}, headers=headers).status_code == 401


def test_same_message_id_three_times_is_stored_once(client, keys, data, worker) -> None:
    event = {"type": "click", "userId": "u", "messageId": "dup-1"}
    for _ in range(2):
        assert client.post("/v1/events", json=event, headers=keys["ingest"]).status_code == 202
    client.post("/v1/events", json={"batch": [event, {**event, "messageId": "other"}]}, headers=keys["ingest"])
    wait_until(lambda: stored_count(data) == 2, 10, message="both distinct events stored")
    wait_until(lambda: data.xlen("analytics:events:queue") == 0, 10, message="queue drained")
    events = client.get("/v1/events?type=click", headers=keys["read"]).json["events"]
    assert sorted(e["messageId"] for e in events) == ["dup-1", "other"]


def test_event_types_can_be_registered_and_used(client, keys) -> None:
    types = client.get("/v1/event-types", headers=keys["read"]).json["eventTypes"]
    names = {t["name"] for t in types}
    assert {"page_view", "click", "form_submit", "api_call", "login", "logout", "error", "custom"} <= names
    assert client.post("/v1/events", json={"type": "signup", "userId": "u"}, headers=keys["ingest"]).status_code == 400
    created = client.post(
        "/v1/event-types",
        headers=keys["admin"],
        json={"name": "signup", "priority": "high", "description": "A new account"},
    )
    assert created.status_code == 201 and created.json["priority"] == "high"
    bad = client.post("/v1/event-types", headers=keys["admin"], json={"name": "bad name!"})
    assert bad.status_code == 400 and "name" in bad.json["error"]["details"]
    accepted = client.post("/v1/events", json={"type": "signup", "userId": "u"}, headers=keys["ingest"])
    assert accepted.status_code == 202


def test_query_filters_order_and_cursor(client, keys, service, data) -> None:
    batch = [
        {
            "type": "api_call",
            "userId": f"user-{i % 2}",
            "messageId": f"m{i}",
            "priority": "high" if i % 3 == 0 else "normal",
            "timestamp": f"2026-11-28T10:00:{i:02d}Z",
        }
        for i in range(30)
    ]
    assert service.events.track_many(batch).accepted == 30
    service.processor.drain("test-consumer")
    # The session worker may hold part of the batch: wait until it is stored.
    wait_until(lambda: stored_events(data) == 30, 30, 0.05, "the batch to be stored")
    got: list[str] = []
    cursor = None
    while True:
        query = "type=api_call&limit=7" + (f"&cursor={cursor}" if cursor else "")
        body = client.get(f"/v1/events?{query}", headers=keys["read"]).json
        got += [e["messageId"] for e in body["events"]]
        cursor = body["next"]
        if cursor is None:
            break
    assert got == [f"m{i}" for i in reversed(range(30))]  # newest first, no gaps, no repeats
    window = client.get(
        "/v1/events?type=api_call&start=2026-11-28T10:00:10Z&end=2026-11-28T10:00:19Z", headers=keys["read"]
    ).json["events"]
    assert [e["messageId"] for e in window] == [f"m{i}" for i in reversed(range(10, 20))]
    mine = client.get("/v1/events?userId=user-1", headers=keys["read"]).json["events"]
    assert {e["userId"] for e in mine} == {"user-1"} and len(mine) == 15
    high = client.get("/v1/events?priority=high", headers=keys["read"]).json["events"]
    assert len(high) == 10 and all(e["priority"] == "high" for e in high)
    epoch = client.get("/v1/events?end=1795860005", headers=keys["read"]).json["events"]
    assert [e["messageId"] for e in epoch] == [f"m{i}" for i in reversed(range(6))]
    assert client.get("/v1/events?cursor=garbage", headers=keys["read"]).status_code == 400


def test_user_scoped_key_sees_only_its_user(client, service) -> None:
    service.events.track_many([{"type": "login", "userId": "alice"}, {"type": "login", "userId": "bob"}])
    service.processor.drain("test-consumer")
    secret, _ = service.access.create("read", user_id="alice")
    headers = {"Authorization": f"Bearer {secret}"}
    events = client.get("/v1/events", headers=headers).json["events"]
    assert [e["userId"] for e in events] == ["alice"]
    assert client.get("/v1/events?userId=bob", headers=headers).json["events"] == []


def test_anonymous_only_events_are_not_read_as_a_user_id_of_the_same_string(client, keys, service, data) -> None:
    # An anonymous-only event is indexed under its anonymous hash, which is
    # the hash of a userId of the same string: reads by userId must still
    # go by the user field. Both in one page, and one anonymous-only event
    # alone in a page of its own type.
    same = "visitor-or-user-5e1"
    service.events.track_many(
        [
            {"type": "login", "anonymousId": same, "messageId": "anon-login"},
            {"type": "login", "userId": same, "messageId": "user-login"},
            {"type": "click", "anonymousId": same, "messageId": "anon-click"},
        ]
    )
    service.processor.drain("test-consumer")
    wait_until(lambda: stored_events(data) == 3, 30, 0.05, "the events to be stored")
    index = data.zrange(keyspace.user_index(service.codec.user_hash(same)), 0, -1)
    assert any(member.startswith(b"click:") for member in index)  # really indexed there

    mine = client.get(f"/v1/events?userId={same}", headers=keys["read"]).json["events"]
    assert [e["messageId"] for e in mine] == ["user-login"]
    assert client.get(f"/v1/events?userId={same}&type=click", headers=keys["read"]).json["events"] == []
    assert service.store.count(["click", "login"], user_hash=service.codec.user_hash(same)) == 1
    secret, _ = service.access.create("read", user_id=same)
    scoped = client.get("/v1/events", headers={"Authorization": f"Bearer {secret}"}).json["events"]
    assert [e["messageId"] for e in scoped] == ["user-login"]
    everyone = client.get("/v1/events", headers=keys["read"]).json["events"]
    assert sorted(e["messageId"] for e in everyone) == ["anon-click", "anon-login", "user-login"]


def test_sent_at_corrects_client_clock(client, keys, service) -> None:

    # The client's clock runs one hour fast; it sent the event 10 s after it happened.
    client_now = int(time.time() * 1000) + 3_600_000
    sent_at, happened = format_time_ms(client_now), format_time_ms(client_now - 10_000)
    response = client.post(
        "/v1/events",
        headers=keys["ingest"],
        json={"sentAt": sent_at, "batch": [{"type": "click", "userId": "u", "timestamp": happened}]},
    )
    assert response.status_code == 202
    service.processor.drain("test-consumer")
    [event] = client.get("/v1/events", headers=keys["read"]).json["events"]
    assert event["originalTimestamp"] == happened and event["sentAt"] == sent_at
    lag = parse_time_ms(event["receivedAt"]) - parse_time_ms(event["timestamp"])
    assert abs(lag - 10_000) <= 5  # within rounding of the server's receive time


def test_health_probes(client) -> None:
    assert client.get("/healthz").status_code == 200
    assert client.get("/readyz").status_code == 200
