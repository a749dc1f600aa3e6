"""No PHI in clear anywhere: not at rest (every Redis key name and value in
every database, the AOF files), not in responses, not in logs."""

from __future__ import annotations

import base64
import json
import logging
import uuid
from pathlib import Path
from typing import Any

import pytest
import redis

from testkit import stored_events, wait_until

TAG = uuid.uuid4().hex[:10]
PHI = {
    "userId": f"patient-{TAG}",
    "anonymousId": f"anon-{TAG}",
    "email": f"jane.{TAG}@example.org",
    "phone": f"+1 555-{TAG[:3]}-7731".replace("a", "1")
    .replace("b", "2")
    .replace("c", "3")
    .replace("d", "4")
    .replace("e", "5")
    .replace("f", "6"),
    "ssn": "078-05-1120",
    "name": f"Jane {TAG} Doe",
    "ip": "203.0.113.77",
    "dob": f"1961-02-03-{TAG}",
}
CLEAR_MARKER = f"public-{TAG}"  # not PHI: must be stored in clear (sanity check of the scan)


def variants(value: str) -> list[bytes]:
    """``value`` as bytes, and as it appears inside base64 text at any of the
    three alignments (Celery/kombu bodies are base64)."""
    raw = value.encode()
    out = [raw]
    for pad in range(3):
        encoded = base64.b64encode(b"x" * pad + raw)
        out.append(encoded[4 if pad else 0 : -4])
    return [v for v in out if len(v) >= 8]


def find_phi(blob: bytes) -> list[str]:
    return [name for name, value in PHI.items() if any(v in blob for v in variants(value))]


def planted_events() -> list[dict[str, Any]]:
    return [
        {
            "type": "page_view",
            "userId": PHI["userId"],
            "messageId": f"m1-{TAG}",
            "properties": {
                "path": "/visit",
                "note": CLEAR_MARKER,
                "email": PHI["email"],
                "contact": {"Phone": PHI["phone"], "list": [{"DOB": PHI["dob"]}]},
            },
            "metadata": {"SSN": PHI["ssn"]},
        },
        {
            "type": "form_submit",
            "anonymousId": PHI["anonymousId"],
            "messageId": f"m2-{TAG}",
            "traits": {"name": PHI["name"]},
            "context": {"ip": PHI["ip"]},
        },
    ]


def dump_everything(client: Any) -> tuple[bytes, int]:
    """Every key name and value (DUMP and a typed read) of every database."""
    chunks: list[bytes] = []
    keys = 0
    for db in range(16):
        client.execute_command("SELECT", db)
        for key in client.scan_iter(count=500):
            keys += 1
            chunks.append(key)
            chunks.append(client.dump(key) or b"")
            kind = client.type(key).decode()
            if kind == "string":
                chunks.append(client.get(key) or b"")
            elif kind == "hash":
                chunks += [b for pair in client.hgetall(key).items() for b in pair]
            elif kind == "zset":
                chunks += client.zrange(key, 0, -1)
            elif kind in ("list",):
                chunks += client.lrange(key, 0, -1)
            elif kind == "set":
                chunks += list(client.smembers(key))
            elif kind == "stream":
                for _, fields in client.xrange(key):
                    chunks += [b for pair in fields.items() for b in pair]
    return b"\n".join(chunks), keys


def aof_bytes(directory: Path) -> bytes:
    files = [p for p in directory.rglob("*") if p.is_file() and "appendonly" in p.name]
    assert files, f"no AOF under {directory}"
    return b"".join(p.read_bytes() for p in files)


