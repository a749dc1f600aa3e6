"""``GET /v1/metrics/{name}/forecast`` through the real app, Redis and the
session's worker: a daily pattern ingested as history comes back in the
forecast, with ordered intervals; event counts, tag filters, user-scoped
keys, auditing and field-level 400s."""

from __future__ import annotations

import math
import time
from typing import Any

import pytest

from testkit import wait_until

BUCKET = 600
DAY = 86_400
#: Six days of 10-minute buckets: the forecaster trusts a daily pattern for
#: a day ahead once the history holds several days of it.
HISTORY = 6 * DAY // BUCKET
AMPLITUDE = 30.0


def bearer(secret: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"}


def daily(ts: float) -> float:
    """Peak at 06:00 UTC, trough at 18:00, a little deterministic noise."""
    return 100.0 + AMPLITUDE * math.sin(2 * math.pi * ts / DAY) + 2.0 * math.sin(ts / 977.0)


def ingest_history(client: Any, keys: dict[str, Any], name: str, tags: dict[str, str]) -> int:
    """One sample per bucket over the six days before the current bucket;
    returns the last bucket's start."""
    last = int(time.time()) // BUCKET * BUCKET - BUCKET
    stamps = [last - k * BUCKET for k in range(HISTORY)]
    samples = [{"name": name, "value": daily(t), "tags": tags, "timestamp": t + 1} for t in stamps]
    for i in range(0, len(samples), 500):
        chunk = samples[i : i + 500]
        response = client.post("/v1/metrics", headers=keys["ingest"], json={"batch": chunk})
        assert response.status_code == 202 and response.json["accepted"] == len(chunk), response.json
    return last


def rolled_up(client: Any, keys: dict[str, Any], name: str, last: int, count: int) -> None:
    url = f"/v1/metrics/{name}?start={last - (HISTORY - 1) * BUCKET}&end={last + BUCKET}&bucket={BUCKET}&agg=count"

    def done() -> bool:
        series = client.get(url, headers=keys["read"]).json["series"]
        return bool(series) and sum(v or 0 for _, v in series[0]["points"]) == count

    wait_until(done, 60, 0.2, "the worker to roll the history up")


def assert_ordered(points: list[list[Any]]) -> None:
    for _, point, lo80, hi80, lo95, hi95 in points:
        assert lo95 <= lo80 <= point <= hi80 <= hi95


def test_a_forecast_follows_the_daily_pattern_of_the_history(client, keys, worker) -> None:
    last = ingest_history(client, keys, "clinic.load", {"site": "north"})
    ingest_history(client, keys, "clinic.load", {"site": "south"})
    rolled_up(client, keys, "clinic.load", last, 2 * HISTORY)

    response = client.get(f"/v1/metrics/clinic.load/forecast?horizon=144&bucket={BUCKET}", headers=keys["read"])
    assert response.status_code == 200, response.json
    body = response.json
    assert {k: body[k] for k in ("name", "bucket", "agg")} == {"name": "clinic.load", "bucket": BUCKET, "agg": "avg"}
    [series] = body["series"]  # the two sites merged, as the metric query merges them
    assert series["tags"] == {} and "note" not in series
    points = series["points"]
    assert len(points) == 144 and all(len(p) == 6 for p in points)
    stamps = [p[0] for p in points]
    # From the bucket holding now on (the clock may have crossed one since).
    assert stamps[0] in (last + BUCKET, last + 2 * BUCKET)
    assert stamps == [stamps[0] + k * BUCKET for k in range(144)]
    assert_ordered(points)

    forecast = {t: p for t, p, *_ in points}
    peak = next(t for t in stamps if t % DAY == DAY // 4)  # 06:00
    trough = next(t for t in stamps if t % DAY == 3 * DAY // 4)  # 18:00
    assert forecast[peak] - forecast[trough] > AMPLITUDE
    assert abs(forecast[peak] - daily(peak)) < AMPLITUDE / 3
    assert abs(forecast[trough] - daily(trough)) < AMPLITUDE / 3
    # An interval holds what the pattern says for most of the day.
    inside = sum(lo95 <= daily(t) <= hi95 for t, _, _, _, lo95, hi95 in points)
    assert inside >= 0.8 * len(points)

    # Tag filters and groupBy: one series per site, the filter kept as tags.
    grouped = client.get(
        f"/v1/metrics/clinic.load/forecast?horizon=6&bucket={BUCKET}&groupBy=site", headers=keys["read"]
    ).json
    assert [s["tags"] for s in grouped["series"]] == [{"site": "north"}, {"site": "south"}]
    assert all(len(s["points"]) == 6 for s in grouped["series"])
    north = client.get(
        f"/v1/metrics/clinic.load/forecast?horizon=6&bucket={BUCKET}&tags=site:north", headers=keys["read"]
    ).json
    assert [s["tags"] for s in north["series"]] == [{"site": "north"}]
    assert_ordered(north["series"][0]["points"])
    nowhere = client.get("/v1/metrics/clinic.load/forecast?horizon=6&tags=site:west", headers=keys["read"])
    assert nowhere.status_code == 200 and nowhere.json["series"] == []


def test_event_counts_are_forecast_and_never_negative(client, keys, worker) -> None:
    bucket = 60
    last = int(time.time()) // bucket * bucket - bucket
    # 30 minutes of a login count alternating 2 and 6 per minute, and the
    # current minute too: should the clock reach the next one before the
    # forecast, the history then ends with a full minute, not an empty one.
    batch = [
        {"type": "login", "userId": f"u{k}-{j}", "timestamp": last - k * bucket + 1 + j}
        for k in range(-1, 30)
        for j in range(2 if k % 2 else 6)
    ]
    assert client.post("/v1/events", headers=keys["ingest"], json={"batch": batch}).status_code == 202
    url = f"/v1/metrics/events.login?agg=count&bucket={bucket}&start={last - 29 * bucket}&end={last + 2 * bucket}"
    wait_until(
        lambda: sum(v or 0 for _, v in client.get(url, headers=keys["read"]).json["series"][0]["points"]) == len(batch),
        30,
        0.2,
        "event counts",
    )
    response = client.get(
        f"/v1/metrics/events.login/forecast?horizon=4&bucket={bucket}&agg=count", headers=keys["read"]
    )
    assert response.status_code == 200, response.json
    [series] = response.json["series"]
    assert len(series["points"]) == 4
    assert_ordered(series["points"])
    assert all(lo95 >= 0 for *_, lo95, _ in series["points"])
    assert all(1 <= p <= 7 for _, p, *_ in series["points"])


def test_too_little_history_gives_a_note_not_an_error(client, keys, worker) -> None:
    t0 = int(time.time()) // 60 * 60 - 300
    batch = [{"name": "rare.metric", "value": v, "timestamp": t0 + 60 * v} for v in range(3)]
    assert client.post("/v1/metrics", headers=keys["ingest"], json={"batch": batch}).status_code == 202
    url = f"/v1/metrics/rare.metric?agg=count&bucket=60&start={t0}&end={t0 + 300}"
    wait_until(
        lambda: sum(v or 0 for _, v in client.get(url, headers=keys["read"]).json["series"][0]["points"]) == 3,
        20,
        0.1,
        "the samples rolled up",
    )
    response = client.get("/v1/metrics/rare.metric/forecast?horizon=10&bucket=60", headers=keys["read"])
    assert response.status_code == 200
    [series] = response.json["series"]
    assert series["points"] == [] and "3 buckets" in series["note"]
    # A metric never written: no series, no error.
    unknown = client.get("/v1/metrics/never.written/forecast?horizon=3", headers=keys["read"])
    assert unknown.status_code == 200 and unknown.json["series"] == []


def test_scoped_keys_get_the_aggregate_only_and_reads_are_audited(client, keys, service, worker) -> None:
    t0 = int(time.time()) // 60 * 60 - 60 * 20
    batch = [
        {"name": "ward.visits", "value": 1 + k % 3, "tags": {"cohort": cohort}, "timestamp": t0 + 60 * k}
        for k in range(20)
        for cohort in ("team-alpha", "team-bravo")
    ]
    assert client.post("/v1/metrics", headers=keys["ingest"], json={"batch": batch}).status_code == 202
    url = f"/v1/metrics/ward.visits?agg=count&bucket=60&start={t0}&end={t0 + 1200}"
    wait_until(
        lambda: sum(v or 0 for _, v in client.get(url, headers=keys["read"]).json["series"][0]["points"]) == 40,
        20,
        0.1,
        "the samples rolled up",
    )
    secret, key = service.access.create("read", user_id="patient-forecast-1")
    for probe in ("groupBy=cohort", "tags=cohort:team-bravo"):
        refused = client.get(f"/v1/metrics/ward.visits/forecast?horizon=3&bucket=60&{probe}", headers=bearer(secret))
        assert refused.status_code == 403, probe
        assert b"team-" not in refused.data
    merged = client.get("/v1/metrics/ward.visits/forecast?horizon=3&bucket=60&agg=sum", headers=bearer(secret))
    assert merged.status_code == 200
    assert [s["tags"] for s in merged.json["series"]] == [{}] and len(merged.json["series"][0]["points"]) == 3
    assert b"team-" not in merged.data

    entries, _ = service.auditor.page(None, 1000)
    reads = [e for e in entries if e["action"] == "metrics.read" and e["actor"] == key.id]
    assert len(reads) == 1
    [entry] = reads
    assert entry["metric"] == "ward.visits" and entry["scoped"] is True and entry["forecastHorizon"] == 3
    assert entry["agg"] == "sum" and entry["bucket"] == "60" and entry["count"] == 1
    denied = [e for e in entries if e["action"] == "access.denied" and e["actor"] == key.id]
    assert {e["path"] for e in denied} == {"/v1/metrics/<path:name>/forecast"} and len(denied) == 2


@pytest.mark.parametrize(
    "query, fields",
    [
        ("", {"horizon"}),
        ("horizon=0", {"horizon"}),
        ("horizon=501", {"horizon"}),
        ("horizon=ten", {"horizon"}),
        ("horizon=1.5", {"horizon"}),
        ("horizon=5&bucket=15", {"bucket"}),
        ("horizon=5&bucket=0", {"bucket"}),
        ("horizon=5&bucket=86410", {"bucket"}),
        ("horizon=5&bucket=hour", {"bucket"}),
        ("horizon=5&agg=median", {"agg"}),
        ("horizon=5&tags=nocolon", {"tags"}),
        ("horizon=5&groupBy=no%20spaces", {"groupBy"}),
        ("horizon=5&start=0", {"start"}),
        ("horizon=-1&bucket=7&agg=x", {"horizon", "bucket", "agg"}),
    ],
)
def test_bad_queries_are_400s_naming_the_fields(client, keys, query, fields) -> None:
    response = client.get(f"/v1/metrics/clinic.load/forecast?{query}", headers=keys["read"])
    assert response.status_code == 400, response.json
    assert set(response.json["error"]["details"]) == fields


def test_bad_names_and_missing_keys(client, keys) -> None:
    bad = client.get("/v1/metrics/queue/forecast?horizon=3", headers=keys["read"])
    assert bad.status_code == 400 and set(bad.json["error"]["details"]) == {"name"}
    assert client.get("/v1/metrics/clinic.load/forecast?horizon=3").status_code == 401
    assert client.get("/v1/metrics/clinic.load/forecast?horizon=3", headers=keys["ingest"]).status_code == 403
