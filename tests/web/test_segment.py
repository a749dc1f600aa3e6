"""Segment-compatible ingestion through the real app, Redis and worker."""

from __future__ import annotations

import base64
import gzip
import time
from typing import Any

import orjson
import pytest
from segment.analytics.request import parse_retry_after

from analytics.errors import RateLimited
from analytics.events.segment import SEGMENT_TYPES
from testkit import records_in, stored_events, wait_until
from web import create_app
from web.segment import _segment_error

DLQ = "analytics:dlq:segment"


def secret_of(headers: dict[str, str]) -> str:
    return headers["Authorization"].split()[1]


def basic(headers: dict[str, str]) -> dict[str, str]:
    token = base64.b64encode(f"{secret_of(headers)}:".encode()).decode()
    return {"Authorization": f"Basic {token}"}


def stored(data: Any) -> int:
    return stored_events(data)


def records(data: Any, count: int) -> list[dict[str, Any]]:
    """The stored records, once the worker has stored ``count`` of them."""
    wait_until(lambda: stored(data) >= count, 20, message=f"the worker to store {count} events")
    found = []
    for key in data.scan_iter("analytics:events:processed:*"):
        found += records_in(data, key.decode().rpartition(":")[2])
    return sorted(found, key=lambda r: (r["rt"], r["m"]))


def post(client: Any, path: str, body: Any, headers: dict[str, str] | None = None, **kwargs: Any) -> Any:
    raw = body if isinstance(body, bytes) else orjson.dumps(body)
    return client.post(path, data=raw, headers=headers or {}, **kwargs)


def test_batch_is_accepted_with_segment_answer_and_stored(client, keys, data, worker) -> None:
    batch = [
        {
            "type": "track",
            "event": "Signed Up",
            "userId": "u-1",
            "messageId": "s-1",
            "properties": {"plan": "pro", "amount": 12},
        },
        {"type": "identify", "userId": "u-1", "messageId": "s-2", "traits": {"email": "a@example.org", "plan": "pro"}},
        {"type": "page", "anonymousId": "an-1", "name": "Home", "messageId": "s-3", "properties": {"path": "/"}},
        {"type": "screen", "userId": "u-1", "name": "Main", "messageId": "s-4"},
        {"type": "group", "userId": "u-1", "groupId": "g-1", "messageId": "s-5"},
        {"type": "alias", "userId": "u-2", "previousId": "u-1", "messageId": "s-6"},
    ]
    response = post(
        client,
        "/v1/batch",
        {"batch": batch, "context": {"app": {"build": "7"}}},
        basic(keys["ingest"]),
        content_type="text/plain",
    )
    assert response.status_code == 200 and response.json == {"success": True}
    wait_until(lambda: stored(data) == 6, 15, message="the worker to store 6 events")

    def one(event_type: str) -> dict[str, Any]:
        [event] = client.get(f"/v1/events?type={event_type}", headers=keys["read"]).json["events"]
        return event

    # An unregistered track name is no type: stored as custom, the name sealed.
    signed = one("custom")
    assert signed["metadata"]["event"] == "Signed Up"
    assert b"Signed Up" not in b"".join(data.hvals("analytics:events:processed:custom"))
    assert signed["userId"] == "u-1" and signed["properties"] == {"plan": "pro", "amount": 12}
    assert signed["context"] == {"app": {"build": "7"}}
    assert one("identify")["traits"] == {"email": "a@example.org", "plan": "pro"}
    assert one("page")["metadata"]["name"] == "Home" and one("page")["anonymousId"] == "an-1"
    assert one("group")["metadata"]["groupId"] == "g-1"
    assert one("alias")["metadata"]["previousId"] == "u-1"
    # previousId is a user id: sealed, like every PHI value, in the stored record.
    raw = b"".join(data.hvals("analytics:events:processed:alias"))
    assert b"u-1" not in raw and b"u-2" not in raw


def test_one_bad_message_is_dead_lettered_and_the_rest_accepted(client, keys, data) -> None:
    batch = [
        {"type": "track", "event": "click", "userId": "u"},
        {"type": "track", "userId": "u"},  # no event name
        {"type": "launch", "userId": "u"},  # no such call
        {"type": "identify"},  # no identity
        "not an object",
        {"type": "track", "event": "click", "userId": "u", "properties": {"x": "y" * 40_000}},
        {"type": "identify", "userId": "u", "timestamp": "not a time"},
    ]
    response = post(client, "/v1/b", {"batch": batch, "writeKey": secret_of(keys["ingest"])})
    assert response.status_code == 200 and response.json == {"success": True}
    assert data.xlen(DLQ) == 6 and stored(data) + len(data.keys("analytics:events:queue*")) >= 1
    reasons = sorted(e[1][b"reason"].decode() for e in data.xrange(DLQ))
    assert reasons == ["invalid_message"] * 5 + ["too_large"]
    for _, fields in data.xrange(DLQ):
        # Sealed whole, keyed by the user's hash: no value in clear, no secret at all.
        assert b"y" * 100 not in fields[b"sealed"] and b'"u"' not in fields[b"sealed"]
    opened = [orjson.loads(data_open(client, f[b"sealed"])) for _, f in data.xrange(DLQ)]
    assert all("writeKey" not in m for m in opened if isinstance(m, dict))


