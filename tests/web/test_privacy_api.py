"""Audit log (reads, keys, auth failures, tamper evidence) and erasure,
through the real app, Redis and the session's Celery worker."""

from __future__ import annotations

import time
from typing import Any

import orjson
import pytest
from click.testing import CliRunner

from analytics import keyspace
from cli.main import main as cli
from testkit import pages_indexed, records_in, stored_events, wait_until

USER = "patient-audit-7f3c9a"
OTHER = "patient-other-19d2"


def bearer(secret: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"}


def audit(service: Any, action: str | None = None) -> list[dict[str, Any]]:
    entries, _ = service.auditor.page(None, 1000)
    return [e for e in entries if action is None or e["action"] == action]


def raw_audit(data: Any) -> bytes:
    return b"".join(b"".join(fields.values()) for _, fields in data.xrange(keyspace.AUDIT))


def ingest(client: Any, keys: dict[str, Any], data: Any, events: list[dict[str, Any]]) -> None:
    before = stored_events(data)
    response = client.post("/v1/events", headers=keys["ingest"], json={"batch": events})
    assert response.status_code == 202, response.json
    wait_until(lambda: stored_events(data) == before + len(events), 20, message="the worker to store the events")


def test_reads_are_audited_with_hashed_user_ids_and_sealed_address(client, keys, service, data, worker) -> None:
    ingest(client, keys, data, [{"type": "click", "userId": USER, "properties": {"n": i}} for i in range(3)])
    secret, key = service.access.create("read", name="auditor-test")
    response = client.get(
        f"/v1/events?type=click&userId={USER}&limit=10",
        headers=bearer(secret),
        environ_base={"REMOTE_ADDR": "10.1.2.3"},
    )
    assert response.status_code == 200 and len(response.json["events"]) == 3
    [entry] = [e for e in audit(service, "events.read") if e["actor"] == key.id]
    assert entry["count"] == 3 and entry["scoped"] is False
    assert entry["filters"] == {"type": "click", "limit": "10", "userIdHash": service.codec.user_hash(USER)}
    assert entry["remote"] == "10.1.2.3" and entry["remoteHash"]
    stored = raw_audit(data)
    assert USER.encode() not in stored and b"10.1.2.3" not in stored
    assert secret.encode() not in stored


def test_auth_failures_are_all_counted_but_audited_once_per_window(client, service) -> None:
    for _ in range(5):
        response = client.get("/v1/events", headers=bearer("ak_not-a-key-at-all"))
        assert response.status_code == 401 and response.json["error"]["code"] == "unauthorized"
    assert client.get("/v1/events", environ_base={"REMOTE_ADDR": "10.9.9.9"}).status_code == 401
    assert service.auditor.auth_failures() == 6
    entries = audit(service, "auth.failure")
    assert [(e["remote"], e["reason"], e["where"]) for e in entries] == [
        ("127.0.0.1", "invalid", "http"),
        ("10.9.9.9", "missing", "http"),
    ]
    # the WebSocket (and any other) face reports through the same helper
    service.access.audit_failure("websocket", "10.9.9.10")
    assert audit(service, "auth.failure")[-1]["where"] == "websocket"


def test_audit_endpoint_is_admin_only_and_paged(client, keys, service) -> None:
    for n in range(5):
        service.auditor.record("test.entry", "system", n=n)
    assert client.get("/v1/audit", headers=keys["read"]).status_code == 403
    seen, cursor = [], None
    while True:
        url = "/v1/audit?limit=2" + (f"&cursor={cursor}" if cursor else "")
        body = client.get(url, headers=keys["admin"]).json
        assert len(body["entries"]) <= 2
        seen += [e["n"] for e in body["entries"] if e["action"] == "test.entry"]
        cursor = body["next"]
        if cursor is None:
            break
    assert seen == [0, 1, 2, 3, 4]
    assert audit(service, "audit.read")
    bad = client.get("/v1/audit?cursor=nope", headers=keys["admin"])
    assert bad.status_code == 400


def run_cli(env: dict[str, str], *args: str) -> Any:
    return CliRunner().invoke(cli, list(args), env=env, catch_exceptions=False)


def test_cli_key_create_and_revoke_are_audited_and_revocation_is_immediate(client, env, service, data) -> None:
    created = run_cli(env, "keys", "create", "--role", "read", "--user", USER)
    assert created.exit_code == 0
    secret = created.output.strip().splitlines()[-1]
    assert client.get("/v1/events", headers=bearer(secret)).status_code == 200
    [entry] = audit(service, "key.create")
    assert entry["actor"] == "cli" and entry["role"] == "read"
    assert entry["userHash"] == service.codec.user_hash(USER)
    revoked = run_cli(env, "keys", "revoke", entry["keyId"])
    assert revoked.exit_code == 0
    assert client.get("/v1/events", headers=bearer(secret)).status_code == 401
    [revoke] = audit(service, "key.revoke")
    assert revoke["actor"] == "cli" and revoke["keyId"] == entry["keyId"]
    stored = raw_audit(data)
    assert USER.encode() not in stored and secret.encode() not in stored


def _entries(data: Any) -> list[tuple[bytes, dict[bytes, bytes]]]:
    return data.xrange(keyspace.AUDIT)


def test_audit_verify_reports_where_the_chain_breaks(env, service, data) -> None:
    for n in range(6):
        service.auditor.record("test.entry", "system", n=n)
    ok = run_cli(env, "audit", "verify")
    assert ok.exit_code == 0 and "6 entries verified" in ok.output

    # Edit entry #3: rewrite the stream with the same ids (what someone with
    # Redis access could do), one field changed.
    entries = _entries(data)
    data.delete(keyspace.AUDIT)
    for n, (eid, fields) in enumerate(entries):
        if n == 2:
            record = orjson.loads(fields[b"data"])
            record["n"] = 99
            fields = {**fields, b"data": orjson.dumps(record, option=orjson.OPT_SORT_KEYS)}
        data.xadd(keyspace.AUDIT, fields, id=eid)
    edited = run_cli(env, "audit", "verify")
    assert edited.exit_code == 1
    assert f"entry #3 (id {entries[2][0].decode()})" in edited.output
    assert "altered" in edited.output

    # Put it back, then delete entry #4: the break is reported at the next one.
    data.delete(keyspace.AUDIT)
    for eid, fields in entries:
        data.xadd(keyspace.AUDIT, fields, id=eid)
    assert run_cli(env, "audit", "verify").exit_code == 0
    data.xdel(keyspace.AUDIT, entries[3][0])
    deleted = run_cli(env, "audit", "verify")
    assert deleted.exit_code == 1
    assert f"entry #4 (id {entries[4][0].decode()})" in deleted.output
    assert "missing" in deleted.output

    # Deleting the newest entry is caught by the chain head.
    data.delete(keyspace.AUDIT)
    for eid, fields in entries[:-1]:
        data.xadd(keyspace.AUDIT, fields, id=eid)
    tail = run_cli(env, "audit", "verify")
    assert tail.exit_code == 1 and "at the end are missing" in tail.output


def test_erase_endpoint_removes_every_trace(client, keys, service, data, worker) -> None:
    events = [
        {"type": t, "userId": u, "properties": {"email": f"{u}@example.org", "n": i}, "messageId": f"{u}-{i}"}
        for i, (t, u) in enumerate([("click", USER), ("login", USER), ("click", USER), ("click", OTHER)])
    ]
    ingest(client, keys, data, events)
    user_hash = service.codec.user_hash(USER)
    service.dead_letters.add_raw("segment", {"userId": USER}, "invalid_message", user_hash)
    service.dead_letters.add_raw("events", {"userId": OTHER}, "invalid_message", service.codec.user_hash(OTHER))
    scoped_secret, scoped = service.access.create("read", user_id=USER)

    assert client.post("/v1/erase", headers=keys["read"], json={"userId": USER}).status_code == 403
    assert client.post("/v1/erase", headers=keys["admin"], json={}).status_code == 400
    response = client.post("/v1/erase", headers=keys["admin"], json={"userId": USER})
    assert response.status_code == 200, response.json
    body = response.json
    assert body["records"] == 3 and body["deadLetters"] == 1
    assert body["keysRevoked"] == [scoped.id] and body["userHash"] == user_hash

    assert stored_events(data) == 1
    assert len(records_in(data, "click")) == 1 and records_in(data, "login") == []
    assert pages_indexed(data, "click") and pages_indexed(data, "login")
    assert data.zcard(keyspace.time_index("login")) == 0
    assert not data.exists(keyspace.user_index(user_hash))
    assert data.xlen("analytics:dlq:segment") == 0 and data.xlen("analytics:dlq:events") == 1
    assert client.get("/v1/events", headers=bearer(scoped_secret)).status_code == 401
    remaining = client.get("/v1/events", headers=keys["read"]).json["events"]
    assert [e["userId"] for e in remaining] == [OTHER]

    [entry] = audit(service, "user.erase")
    assert entry["userHash"] == user_hash and entry["records"] == 3
    assert USER.encode() not in raw_audit(data)
    # the same messageIds may be sent again (dedupe entries were erased too)
    ingest(client, keys, data, events[:1])


def test_erasure_takes_the_anonymous_events_linked_to_the_user(client, keys, service, data, worker) -> None:
    visitor, stranger = "anon-device-4b1e", "anon-stranger-90c2"
    before_login = [
        {"type": "page_view", "anonymousId": visitor, "messageId": f"pre-{i}", "properties": {"path": f"/p{i}"}}
        for i in range(3)
    ]
    ingest(
        client,
        keys,
        data,
        [
            *before_login,
            # logging in links the visitor's anonymous id to the user
            {"type": "login", "userId": USER, "anonymousId": visitor, "messageId": "link"},
            {"type": "click", "userId": USER, "messageId": "after"},
            {"type": "page_view", "userId": OTHER, "anonymousId": "anon-other-1", "messageId": "o-1"},
            {"type": "page_view", "anonymousId": stranger, "messageId": "s-1"},
        ],
    )
    # A Segment message of the visitor that fails validation (no event name),
    # and one of the stranger: dead-lettered under their anonymous hashes.
    response = client.post(
        "/v1/batch",
        headers=keys["ingest"],
        json={"batch": [{"type": "track", "anonymousId": visitor}, {"type": "track", "anonymousId": stranger}]},
    )
    assert response.status_code == 200 and data.xlen("analytics:dlq:segment") == 2
    visitor_hash = service.codec.user_hash(visitor)
    assert data.exists(keyspace.user_index(visitor_hash))

    response = client.post("/v1/erase", headers=keys["admin"], json={"userId": USER})
    assert response.status_code == 200, response.json
    assert response.json["records"] == 2 + 3 and response.json["deadLetters"] == 1

    remaining = client.get("/v1/events", headers=keys["read"]).json["events"]
    assert sorted(e["messageId"] for e in remaining) == ["o-1", "s-1"]
    # A client's messageId is sealed in the record (its keyed hash is the id).
    kept = records_in(data, "page_view")
    assert sorted(service.codec.decode(r, reveal_phi=True)["messageId"] for r in kept) == ["o-1", "s-1"]
    assert records_in(data, "login") == [] and records_in(data, "click") == []
    assert stored_events(data) == 2 and pages_indexed(data, "page_view")
    assert not data.exists(keyspace.user_index(visitor_hash))
    assert not data.exists(keyspace.erasure_links(service.codec.user_hash(USER)))
    assert data.hexists(keyspace.ERASED, visitor_hash)
    [(_, letter)] = data.xrange("analytics:dlq:segment")
    assert letter[b"user"] == service.codec.user_hash(stranger).encode()
    assert visitor.encode() not in raw_audit(data)
    # the dedupe marks went too: the visitor's messageIds sent again are new data
    time.sleep(0.01)  # after the tombstone (ms)
    ingest(client, keys, data, before_login[:1])
    again = client.get("/v1/events?type=page_view", headers=keys["read"]).json["events"]
    assert sorted(e["messageId"] for e in again) == ["o-1", "pre-0", "s-1"]


@pytest.mark.parametrize("bad", [{"userId": ""}, {"userId": 7}, {"user": "x"}, []])
def test_erase_rejects_bad_bodies(client, keys, bad) -> None:
    response = client.post("/v1/erase", headers=keys["admin"], json=bad)
    assert response.status_code == 400
