"""``/v1/metrics`` through the real app, Redis and the session's worker."""

from __future__ import annotations

import time
from typing import Any

import orjson
import pytest

from testkit import wait_until


def now_s() -> int:
    return int(time.time())


def test_samples_are_accepted_processed_and_queryable(client, keys, data, worker) -> None:
    t0 = now_s() // 60 * 60 - 120
    single = client.post(
        "/v1/metrics",
        headers=keys["ingest"],
        json={"name": "api.latency", "value": 41, "tags": {"route": "/login"}, "timestamp": t0 + 1},
    )
    assert single.status_code == 202
    assert single.json["accepted"] == 1 and single.json["rejected"] == [] and len(single.json["ids"]) == 1
    batch = [{"name": "api.latency", "value": v, "tags": {"route": "/login"}, "timestamp": t0 + 2} for v in (10, 20.5)]
    batch.append({"name": "api.latency", "value": 7, "tags": {"route": "/home"}, "timestamp": t0 + 61})
    response = client.post("/v1/metrics", headers=keys["ingest"], json={"batch": batch})
    assert response.status_code == 202 and response.json["accepted"] == 3

    url = f"/v1/metrics/api.latency?start={t0}&end={t0 + 120}&bucket=60&agg=count&groupBy=route"

    def answered() -> Any:
        body = client.get(url, headers=keys["read"]).json
        counts = [s["points"] for s in body["series"]]
        return body if counts == [[[t0, None], [t0 + 60, 1]], [[t0, 3], [t0 + 60, None]]] else None

    body = wait_until(answered, 20, 0.1, "the worker to roll the samples up")
    assert body["name"] == "api.latency"
    assert [s["tags"] for s in body["series"]] == [{"route": "/home"}, {"route": "/login"}]
    avg = client.get(
        f"/v1/metrics/api.latency?start={t0}&end={t0 + 60}&bucket=60&agg=avg&tags=route:/login", headers=keys["read"]
    ).json
    assert avg["series"] == [{"tags": {"route": "/login"}, "points": [[t0, pytest.approx(71.5 / 3)]]}]
    none = client.get(f"/v1/metrics/api.latency?start={t0}&end={t0 + 60}&tags=route:/nope", headers=keys["read"])
    assert none.status_code == 200 and none.json == {"name": "api.latency", "series": []}


def test_event_counts_are_queryable_as_a_metric(client, keys, worker) -> None:
    t0 = now_s() // 60 * 60 - 60
    batch = [{"type": "page_view", "userId": "u1", "timestamp": t0 + i} for i in range(12)]
    assert client.post("/v1/events", headers=keys["ingest"], json={"batch": batch}).status_code == 202
    url = f"/v1/metrics/events.page_view?agg=count&start={t0}&end={t0 + 60}&bucket=60"
    wait_until(
        lambda: client.get(url, headers=keys["read"]).json["series"][0]["points"] == [[t0, 12]], 20, 0.1, "event counts"
    )


SECRET = "jane.doe@example.org"


@pytest.mark.parametrize(
    "sample, field",
    [
        ({"name": "m", "value": True}, "value"),
        ({"name": "m", "value": "12"}, "value"),
        ({"name": "m", "value": None}, "value"),
        ({"name": "m", "value": 1e300}, "value"),
        ({"name": "m"}, "value"),
        ({"name": "m", "value": 1, "tags": {"Email": SECRET}}, "tags"),
        ({"name": "m", "value": 1, "tags": {"ssn": SECRET}}, "tags"),
        ({"name": "m", "value": 1, "tags": {"route": SECRET + " x"}}, "tags"),
        ({"name": "m", "value": 1, "tags": {"route": 5}}, "tags"),
        ({"name": "m", "value": 1, "tags": {f"k{i}": "v" for i in range(17)}}, "tags"),
        ({"name": "bad name", "value": 1}, "name"),
        ({"name": "events.page_view", "value": 1}, "name"),
        ({"name": "queue", "value": 1}, "name"),
        ({"name": "m", "value": 1, "timestamp": "yesterday"}, "timestamp"),
        ({"name": "m", "value": 1, "unit": "ms"}, "unit"),
    ],
)
def test_bad_samples_get_field_level_400_without_echoing_values(client, keys, sample, field) -> None:
    response = client.post("/v1/metrics", headers=keys["ingest"], json=sample)
    assert response.status_code == 400
    error = response.json["error"]
    assert error["code"] == "validation_error" and field in error["details"]
    assert SECRET not in response.get_data(as_text=True)


def test_nan_and_infinity_are_refused(client, keys) -> None:
    for literal in (b"NaN", b"Infinity", b"-Infinity", b"1e999"):
        response = client.post("/v1/metrics", headers=keys["ingest"], data=b'{"name": "m", "value": ' + literal + b"}")
        assert response.status_code == 400, literal


def test_batch_reports_rejections_by_index(client, keys) -> None:
    batch = [
        {"name": "m", "value": 1},
        {"name": "m", "value": "x"},
        {"name": "m", "value": 2, "tags": {"phone": SECRET}},
        "nope",
    ]
    response = client.post("/v1/metrics", headers=keys["ingest"], json={"batch": batch})
    assert response.status_code == 202 and response.json["accepted"] == 1
    rejected = {r["index"]: r["errors"] for r in response.json["rejected"]}
    assert set(rejected) == {1, 2, 3}
    assert rejected[2] == {"tags": {"phone": ["This tag key is a PHI field name: metric tags must not carry PHI."]}}
    assert SECRET not in orjson.dumps(response.json).decode()
    everything_bad = client.post("/v1/metrics", headers=keys["ingest"], json={"batch": batch[1:]})
    assert everything_bad.status_code == 400


def test_roles(client, keys) -> None:
    assert client.post("/v1/metrics", headers=keys["read"], json={"name": "m", "value": 1}).status_code == 403
    assert client.get("/v1/metrics/m", headers=keys["ingest"]).status_code == 403
    assert client.get("/v1/metrics/m").status_code == 401
    assert client.get("/v1/metrics/m?bucket=7", headers=keys["read"]).status_code == 400