def data_open(client: Any, sealed: bytes) -> bytes:
    return client.application.extensions["analytics"].vault.open(sealed.decode())


@pytest.mark.parametrize(
    "path, call",
    [
        ("/v1/track", "track"),
        ("/v1/t", "track"),
        ("/v1/identify", "identify"),
        ("/v1/i", "identify"),
        ("/v1/page", "page"),
        ("/v1/p", "page"),
        ("/v1/screen", "screen"),
        ("/v1/s", "screen"),
        ("/v1/group", "group"),
        ("/v1/g", "group"),
        ("/v1/alias", "alias"),
        ("/v1/a", "alias"),
        ("/v1/import", "batch"),
        ("/v1/batch/", "batch"),
    ],
)
def test_every_path_takes_its_call(client, keys, data, worker, path, call) -> None:
    message = {"userId": "u", "event": "click", "groupId": "g", "previousId": "p", "messageId": f"id-{path}"}
    body = {"batch": [{**message, "type": "track"}]} if call == "batch" else message
    response = post(client, path, body, keys["ingest"])
    assert response.status_code == 200 and response.json == {"success": True}
    [record] = records(data, 1)
    assert record["t"] == ("click" if call in ("track", "batch") else call)


def test_auth_from_basic_bearer_or_write_key(client, keys) -> None:
    body = {"batch": [{"type": "track", "event": "click", "userId": "u"}]}
    assert post(client, "/v1/batch", body, basic(keys["ingest"])).status_code == 200
    assert post(client, "/v1/batch", body, keys["ingest"]).status_code == 200
    assert post(client, "/v1/batch", {**body, "writeKey": secret_of(keys["ingest"])}).status_code == 200
    assert post(client, "/v1/batch", body).status_code == 401
    bad = post(client, "/v1/batch", {**body, "writeKey": "ak_nope"})
    assert bad.status_code == 401 and bad.json["code"] == "unauthorized"
    assert post(client, "/v1/batch", body, {"Authorization": "Basic %%%"}).status_code == 401
    assert post(client, "/v1/track", body, basic(keys["read"])).status_code == 403


def test_limits_are_answered_as_segment_does(client, keys, service, data, worker) -> None:
    many = {"batch": [{"type": "track", "event": "click", "userId": "u"}] * 2501}
    response = post(client, "/v1/batch", many, keys["ingest"])
    assert response.status_code == 400 and response.json["success"] is False
    big = {"batch": [{"type": "track", "event": "click", "userId": "u", "properties": {"x": "y" * 30_000}}] * 18}
    response = post(client, "/v1/batch", big, keys["ingest"])
    assert response.status_code == 400 and response.json["code"] == "payload_too_large"
    bomb = gzip.compress(orjson.dumps(big))
    response = post(client, "/v1/batch", bomb, {**keys["ingest"], "Content-Encoding": "gzip"})
    assert response.status_code == 400
    single = {"event": "click", "userId": "u", "properties": {"x": "y" * 33_000}}
    assert post(client, "/v1/track", single, keys["ingest"]).status_code == 400
    assert post(client, "/v1/batch", b"{nope", keys["ingest"]).status_code == 400
    assert service.queue.length() == 0 and stored(data) == 0 and data.xlen(DLQ) == 0
    # 2,500 messages is within the limit.
    ok = {"batch": [{"type": "track", "event": "click", "userId": "u"}] * 2500}
    assert post(client, "/v1/batch", ok, keys["ingest"]).status_code == 200
    assert len(records(data, 2500)) == 2500


def test_never_a_redirect(client, keys) -> None:
    body = {"batch": [], "writeKey": secret_of(keys["ingest"])}
    for path in ("/v1/batch/", "//v1/batch", "/v1/t/", "/v1//t", "/v1/track//"):
        status = post(client, path, body).status_code
        assert not 300 <= status < 400, path
    response = client.get("/v1/batch")
    assert response.status_code == 405 and response.json["error"]["code"] == "method_not_allowed"