def test_planted_phi_is_nowhere_in_clear_at_rest(client, keys, service, data, worker, redis_server) -> None:
    raw = redis.Redis(host="127.0.0.1", port=redis_server.port, single_connection_client=True)
    # DUMP compresses long strings (LZF), which could hide a clear value from
    # the scan: turn compression off on this private server for the test.
    raw.config_set("rdbcompression", "no")
    try:
        # The marker is declared clear (and screened: it is no identifier).
        declared = {"name": "page_view", "clear": ["properties.note", "properties.path"]}
        assert client.post("/v1/event-types", headers=keys["admin"], json=declared).status_code == 201
        response = client.post("/v1/events", headers=keys["ingest"], json={"batch": planted_events()})
        assert response.status_code == 202 and response.json["accepted"] == 2
        # The Segment path too: an identify with traits, and a bad message
        # (no event name) that goes to the dead-letter stream.
        segment = client.post(
            "/v1/batch",
            headers=keys["ingest"],
            json={
                "batch": [
                    {
                        "type": "identify",
                        "userId": PHI["userId"],
                        "messageId": f"s1-{TAG}",
                        "traits": {"email": PHI["email"], "phone": PHI["phone"], "plan": CLEAR_MARKER},
                        "context": {"ip": PHI["ip"]},
                    },
                    {"type": "track", "userId": PHI["userId"], "properties": {"ssn": PHI["ssn"]}},
                ]
            },
        )
        assert segment.status_code == 200 and find_phi(segment.data) == []
        wait_until(lambda: stored_events(data) == 3, 20, message="events stored")
        assert data.xlen("analytics:dlq:segment") == 1
        service.dead_letters.add_raw(
            "events",
            {"userId": PHI["userId"], "email": PHI["email"]},
            "invalid_message",
            service.codec.user_hash(PHI["userId"]),
        )
        # reads (audited, filter by userId) return the PHI to the allowed key
        read = client.get(
            f"/v1/events?type=page_view&userId={PHI['userId']}",
            headers=keys["read"],
            environ_base={"REMOTE_ADDR": PHI["ip"]},
        )
        [event] = read.json["events"]
        assert event["properties"]["contact"]["Phone"] == PHI["phone"]
        assert event["metadata"]["SSN"] == PHI["ssn"] and event["userId"] == PHI["userId"]
        all_events = client.get("/v1/events", headers=keys["read"]).json["events"]
        assert {e["type"] for e in all_events} == {"page_view", "form_submit", "identify"}
        # a failed login from the same address (audited with it, sealed)
        client.get("/v1/events", headers={"Authorization": "Bearer wrong"}, environ_base={"REMOTE_ADDR": PHI["ip"]})

        blob, count = dump_everything(raw)
        assert count > 10 and CLEAR_MARKER.encode() in blob  # the scan does see clear text
        assert find_phi(blob) == []
        raw.execute_command("SELECT", 0)
        aof = aof_bytes(Path(redis_server.dir))
        assert CLEAR_MARKER.encode() in aof
        assert find_phi(aof) == []
    finally:
        raw.config_set("rdbcompression", "yes")
        raw.close()
    assert find_phi(Path(worker.log_path).read_bytes()) == []


BAD_INPUTS: list[tuple[str, str, Any]] = [
    ("post", "/v1/events", {"type": PHI["email"], "userId": PHI["userId"]}),
    ("post", "/v1/events", {"type": "click", "userId": PHI["userId"], PHI["email"]: PHI["ssn"]}),
    ("post", "/v1/events", {"type": "click", "userId": {"email": PHI["email"]}}),
    ("post", "/v1/events", {"type": "click", "userId": PHI["userId"], "priority": PHI["ssn"]}),
    ("post", "/v1/events", {"type": "click", "userId": PHI["userId"], "timestamp": PHI["email"]}),
    ("post", "/v1/events", {"type": "click", "userId": PHI["userId"] * 40}),
    (
        "post",
        "/v1/events",
        {
            "type": "click",
            "anonymousId": PHI["userId"],
            "properties": {"a": {"b": {"c": {"d": {"e": {"f": {"g": {"h": {"email": PHI["email"]}}}}}}}}},
        },
    ),
    (
        "post",
        "/v1/events",
        {"type": "click", "anonymousId": "a", "properties": {"email": PHI["email"], "x": float("nan")}},
    ),
    (
        "post",
        "/v1/events",
        {
            "batch": [
                {"type": PHI["name"], "userId": PHI["userId"]},
                PHI["ssn"],
                {"userId": PHI["userId"], "ssn": PHI["ssn"]},
            ]
        },
    ),
    ("post", "/v1/events", {"batch": PHI["email"], "sentAt": PHI["phone"]}),
    ("post", "/v1/events", f'{{"type": "click", "userId": "{PHI["userId"]}", "email": '),
    ("post", "/v1/event-types", {"name": PHI["email"], "priority": PHI["ssn"]}),
    ("post", "/v1/event-types", {"name": PHI["email"]}),
    ("post", "/v1/event-types", {"name": PHI["ssn"]}),
    ("post", "/v1/event-types", {"name": "ok", "description": PHI["name"] * 30}),
    ("post", "/v1/erase", {"userId": PHI["userId"], "email": PHI["email"]}),
    ("get", f"/v1/events?userId={PHI['userId']}&start={PHI['email']}", None),
    ("get", f"/v1/events?type={PHI['email']}&userId={PHI['userId']}", None),
    ("get", f"/v1/events?cursor={PHI['ssn']}&{PHI['email']}=1", None),
    ("get", f"/v1/events?limit={PHI['phone']}", None),
    ("get", f"/v1/audit?cursor={PHI['email']}", None),
    ("post", "/v1/event-types", {"name": "ok", "clear": [f"properties.{PHI['email']}"]}),
    ("post", "/v1/event-types", {"name": "ok", "clear": ["properties.emailAddress", f"traits.{PHI['phone']}"]}),
    ("post", "/v1/metrics", {"name": "visits", "value": 1, "tags": {"who": PHI["email"]}}),
    ("post", "/v1/metrics", {"name": "visits", "value": 1, "tags": {"ssn_last4": "1120", "x": PHI["ssn"]}}),
    ("post", "/v1/metrics", {"name": "visits", "value": 1, "tags": {"born": PHI["dob"][:10]}}),
    ("get", f"/v1/events?type=click&properties.firstName={PHI['name']}", None),
    ("get", f"/v1/events?properties.plan={PHI['email']}&properties.note.x={PHI['ssn']}", None),
]


