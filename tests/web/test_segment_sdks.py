"""The real Segment and RudderStack Python SDKs, unchanged, against a live
gunicorn web process; the session worker stores what they send."""

from __future__ import annotations

import importlib
import logging
from typing import Any

import pytest
import requests
from segment.analytics import Client
from segment.analytics.request import APIError

from testkit import stored_events, wait_until


def events(url: str, headers: dict[str, str], **query: str) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    params: dict[str, str] = {**query, "limit": "1000"}
    while True:
        response = requests.get(f"{url}/v1/events", params=params, headers=headers, timeout=10)
        assert response.status_code == 200, response.text
        body = response.json()
        found += body["events"]
        if not body["next"]:
            return found
        params["cursor"] = body["next"]


def stored(data: Any) -> int:
    return stored_events(data)


def exercise(client: Any, errors: list[Any], name: str) -> int:
    """The calls an app makes; returns how many messages were sent."""
    for i in range(25):
        client.track(
            user_id=f"user-{i % 3}",
            event=name,
            properties={"order": i, "plan": "pro" if i % 2 else "free", "email": f"p{i}@example.org"},
        )
    client.identify(user_id="user-0", traits={"plan": "pro", "email": "p0@example.org"})
    client.page(user_id="user-0", category="Docs", name="Getting started", properties={"path": "/docs"})
    client.screen(user_id="user-1", name="Home")
    client.group(user_id="user-1", group_id="clinic-9", traits={"size": 12})
    client.alias(previous_id="anon-7", user_id="user-2")
    client.flush()
    assert errors == []
    return 30


def check_stored(url: str, headers: dict[str, str], data: Any, sent: int, name: str) -> None:
    wait_until(lambda: stored(data) == sent, 30, message=f"the worker to store {sent} events")
    orders = events(url, headers, type=name)
    assert sorted(e["properties"]["order"] for e in orders) == list(range(25))
    by_order = {e["properties"]["order"]: e for e in orders}
    assert by_order[3]["userId"] == "user-0" and by_order[3]["properties"]["plan"] == "pro"
    assert by_order[3]["properties"]["email"] == "p3@example.org"  # PHI, decrypted for readers
    [identify] = events(url, headers, type="identify")
    assert identify["traits"] == {"plan": "pro", "email": "p0@example.org"}
    [page] = events(url, headers, type="page")
    assert page["properties"]["path"] == "/docs" and page["metadata"]["category"] == "Docs"
    [group] = events(url, headers, type="group")
    assert group["metadata"]["groupId"] == "clinic-9"
    [alias] = events(url, headers, type="alias")
    assert alias["metadata"]["previousId"] == "anon-7" and alias["userId"] == "user-2"
    # sentAt came with every batch: the raw client times are kept.
    assert "sentAt" in identify and "originalTimestamp" in identify
    assert len(events(url, headers, userId="user-1")) == 8 + 2


@pytest.mark.parametrize("use_gzip", [False, True], ids=["plain", "gzip"])
@pytest.mark.parametrize(
    "module, event_name",
    [
        ("segment.analytics", "Order Completed"),  # segment-analytics-python
        ("rudderstack.analytics", "Order Placed"),  # rudder-sdk-python
    ],
    ids=["segment", "rudderstack"],
)
def test_python_sdk(web_server, worker, keys, data, use_gzip, module, event_name) -> None:
    client_class = importlib.import_module(module).Client
    # A new type name per test, registered by an admin first (an unregistered
    # track name would be stored as "custom"); the data (with the registry)
    # is flushed between tests.
    name = f"{event_name} {use_gzip}"
    registered = requests.post(f"{web_server}/v1/event-types", json={"name": name}, headers=keys["admin"], timeout=10)
    assert registered.status_code == 201, registered.text
    errors: list[Any] = []
    write_key = keys["ingest"]["Authorization"].split()[1]
    client = client_class(
        write_key,
        host=web_server,
        gzip=use_gzip,
        upload_size=10,
        on_error=lambda error, batch: errors.append(error),
        max_retries=1,
    )
    try:
        sent = exercise(client, errors, name)
    finally:
        client.shutdown()
    check_stored(web_server, keys["read"], data, sent, name)


def test_sdk_reports_a_bad_write_key(web_server, caplog) -> None:

    client = Client("ak_not_a_key", host=web_server, sync_mode=True, max_retries=0)
    with caplog.at_level(logging.CRITICAL, logger="segment"), pytest.raises(APIError) as info:
        client.track(user_id="u", event="click")
    assert info.value.status == 401 and info.value.code == "unauthorized"