def test_sent_at_corrects_clock_skew_and_message_ids_dedupe(client, keys, data, worker) -> None:
    now = time.time()
    skewed = now + 3600  # the client's clock is an hour ahead
    iso = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(skewed)) + "Z"
    body = {
        "batch": [{"type": "track", "event": "click", "userId": "u", "messageId": "dup", "timestamp": iso}],
        "sentAt": iso,
    }
    for _ in range(2):
        assert post(client, "/v1/batch", body, keys["ingest"]).status_code == 200
    # The second copy is a duplicate: the worker drops it (and deletes its entry).
    wait_until(
        lambda: stored(data) == 1 and data.xlen("analytics:events:queue") == 0, 15, message="both copies processed"
    )
    [event] = client.get("/v1/events?type=click", headers=keys["read"]).json["events"]
    assert stored(data) == 1
    assert event["originalTimestamp"] == iso.replace("Z", ".000Z")
    corrected = time.mktime(time.strptime(event["timestamp"][:19], "%Y-%m-%dT%H:%M:%S")) - time.timezone
    assert abs(corrected - now) < 30


@pytest.mark.parametrize("policy", ["register", "custom", "reject"])
def test_unknown_track_names_follow_the_policy(env, data, worker, policy) -> None:

    app = create_app(
        {**env, "TESTING": True, "ANALYTICS_SEGMENT_UNKNOWN_EVENTS": policy, "ANALYTICS_SEGMENT_MAX_TYPES": "2"}
    )
    service = app.extensions["analytics"]
    headers = {"Authorization": f"Bearer {service.access.create('ingest')[0]}"}
    names = ["Plan Chosen", "Cart Viewed", "Third One", "Bad (name)"]
    body = {"batch": [{"type": "track", "event": n, "userId": "u"} for n in names]}
    assert post(app.test_client(), "/v1/batch", body, headers).status_code == 200
    found = records(data, 0 if policy == "reject" else 4)
    types = sorted(r["t"] for r in found)
    if policy == "register":
        assert types == ["Cart Viewed", "Plan Chosen", "custom", "custom"]
        names = [service.codec.decode(r, reveal_phi=True)["metadata"]["event"] for r in found if r["t"] == "custom"]
        assert sorted(names) == ["Bad (name)", "Third One"]
        assert all("md" not in r for r in found)  # the names are sealed
        assert service.registry.get("Plan Chosen") is not None
        assert data.scard(SEGMENT_TYPES) == 2
    elif policy == "custom":
        assert types == ["custom"] * 4 and service.registry.get("Plan Chosen") is None
    else:
        assert types == [] and data.xlen(DLQ) == 4
        reasons = {f[b"reason"] for _, f in data.xrange(DLQ)}
        assert reasons == {b"unknown_event_type"}


def test_service_unavailable_is_503_so_sdks_retry(make_stack) -> None:
    stack = make_stack()
    app = stack.app()
    service = app.extensions["analytics"]
    headers = {"Authorization": f"Bearer {service.access.create('ingest')[0]}"}
    stack.redis.stop()
    response = post(
        app.test_client(), "/v1/batch", {"batch": [{"type": "track", "event": "click", "userId": "u"}]}, headers
    )
    assert response.status_code == 503 and response.json["success"] is False


@pytest.mark.parametrize("retry_after, header", [(0.2, "1"), (7, "7"), (1000, "300")])
def test_rate_limited_answers_carry_an_integer_retry_after_the_sdk_honours(app, retry_after, header) -> None:
    """Whatever limiter raises RateLimited on these paths, the Segment answer
    is a 429 whose Retry-After the Python SDK accepts (an integer <= 300)."""

    with app.test_request_context("/v1/batch", method="POST"):
        response = _segment_error(RateLimited("too many requests", retry_after))
    assert response.status_code == 429 and response.headers["Retry-After"] == header
    assert parse_retry_after(response) == int(header)
    assert response.get_json()["code"] == "rate_limited"


@pytest.mark.parametrize("body", [{"batch": "no"}, [1, 2], {"nobatch": []}, "text"])
def test_malformed_batches_are_400(client, keys, body) -> None:
    response = post(client, "/v1/batch", body, keys["ingest"])
    assert response.status_code == 400 and response.json["success"] is False


def test_a_single_call_uses_its_own_sent_at(client, keys, data, worker) -> None:
    # analytics.js sends sentAt in each message of a single call.
    body = {"userId": "u", "event": "click", "timestamp": "2026-11-28T10:00:00Z", "sentAt": "2026-11-28T10:00:01Z"}
    assert post(client, "/v1/t", body, keys["ingest"]).status_code == 200
    [record] = records(data, 1)
    assert record["ot"] == 1_795_860_000_000 and record["sa"] == 1_795_860_001_000
    # Corrected by (receivedAt - sentAt), capped; the raw times are kept.
    skew = max(-86_400_000, min(86_400_000, record["rt"] - record["sa"]))
    assert record["ts"] == record["ot"] + skew
