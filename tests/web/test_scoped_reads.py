"""Scope everywhere, minimum necessary and key expiry, through the real app,
Redis and the session's Celery worker: what a user-scoped key, a key
without PHI access and an expired key get on every read path, and the audit
entries of metric reads and refusals."""

from __future__ import annotations

import time
from typing import Any

import orjson

from analytics import keyspace
from analytics.privacy.phi import REDACTED
from testkit import stored_events, wait_until

USER = "patient-scope-4c1e"
OTHER = "patient-scope-other-88b0"
EMAIL = "scope.probe@example.org"


def bearer(secret: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"}


def audit(service: Any, action: str) -> list[dict[str, Any]]:
    entries, _ = service.auditor.page(None, 1000)
    return [e for e in entries if e["action"] == action]


def raw_audit(data: Any) -> bytes:
    return b"".join(b"".join(fields.values()) for _, fields in data.xrange(keyspace.AUDIT))


def queued(data: Any) -> int:
    return sum(int(data.xinfo_stream(lane)["entries-added"]) for lane in keyspace.EVENT_QUEUES if data.exists(lane))


def cohort_metric(client: Any, keys: dict[str, Any]) -> str:
    """``visits`` with one series per cohort (values as per-user as tags
    get), rolled up by the worker; returns the query range."""
    t0 = int(time.time()) // 60 * 60 - 120
    batch = [
        {"name": "visits", "value": 1, "tags": {"cohort": cohort, "route": "home"}, "timestamp": t0 + 5}
        for cohort in ("team-alpha", "team-bravo")
    ]
    response = client.post("/v1/metrics", headers=keys["ingest"], json={"batch": batch})
    assert response.status_code == 202 and response.json["accepted"] == 2, response.json
    span = f"start={t0}&end={t0 + 120}&bucket=60&agg=count"
    wait_until(
        lambda: len(client.get(f"/v1/metrics/visits?{span}&groupBy=cohort", headers=keys["read"]).json["series"]) == 2,
        20,
        0.1,
        "the worker to roll the samples up",
    )
    return span


def test_a_scoped_key_cannot_see_other_users_tag_values_through_metric_queries(
    client, keys, service, data, worker
) -> None:
    span = cohort_metric(client, keys)
    secret, key = service.access.create("read", user_id=USER)
    for probe in ("groupBy=user", "groupBy=cohort", "tags=user:" + OTHER, "tags=cohort:team-bravo"):
        refused = client.get(f"/v1/metrics/visits?{span}&{probe}", headers=bearer(secret))
        assert refused.status_code == 403, probe
        assert refused.json["error"]["code"] == "forbidden"
        assert b"team-" not in refused.data and OTHER.encode() not in refused.data
    # The aggregate over every series stays readable, without any tag value.
    merged = client.get(f"/v1/metrics/visits?{span}", headers=bearer(secret))
    assert merged.status_code == 200
    assert [s["tags"] for s in merged.json["series"]] == [{}]
    assert sum(v for _, v in merged.json["series"][0]["points"] if v) == 2
    assert b"team-" not in merged.data
    # An unscoped read key keeps grouping and filtering.
    grouped = client.get(f"/v1/metrics/visits?{span}&groupBy=cohort", headers=keys["read"]).json
    assert [s["tags"]["cohort"] for s in grouped["series"]] == ["team-alpha", "team-bravo"]

    denied = [e for e in audit(service, "access.denied") if e["actor"] == key.id]
    assert len(denied) == 4
    assert {(e["path"], e["required"]) for e in denied} == {("/v1/metrics/<path:name>", "unscoped read")}
    stored = raw_audit(data)
    assert OTHER.encode() not in stored and b"team-bravo" not in stored


def test_metric_reads_are_audited_with_tag_values_hashed(client, keys, service, data, worker) -> None:
    span = cohort_metric(client, keys)
    secret, key = service.access.create("read", name="metric-auditor")
    response = client.get(
        f"/v1/metrics/visits?{span}&tags=cohort:team-bravo&groupBy=route",
        headers=bearer(secret),
        environ_base={"REMOTE_ADDR": "10.4.5.6"},
    )
    assert response.status_code == 200 and len(response.json["series"]) == 1
    [entry] = [e for e in audit(service, "metrics.read") if e["actor"] == key.id]
    assert entry["metric"] == "visits" and entry["agg"] == "count" and entry["groupBy"] == "route"
    assert entry["count"] == 1 and entry["scoped"] is False and entry["remote"] == "10.4.5.6"
    assert entry["tagHashes"] == {"cohort": service.vault.pseudonym("team-bravo")}
    stored = raw_audit(data)
    assert b"team-bravo" not in stored and b"10.4.5.6" not in stored


def test_stats_are_refused_to_a_scoped_key_and_kept_for_an_unscoped_one(client, keys, service) -> None:
    secret, key = service.access.create("read", user_id=USER)
    refused = client.get("/v1/stats", headers=bearer(secret))
    assert refused.status_code == 403 and refused.json["error"]["code"] == "forbidden"
    assert "queue" not in refused.json
    assert client.get("/v1/stats", headers=keys["read"]).status_code == 200
    [entry] = [e for e in audit(service, "access.denied") if e["actor"] == key.id]
    assert entry["path"] == "/v1/stats" and entry["required"] == "unscoped read"


def test_a_scoped_key_sees_event_type_names_and_priorities_only(client, keys, service) -> None:
    secret, key = service.access.create("read", user_id=USER)
    full = client.get("/v1/event-types", headers=keys["read"]).json["eventTypes"]
    scoped = client.get("/v1/event-types", headers=bearer(secret)).json["eventTypes"]
    assert full and any(set(t) - {"name", "priority"} for t in full)
    assert scoped == [{"name": t["name"], "priority": t["priority"]} for t in full]
    [entry] = [e for e in audit(service, "eventTypes.read") if e["actor"] == key.id]
    assert entry["scoped"] is True and entry["count"] == len(full)


def test_refusals_are_audited_with_key_route_and_what_was_required(client, keys, service, data) -> None:
    secret, key = service.access.create("read", name="refused")
    before = queued(data)
    # The one-trip ingest path refuses a read key inside its script.
    posted = client.post("/v1/events", headers=bearer(secret), json={"type": "click", "userId": USER})
    assert posted.status_code == 403 and queued(data) == before
    assert client.get("/v1/audit", headers=bearer(secret)).status_code == 403
    assert client.post("/v1/erase", headers=bearer(secret), json={"userId": USER}).status_code == 403
    denied = [(e["path"], e["required"]) for e in audit(service, "access.denied") if e["actor"] == key.id]
    assert denied == [("/v1/events", "ingest"), ("/v1/audit", "admin"), ("/v1/erase", "admin")]
    stored = raw_audit(data)
    assert USER.encode() not in stored and secret.encode() not in stored


def test_a_key_without_phi_access_reads_events_with_sealed_values_redacted(client, keys, service, data, worker) -> None:
    before = stored_events(data)
    events = [
        {"type": "click", "userId": USER, "properties": {"email": EMAIL, "n": 1}},
        {"type": "click", "userId": OTHER, "properties": {"email": EMAIL, "n": 2}},
    ]
    assert client.post("/v1/events", headers=keys["ingest"], json={"batch": events}).status_code == 202
    wait_until(lambda: stored_events(data) == before + 2, 20, message="the worker to store the events")

    secret, key = service.access.create("read", phi=False)
    assert key.phi is False and key.reveal_phi is False
    redacted = client.get("/v1/events?type=click", headers=bearer(secret))
    assert redacted.status_code == 200 and len(redacted.json["events"]) == 2
    assert EMAIL.encode() not in redacted.data
    assert USER.encode() not in redacted.data and OTHER.encode() not in redacted.data
    for event in redacted.json["events"]:
        assert event["type"] == "click" and event["timestamp"] and event["id"]
        assert event["properties"]["email"] == REDACTED
    # The same data, read with a key that may see PHI.
    revealed = client.get("/v1/events?type=click", headers=keys["read"]).json["events"]
    assert {e["properties"]["email"] for e in revealed} == {EMAIL}
    [entry] = [e for e in audit(service, "events.read") if e["actor"] == key.id]
    assert entry["phi"] is False and entry["count"] == 2
    # Nor may it pick a person's events out by their id.
    lookup = client.get(f"/v1/events?userId={USER}", headers=bearer(secret))
    assert lookup.status_code == 403 and USER.encode() not in lookup.data
    [denied] = [e for e in audit(service, "access.denied") if e["actor"] == key.id]
    assert denied["path"] == "/v1/events" and denied["required"] == "phi"
    assert USER.encode() not in raw_audit(data)

    # A user-scoped key without PHI: its user only, redacted.
    scoped_secret, _ = service.access.create("read", user_id=USER, phi=False)
    scoped = client.get("/v1/events?type=click", headers=bearer(scoped_secret))
    assert len(scoped.json["events"]) == 1 and EMAIL.encode() not in scoped.data

    # A key record from before the flag existed keeps PHI access.
    old_secret, old = service.access.create("read", name="old-record")
    digest = data.hget(keyspace.API_KEY_IDS, old.id)
    record = orjson.loads(data.hget(keyspace.API_KEYS, digest))
    del record["phi"], record["expires"]
    data.hset(keyspace.API_KEYS, digest, orjson.dumps(record))
    legacy = client.get("/v1/events?type=click", headers=bearer(old_secret)).json["events"]
    assert {e["properties"]["email"] for e in legacy} == {EMAIL}


def test_an_expired_key_is_refused_on_the_one_trip_path_and_the_general_path(client, service, data) -> None:
    ingest, _ = service.access.create("ingest", expires=time.time() - 1)
    read, _ = service.access.create("read", expires=time.time() - 1)
    before = queued(data)
    # One trip (lua/admit_events.lua): refused, nothing queued.
    event = client.post("/v1/events", headers=bearer(ingest), json={"type": "click", "userId": USER})
    assert event.status_code == 401 and event.json["error"]["code"] == "unauthorized"
    # A metric with a series never seen takes the general path (key, then writes).
    metric = client.post(
        "/v1/metrics", headers=bearer(ingest), json={"name": "expiry.probe", "value": 1, "tags": {"run": "x1"}}
    )
    assert metric.status_code == 401
    assert queued(data) == before and not data.exists(keyspace.METRICS_QUEUE)
    # Reads look the key up through lua/lookup_key_take_token.lua.
    assert client.get("/v1/events", headers=bearer(read)).status_code == 401
    assert client.get("/v1/event-types", headers=bearer(read)).status_code == 401

    # Before its expiry a key works on both paths.
    live_ingest, _ = service.access.create("ingest", expires="1h")
    live_read, _ = service.access.create("read", expires="2030-01-01")
    assert (
        client.post("/v1/events", headers=bearer(live_ingest), json={"type": "click", "userId": USER}).status_code
        == 202
    )
    assert client.get("/v1/events", headers=bearer(live_read)).status_code == 200

    # A key that reaches its expiry is refused from then on.
    soon, key = service.access.create("read", expires=time.time() + 1.5)
    assert client.get("/v1/events", headers=bearer(soon)).status_code == 200
    time.sleep(max(0.0, key.expires - time.time()) + 1.1)
    assert client.get("/v1/events", headers=bearer(soon)).status_code == 401
