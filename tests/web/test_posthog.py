"""PostHog compatibility: the real PostHog Python SDK, unchanged, against a
live gunicorn web process (the test run's worker stores what it sends), and
the capture bodies posthog-js sends (gzip-js, base64 forms, bare arrays)."""

from __future__ import annotations

import base64
import gzip
import json
from typing import Any

import pytest
import redis
import requests
from posthog import Posthog

from analytics.events.posthog import to_segment, to_segment_batch
from testkit import stored_events, wait_until
from tests.web.test_phi_leaks import dump_everything, variants


def events(url: str, headers: dict[str, str], **query: str) -> list[dict[str, Any]]:
    response = requests.get(f"{url}/v1/events", params={**query, "limit": "1000"}, headers=headers, timeout=10)
    assert response.status_code == 200, response.text
    return list(response.json()["events"])


def token_of(keys: dict[str, Any]) -> str:
    return str(keys["ingest"]["Authorization"].split()[1])


def named(url: str, headers: dict[str, str], name: str) -> list[dict[str, Any]]:
    """Events of a track name the registry did not know: a type of their
    own, or ``custom`` with the name in ``metadata.event`` (by policy)."""
    response = requests.get(f"{url}/v1/events", params={"type": name, "limit": "1000"}, headers=headers, timeout=10)
    own = response.json()["events"] if response.status_code == 200 else []
    return own or [e for e in events(url, headers, type="custom") if e.get("metadata", {}).get("event") == name]


@pytest.mark.parametrize("use_gzip", [False, True], ids=["plain", "gzip"])
def test_python_sdk(web_server, worker, keys, data, redis_server, use_gzip) -> None:
    errors: list[Any] = []
    # A new name per test: the registry (flushed with the data) may still be
    # cached by the web process when the next test starts.
    name = f"Order Completed {use_gzip}"
    client = Posthog(
        token_of(keys),
        host=web_server,
        gzip=use_gzip,
        flush_at=10,
        max_retries=1,
        on_error=lambda error, batch: errors.append(error),
    )
    try:
        for i in range(20):
            client.capture(
                name,
                distinct_id=f"user-{i % 3}",
                properties={"order": i, "email": f"p{i}@example.org"},
            )
        client.capture(
            "$identify",
            distinct_id="user-0",
            properties={"$set": {"plan": "pro", "email": "p0@example.org"}, "$anon_distinct_id": "anon-7"},
        )
        client.set(distinct_id="user-1", properties={"plan": "free"})
        client.capture("$pageview", distinct_id="user-0", properties={"$current_url": "https://app.example.org/docs"})
        client.flush()
    finally:
        client.shutdown()
    assert errors == []
    sent = 23
    wait_until(lambda: stored_events(data) == sent, 30, message=f"the worker to store {sent} events")
    headers = keys["read"]
    orders = named(web_server, headers, name)
    assert sorted(e["properties"]["order"] for e in orders) == list(range(20))
    by_order = {e["properties"]["order"]: e for e in orders}
    assert by_order[4]["userId"] == "user-1" and by_order[4]["properties"]["email"] == "p4@example.org"
    assert by_order[4]["properties"]["$lib"] == "posthog-python"
    identifies = {e["userId"]: e for e in events(web_server, headers, type="identify")}
    assert identifies["user-0"]["traits"] == {"plan": "pro", "email": "p0@example.org"}
    assert identifies["user-0"]["anonymousId"] == "anon-7"
    assert identifies["user-1"]["traits"] == {"plan": "free"}
    [page] = events(web_server, headers, type="page_view")
    assert page["userId"] == "user-0" and page["properties"]["$current_url"] == "https://app.example.org/docs"
    assert all("token" not in e["properties"] for e in orders)
    # PHI rules apply unchanged: no email or user id in clear at rest, and
    # the project token (a secret) is nowhere at all.
    raw = redis.Redis(host="127.0.0.1", port=redis_server.port, single_connection_client=True)
    try:
        blob, _ = dump_everything(raw)
    finally:
        raw.close()
    secrets = [f"p{i}@example.org" for i in range(20)] + ["user-0", token_of(keys)]
    assert [s for s in secrets if any(v in blob for v in variants(s))] == []


