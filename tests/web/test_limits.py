"""Size limits and the per-key rate limit: clear JSON errors, never a 5xx."""

from __future__ import annotations

import gzip
from typing import Any

import orjson
import pytest

from analytics.events.schemas import MAX_DEPTH, MAX_KEYS
from testkit import wait_until
from web import create_app


def error_code(response: Any) -> str:
    return response.json["error"]["code"]


def test_body_larger_than_the_limit_is_413(client, keys) -> None:
    big = {"type": "click", "userId": "u", "properties": {"x": "a" * 600_000}}
    response = client.post(
        "/v1/events", headers=keys["ingest"], data=orjson.dumps(big), content_type="application/json"
    )
    assert response.status_code == 413 and error_code(response) == "payload_too_large"


def test_gzip_bomb_is_413(client, keys) -> None:
    bomb = gzip.compress(b'{"batch": [' + b" " * 5_000_000 + b"]}")
    response = client.post(
        "/v1/events", headers={**keys["ingest"], "Content-Encoding": "gzip"}, data=bomb, content_type="application/json"
    )
    assert response.status_code == 413 and error_code(response) == "payload_too_large"


def test_more_than_2500_events_in_a_batch_is_413(client, keys) -> None:
    batch = [{"type": "click", "anonymousId": "a"}] * 2501
    response = client.post("/v1/events", headers=keys["ingest"], json={"batch": batch})
    assert response.status_code == 413 and "2500" in response.json["error"]["message"]


def test_an_event_over_32_kb_is_rejected_alone(client, keys) -> None:
    small = {"type": "click", "anonymousId": "a"}
    large = {"type": "click", "anonymousId": "a", "properties": {"x": "a" * 33_000}}
    response = client.post("/v1/events", headers=keys["ingest"], json={"batch": [small, large]})
    assert response.status_code == 202
    assert response.json["accepted"] == 1
    assert "32768 bytes" in str(response.json["rejected"][0]["errors"])
    alone = client.post("/v1/events", headers=keys["ingest"], json=large)
    assert alone.status_code == 400 and error_code(alone) == "validation_error"


def test_the_event_size_limit_is_exact(client, keys) -> None:
    """32768 bytes of JSON (as orjson writes the event) pass and one more
    does not, alone or in a batch."""

    def of_size(size: int) -> dict[str, Any]:
        event = {"type": "click", "anonymousId": "a", "properties": {"x": ""}}
        event["properties"]["x"] = "a" * (size - len(orjson.dumps(event)))
        assert len(orjson.dumps(event)) == size
        return event

    exact, over = of_size(32_768), of_size(32_769)
    assert client.post("/v1/events", headers=keys["ingest"], json=exact).status_code == 202
    assert client.post("/v1/events", headers=keys["ingest"], json=over).status_code == 400
    response = client.post("/v1/events", headers=keys["ingest"], json={"batch": [exact, over, exact]})
    assert response.json["accepted"] == 2
    assert [r["index"] for r in response.json["rejected"]] == [1]
    small = of_size(1000)
    response = client.post("/v1/events", headers=keys["ingest"], json={"batch": [small] * 3})
    assert response.json["accepted"] == 3 and response.json["rejected"] == []


def nested(depth: int) -> dict[str, Any]:
    node: dict[str, Any] = {"leaf": 1}
    for _ in range(depth - 1):
        node = {"n": node}
    return node


@pytest.mark.parametrize(
    "properties, ok",
    [
        (nested(MAX_DEPTH), True),
        (nested(MAX_DEPTH + 1), False),
        ({f"k{i}": i for i in range(MAX_KEYS)}, True),
        ({f"k{i}": i for i in range(MAX_KEYS + 1)}, False),
        ({"list": list(range(MAX_KEYS + 1))}, False),
        ({"k" * 129: 1}, False),
    ],
)
def test_properties_depth_and_key_count(client, keys, properties, ok) -> None:
    response = client.post(
        "/v1/events", headers=keys["ingest"], json={"type": "click", "anonymousId": "a", "properties": properties}
    )
    assert response.status_code == (202 if ok else 400), response.json
    if not ok:
        assert "properties" in response.json["error"]["details"]


def test_rate_limit_answers_429_with_retry_after(env) -> None:

    app = create_app({**env, "TESTING": True, "ANALYTICS_RATE_LIMIT": "0.5", "ANALYTICS_RATE_BURST": "3"})
    client = app.test_client()
    service = app.extensions["analytics"]
    limited = {"Authorization": f"Bearer {service.access.create('read')[0]}"}
    other = {"Authorization": f"Bearer {service.access.create('read')[0]}"}
    statuses = [client.get("/v1/event-types", headers=limited).status_code for _ in range(4)]
    assert statuses == [200, 200, 200, 429]
    refused = client.get("/v1/event-types", headers=limited)
    assert refused.status_code == 429 and error_code(refused) == "rate_limited"
    retry_after = refused.headers["Retry-After"]
    assert retry_after.isdigit() and 1 <= int(retry_after) <= 300
    assert refused.json["error"]["details"]["retry_after"] == int(retry_after)
    # per key: another key is not affected
    assert client.get("/v1/event-types", headers=other).status_code == 200
    # the bucket refills (0.5 token/s: within a few seconds)
    wait_until(
        lambda: client.get("/v1/event-types", headers=limited).status_code == 200, 10, 0.5, "the bucket to refill"
    )


def test_retry_after_is_capped_at_300_seconds(env) -> None:

    app = create_app({**env, "TESTING": True, "ANALYTICS_RATE_LIMIT": "0.001", "ANALYTICS_RATE_BURST": "1"})
    client = app.test_client()
    headers = {"Authorization": f"Bearer {app.extensions['analytics'].access.create('read')[0]}"}
    assert client.get("/v1/event-types", headers=headers).status_code == 200
    refused = client.get("/v1/event-types", headers=headers)
    assert refused.status_code == 429 and refused.headers["Retry-After"] == "300"
