"""Event types declare which of their fields stay clear: POST /v1/event-types
(admin, audited), GET /v1/event-types, and what the store then holds."""

from __future__ import annotations

import uuid

from testkit import records_in, stored_events, wait_until

TAG = uuid.uuid4().hex[:8]


def test_a_type_declares_clear_fields_audited_and_listed(client, keys, service) -> None:
    body = {"name": "checkout", "priority": "high", "clear": ["properties.plan", "context.campaign.source"]}
    response = client.post("/v1/event-types", headers=keys["admin"], json=body)
    assert response.status_code == 201, response.json
    assert response.json["clear"] == ["properties.plan", "context.campaign.source"]
    listed = {t["name"]: t for t in client.get("/v1/event-types", headers=keys["read"]).json["eventTypes"]}
    assert listed["checkout"]["clear"] == ["properties.plan", "context.campaign.source"]
    assert listed["click"]["clear"] == []
    builtin = client.get("/v1/event-types", headers=keys["read"]).json["builtinClear"]
    assert "context.library.name" in builtin and "context.userAgent" not in builtin
    [entry] = [e for e in service.audit.entries("-", 1000) if e["action"] == "event_type.register"]
    assert entry["name"] == "checkout" and entry["clear"] == ["properties.plan", "context.campaign.source"]
    # Registering again replaces the settings.
    again = client.post("/v1/event-types", headers=keys["admin"], json={"name": "checkout", "clear": []})
    assert again.status_code == 201 and service.registry.get("checkout").clear == ()


def test_clear_paths_are_checked(client, keys) -> None:
    bad = [
        ["plan"],  # no free object
        ["userId.x"],
        ["properties"],  # a whole object: name the fields
        ["properties.a.b.c.d.e.f.g.h"],
        [f"properties.{TAG}@example.org"],
        ["properties.555-201-0064"],
    ]
    for paths in bad:
        response = client.post("/v1/event-types", headers=keys["admin"], json={"name": "x1", "clear": paths})
        assert response.status_code == 400, paths
        assert paths[0] in response.json["error"]["details"]["clear"] or "clear" in response.json["error"]["details"]
        assert TAG not in response.text
    # PHI names (normalized) are always sealed: they cannot be declared.
    for path in ("properties.firstName", "traits.e-mail", "properties.contact.PHONE_NUMBER", "context.ip"):
        response = client.post("/v1/event-types", headers=keys["admin"], json={"name": "x1", "clear": [path]})
        assert response.status_code == 400 and "PHI" in str(response.json["error"]["details"]["clear"][path])
    assert client.post("/v1/event-types", headers=keys["read"], json={"name": "x1"}).status_code == 403
    # A type name that looks like an identifier is refused, not echoed.
    response = client.post("/v1/event-types", headers=keys["admin"], json={"name": "Called 555-201-0064"})
    assert response.status_code == 400 and "555-201-0064" not in response.text


def test_declared_fields_stay_clear_the_rest_is_sealed(client, keys, service, data, worker) -> None:
    clear = ["properties.plan", "properties.step", "context.campaign"]
    assert (
        client.post("/v1/event-types", headers=keys["admin"], json={"name": "signup", "clear": clear}).status_code
        == 201
    )
    event = {
        "type": "signup",
        "userId": f"u-{TAG}",
        "properties": {"plan": f"pro-{TAG}", "step": 2, "note": f"private-{TAG}", "email": f"{TAG}@example.org"},
        "context": {
            "campaign": {"source": f"news-{TAG}", "phone": f"ph-{TAG}", "medium": "call 555-201-0064"},
            "page": {"path": f"/p/{TAG}"},
        },
    }
    assert client.post("/v1/events", headers=keys["ingest"], json=event).status_code == 202
    wait_until(lambda: stored_events(data) == 1, 15, message="the event stored")
    [record] = records_in(data, "signup")
    assert record["pr"] == {"plan": f"pro-{TAG}", "step": 2}
    # Declared, but a PHI name (phone) and an identifier-shaped value (medium) are sealed anyway.
    assert record["cx"] == {"campaign": {"source": f"news-{TAG}"}}
    raw = b"".join(data.hvals("analytics:events:processed:signup"))
    for secret in (f"private-{TAG}", f"{TAG}@example.org", f"ph-{TAG}", "555-201-0064", f"/p/{TAG}"):
        assert secret.encode() not in raw
    # Readers with PHI access get everything back; clear fields filter.
    [got] = client.get(f"/v1/events?type=signup&properties.plan=pro-{TAG}", headers=keys["read"]).json["events"]
    assert got["properties"]["note"] == f"private-{TAG}" and got["context"]["campaign"]["medium"] == "call 555-201-0064"
    refused = client.get("/v1/events?type=signup&properties.note=x", headers=keys["read"])
    assert refused.status_code == 400 and "properties.note" in refused.json["error"]["details"]
    screened = client.get("/v1/stats", headers=keys["admin"]).json["phi_screened"]
    assert screened >= 1
    assert f"analytics_phi_screened {float(screened)}" in client.get("/metrics").get_data(as_text=True)
