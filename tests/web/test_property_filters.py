"""GET /v1/events filtered on properties, through the real app and worker."""

from __future__ import annotations

from typing import Any

import pytest

from testkit import stored_events as count_stored
from testkit import wait_until


@pytest.fixture
def stored_events(service, data, worker) -> None:
    # Values are sealed unless declared clear; only clear fields filter.
    service.registry.register("click", clear=("properties.plan", "properties.amount", "properties.trial"))
    events = [
        {
            "type": "click",
            "userId": "u-1",
            "messageId": f"m{i}",
            "properties": {
                "plan": plan,
                "amount": amount,
                **({"trial": True} if trial else {}),
                "email": "x@example.org",
            },
        }
        for i, (plan, amount, trial) in enumerate(
            [("pro", 5, False), ("pro", 15, True), ("free", 25, False), ("free", 35, True), ("team", 45, False)]
        )
    ]
    assert service.events.track_many(events).accepted == 5
    wait_until(lambda: count_stored(data) == 5, 15, message="5 stored events")


def ids(client: Any, headers: dict[str, str], query: str) -> list[str]:
    response = client.get(f"/v1/events?type=click&{query}", headers=headers)
    assert response.status_code == 200, response.json
    return sorted(e["messageId"] for e in response.json["events"])


@pytest.mark.usefixtures("stored_events")
@pytest.mark.parametrize(
    "query, expected",
    [
        ("properties.plan=pro", ["m0", "m1"]),
        ("properties.plan=ne:pro", ["m2", "m3", "m4"]),
        ("properties.amount=gte:15&properties.amount=lt:40", ["m1", "m2", "m3"]),
        ("properties.trial=exists:true", ["m1", "m3"]),
        ("properties.trial=exists:false&properties.plan=free", ["m2"]),
        ("properties.amount=gt:100", []),
    ],
)
def test_filters(client, keys, query, expected) -> None:
    assert ids(client, keys["read"], query) == expected


@pytest.mark.usefixtures("stored_events")
def test_filtered_pages_follow_the_cursor(client, keys) -> None:
    seen: list[str] = []
    url = "/v1/events?type=click&limit=1&properties.plan=ne:team"
    while url:
        body = client.get(url, headers=keys["read"]).json
        seen += [e["messageId"] for e in body["events"]]
        url = f"/v1/events?type=click&limit=1&properties.plan=ne:team&cursor={body['next']}" if body["next"] else ""
    assert sorted(seen) == ["m0", "m1", "m2", "m3"]


@pytest.mark.parametrize(
    "query, parameter",
    [
        ("properties.amount=gt:lots", "properties.amount"),
        ("properties.email=x@example.org", "properties.email"),
        ("properties.trial=exists:maybe", "properties.trial"),
    ],
)
def test_bad_filters_are_400_naming_the_parameter(client, keys, query, parameter) -> None:
    response = client.get(f"/v1/events?{query}", headers=keys["read"])
    assert response.status_code == 400
    error = response.json["error"]
    assert error["code"] == "validation_error" and parameter in error["details"]
    assert "x@example.org" not in response.get_data(as_text=True)