def js_event(token: str, name: str, distinct_id: str, **properties: Any) -> dict[str, Any]:
    return {
        "event": name,
        "properties": {"token": token, "distinct_id": distinct_id, "$lib": "web", **properties},
        "timestamp": "2026-01-02T03:04:05.000Z",
        "uuid": "0190d3c4-1b2c-7d3e-8f40-123456789abc",
    }


def test_posthog_js_bodies(web_server, worker, keys, data) -> None:
    token = token_of(keys)
    anon = js_event(token, "$pageview", "0190-anon", **{"$user_state": "anonymous", "$pathname": "/a"})
    anon["uuid"] = "0190d3c4-1b2c-7d3e-8f40-000000000001"
    gz = requests.post(
        f"{web_server}/e/?compression=gzip-js&ip=0&_=1767322000000&ver=1.300.0",
        data=gzip.compress(json.dumps([anon]).encode()),
        headers={"Content-Type": "text/plain"},
        timeout=10,
    )
    assert gz.status_code == 200 and gz.json() == {"status": 1}
    b64 = base64.b64encode(json.dumps(js_event(token, "clicked", "user-9", button="buy")).encode()).decode()
    form = requests.post(f"{web_server}/i/v0/e/?compression=base64", data={"data": b64}, timeout=10)
    assert form.status_code == 200 and form.json() == {"status": 1}
    single = {"api_key": token, "event": "signed up", "distinct_id": "user-9", "properties": {}}
    assert requests.post(f"{web_server}/capture/", json=single, timeout=10).json() == {"status": 1}
    wait_until(lambda: stored_events(data) == 3, 30, message="the worker to store 3 events")
    [page] = events(web_server, keys["read"], type="page_view")
    assert page["anonymousId"] == "0190-anon" and page.get("userId") is None
    assert page["properties"]["$pathname"] == "/a" and "token" not in page["properties"]
    [clicked] = named(web_server, keys["read"], "clicked")
    assert clicked["userId"] == "user-9" and clicked["properties"]["button"] == "buy"


def test_posthog_errors_and_flags(web_server, keys) -> None:
    bad = requests.post(f"{web_server}/batch/", json={"api_key": "ak_not_a_key", "batch": []}, timeout=10)
    assert bad.status_code == 401 and bad.json()["type"] == "authentication_error" and bad.json()["detail"]
    missing = requests.post(f"{web_server}/e/", json={"event": "x", "properties": {}}, timeout=10)
    assert missing.status_code == 401
    garbled = requests.post(f"{web_server}/e/?compression=gzip-js", data=b"not gzip", timeout=10)
    assert garbled.status_code == 400 and "gzip" in garbled.json()["detail"]
    lz64 = requests.post(f"{web_server}/e/?compression=lz64", data=b"x", timeout=10)
    assert lz64.status_code == 400 and "lz64" in lz64.json()["detail"]
    too_new = requests.post(f"{web_server}/batch/", json={"api_key": token_of(keys), "batch": [{}] * 2501}, timeout=10)
    assert too_new.status_code == 413
    for path in ("/decide/?v=3", "/flags/?v=2&config=true"):
        answer = requests.post(f"{web_server}{path}", data=b"{}", timeout=10)
        assert answer.status_code == 200 and answer.json()["featureFlags"] == {}
        assert answer.json()["sessionRecording"] is False
    config = requests.get(f"{web_server}/array/{token_of(keys)}/config", timeout=10)
    assert config.status_code == 200 and config.json()["surveys"] is False


def test_mapping() -> None:
    token, [message] = to_segment_batch(
        {
            "api_key": "t",
            "batch": [{"event": "$set", "distinct_id": 42, "$set": {"a": 1}, "$set_once": {"a": 0, "b": 2}}],
        }
    )
    assert token == "t"
    assert message == {"type": "identify", "traits": {"a": 1, "b": 2}, "userId": 42, "properties": {}}
    personless = to_segment({"event": "x", "distinct_id": "d", "properties": {"$process_person_profile": False}})
    assert personless["anonymousId"] == "d" and "userId" not in personless
    _, [with_clock] = to_segment_batch([{"event": "x", "distinct_id": "d"}], "1767322000000")
    assert with_clock["sentAt"].startswith("2026-01-02T02:46:40")
    assert to_segment("not an event") == "not an event"