@pytest.mark.parametrize("method, url, body", BAD_INPUTS)
def test_bad_inputs_never_echo_phi_in_responses_or_logs(client, keys, caplog, method, url, body) -> None:
    kwargs: dict[str, Any] = {"headers": keys["admin"]}
    if isinstance(body, str):
        kwargs["data"] = body
    elif body is not None:
        # json, not orjson: NaN goes out as the bare token, as some clients send it
        kwargs["data"] = json.dumps(body)
    with caplog.at_level(logging.DEBUG):
        response = getattr(client, method)(url, **kwargs)
    assert 400 <= response.status_code < 500, response.data
    assert response.json["error"]["code"]
    assert find_phi(response.data) == [], response.data
    assert find_phi(caplog.text.encode()) == [], caplog.text


def test_unexpected_errors_log_no_exception_message(app, keys, caplog) -> None:
    def boom() -> None:
        raise KeyError(f"lookup failed for {PHI['email']} / {PHI['ssn']}")

    app.add_url_rule("/v1/test-boom", view_func=boom)
    with caplog.at_level(logging.DEBUG):
        response = app.test_client().get("/v1/test-boom")
    assert response.status_code == 500 and response.json["error"]["code"] == "internal_error"
    assert find_phi(response.data) == []
    assert "KeyError" in caplog.text and find_phi(caplog.text.encode()) == []


#: Rows 1, 2 and 8 of the default-deny probes: identifiers under everyday
#: field names, in free-form Segment fields, in a track name and a messageId.
PROBE = {
    "first": f"Janet{TAG}",
    "last": f"Doe{TAG}",
    "birthday": "1961-02-03",
    "user": f"jdoe{TAG}",
    "phone": "555-201-0064",
    "email": f"jane.{TAG}@example.org",
    "fullName": f"Janet {TAG} Doe",
    "patient": f"Patient {TAG}",
    "zip": f"zip{TAG}",
    "path": f"/patients/{TAG}/chart",
    "search": f"?mrn={TAG}",
    "referrer": f"https://portal.example.org/?patient={TAG}",
    "device": f"device-{TAG}",
    "ad": f"ad-{TAG}",
    "lat": "52.3731",
    "group": f"clinic-{TAG}",
    "category": f"Oncology-{TAG}",
    "title": f"Chart of {TAG}",
    "message": f"msg-jane.{TAG}@example.org",
    "trackPhone": "Called 555-201-0064",
    "screened": f"call 555-{TAG[:3]}-0199".replace("a", "1")
    .replace("b", "2")
    .replace("c", "3")
    .replace("d", "4")
    .replace("e", "5")
    .replace("f", "6"),
}


def probe_leaks(blob: bytes) -> list[str]:
    return [name for name, value in PROBE.items() if value.encode() in blob]


def test_default_deny_probes_leave_no_identifier_in_clear(client, keys, service, data, worker, redis_server) -> None:
    raw = redis.Redis(host="127.0.0.1", port=redis_server.port, single_connection_client=True)
    raw.config_set("rdbcompression", "no")
    try:
        declared = {"name": "form_submit", "clear": ["properties.plan", "properties.note"]}
        assert client.post("/v1/event-types", headers=keys["admin"], json=declared).status_code == 201
        row1 = {
            "firstName": PROBE["first"],
            "lastName": PROBE["last"],
            "birthday": PROBE["birthday"],
            "dateOfBirth": PROBE["birthday"],
            "username": PROBE["user"],
            "phoneNumber": PROBE["phone"],
            "emailAddress": PROBE["email"],
            "e-mail": PROBE["email"],
            "full_name": PROBE["fullName"],
            "patient_name": PROBE["patient"],
            "zip_code": PROBE["zip"],
        }
        context = {
            "page": {"path": PROBE["path"], "search": PROBE["search"], "referrer": PROBE["referrer"]},
            "device": {"id": PROBE["device"], "advertisingId": PROBE["ad"], "model": "Pixel 8"},
            "location": {"latitude": float(PROBE["lat"]), "longitude": 4.89},
            "library": {"name": "analytics-python", "version": "2.3.0"},
        }
        event = {
            "type": "form_submit",
            "userId": f"u-{TAG}",
            "messageId": PROBE["message"],
            "properties": {**row1, "plan": CLEAR_MARKER, "note": PROBE["screened"]},
            "traits": row1,
            "context": context,
        }
        assert client.post("/v1/events", headers=keys["ingest"], json=event).status_code == 202
        segment = client.post(
            "/v1/batch",
            headers=keys["ingest"],
            json={
                "batch": [
                    {"type": "identify", "userId": f"u-{TAG}", "traits": row1, "context": {"traits": row1}},
                    {"type": "track", "userId": f"u-{TAG}", "event": PROBE["trackPhone"], "context": context},
                    {"type": "group", "userId": f"u-{TAG}", "groupId": PROBE["group"], "traits": row1},
                    {
                        "type": "page",
                        "userId": f"u-{TAG}",
                        "name": PROBE["title"],
                        "category": PROBE["category"],
                        "properties": {"title": PROBE["title"], "url": PROBE["referrer"], "path": PROBE["path"]},
                        "messageId": PROBE["message"] + "-2",
                    },
                ]
            },
        )
        assert segment.status_code == 200 and probe_leaks(segment.data) == []
        wait_until(lambda: stored_events(data) == 5, 20, message="events stored")

        # Row 2: the track name made no type and no key name.
        types = client.get("/v1/event-types", headers=keys["read"]).json["eventTypes"]
        assert PROBE["trackPhone"] not in {t["name"] for t in types}
        # Filters: a sealed field is refused, naming the field and not the value.
        refused = client.get(f"/v1/events?type=form_submit&properties.firstName={PROBE['first']}", headers=keys["read"])
        assert refused.status_code == 400 and "properties.firstName" in refused.text
        assert PROBE["first"] not in refused.text
        # A clear field filters; the value asked for is hashed in the audit log.
        found = client.get(f"/v1/events?type=form_submit&properties.plan={CLEAR_MARKER}", headers=keys["read"]).json[
            "events"
        ]
        assert len(found) == 1 and found[0]["properties"]["firstName"] == PROBE["first"]
        assert found[0]["messageId"] == PROBE["message"]  # a PHI reader gets it back
        assert found[0]["properties"]["note"] == PROBE["screened"]  # screened: sealed, opened for the reader
        assert client.get(f"/v1/events?properties.plan={PROBE['email']}", headers=keys["read"]).status_code == 200
        [custom] = client.get("/v1/events?type=custom", headers=keys["read"]).json["events"]
        assert custom["metadata"]["event"] == PROBE["trackPhone"]
        # Without PHI access: structure, clear fields, no messageId of the client.
        no_phi = {"Authorization": f"Bearer {service.access.create('read', phi=False)[0]}"}
        hidden = client.get("/v1/events?type=form_submit", headers=no_phi)
        assert hidden.status_code == 200 and probe_leaks(hidden.data) == []
        [shown] = hidden.json["events"]
        assert shown["properties"]["plan"] == CLEAR_MARKER and shown["messageId"] == shown["id"]
        assert shown["context"]["library"] == {"name": "analytics-python", "version": "2.3.0"}
        stats = client.get("/v1/stats", headers=keys["admin"]).json
        assert stats["phi_screened"] >= 1

        blob, count = dump_everything(raw)
        assert count > 10 and CLEAR_MARKER.encode() in blob  # the scan does see clear text
        assert probe_leaks(blob) == []
        raw.execute_command("SELECT", 0)
        assert probe_leaks(aof_bytes(Path(redis_server.dir))) == []
    finally:
        raw.config_set("rdbcompression", "yes")
        raw.close()


@pytest.mark.parametrize(
    "sample, field",
    [
        ({"name": "visits", "value": 1, "tags": {"who": PHI["email"]}}, "who"),
        ({"name": "visits", "value": 1, "tags": {"ssn_last4": "1120"}}, "ssn_last4"),
        ({"name": "visits", "value": 1, "tags": {"patientEmail": "x"}}, "patientEmail"),
        ({"name": "visits", "value": 1, "tags": {"called": "555-201-0064"}}, "called"),
        ({"name": "visits", "value": 1, "tags": {"host": "203.0.113.77"}}, "host"),
        ({"name": "calls.5552010064", "value": 1}, "name"),
    ],
)
def test_metric_names_and_tag_values_are_screened(client, keys, data, sample, field) -> None:
    """Metric names and tag values become key names and clear labels: one
    that looks like an identifier is refused, naming the field only."""
    response = client.post("/v1/metrics", headers=keys["ingest"], json=sample)
    assert response.status_code == 400
    details = response.json["error"]["details"]
    assert field in (details.get("tags") or {}) or field in details
    for value in (*sample.get("tags", {}).values(), sample["name"]):
        if value not in ("x", "visits"):
            assert value not in response.text
    assert not any(b"5552010064" in key or b"example.org" in key for key in data.keys("analytics:metrics:*"))
