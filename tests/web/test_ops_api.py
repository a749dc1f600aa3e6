"""/v1/stats, /metrics, /v1/dlq and the matching command line, with a real worker."""

from __future__ import annotations

import time

import orjson
from click.testing import CliRunner

from analytics import keyspace
from analytics.events.records import dedupe_key
from analytics.ops.stats import CLEANUP, WS
from cli.main import main
from testkit import records_in, stored_events, wait_until


def ingest(client, keys, n: int, prefix: str = "m") -> None:
    batch = [{"type": "click", "userId": f"u{i % 5}", "messageId": f"{prefix}{i}"} for i in range(n)]
    response = client.post("/v1/events", json={"batch": batch}, headers=keys["ingest"])
    assert response.status_code == 202


def test_stats_show_processing_workers_websocket_memory_and_cleanup(worker, client, keys, data) -> None:
    data.hset(
        WS + "web-host-1",
        mapping={
            "clients": 3,
            "messages_total": 40,
            "errors_total": 1,
            "auth_failures_total": 2,
            "messages_rate": 1.5,
            "updated": time.time(),
        },
    )
    data.hset(
        WS + "web-host-2",
        mapping={
            "clients": 1,
            "messages_total": 2,
            "errors_total": 0,
            "auth_failures_total": 0,
            "updated": time.time(),
        },
    )
    ingest(client, keys, 200)
    wait_until(lambda: stored_events(data) == 200, 30, 0.1, "events to be processed")

    def seen() -> dict | None:
        figures = client.get("/v1/stats", headers=keys["read"]).json
        # Heartbeats come every 5 s with each process's running total.
        beating = sum(w["processed"] for w in figures["workers"]) >= 200
        return figures if beating and figures["queue"]["totals"].get("events") else None

    figures = wait_until(seen, 30, 0.2, "a worker heartbeat and processing figures")
    queue = figures["queue"]
    assert queue["length"] == 0 and queue["pending"] == 0
    assert queue["totals"]["events"] == 200 and queue["last_minute"]["events"] == 200
    assert queue["rate_per_second"] > 0 and queue["error_rate_per_second"] == 0
    assert 0 < queue["batch_ms_p50"] <= queue["batch_ms_p99"]
    assert figures["redis"]["status"] == "ok" and figures["redis"]["used_memory_bytes"] > 0
    assert figures["redis"]["maxmemory_policy"] == "noeviction"
    assert figures["process"]["rss_bytes"] > 10_000_000
    alive = [w for w in figures["workers"] if w["status"] == "alive"]
    assert alive and all(w["seconds_since_seen"] < 30 for w in alive)
    assert sum(w["processed"] for w in figures["workers"]) >= 200
    assert figures["websocket"] == {
        "processes": 2,
        "clients": 4,
        "messages_total": 42,
        "errors_total": 1,
        "auth_failures_total": 2,
        "messages_rate": 1.5,
    }

    def cleanup_figures() -> dict | None:
        # As the cleanup task writes it: numbers and JSON. Beat's real cleanup runs every minute
        # for the whole session and may rewrite the hash in between (runs would then be 4): again.
        data.hset(
            CLEANUP,
            mapping={
                "last_run": 1_800_000_000.5,
                "duration": 0.25,
                "complete": "true",
                "removed": '{"events": 12, "series": 1}',
                "runs": 3,
            },
        )
        cleanup = client.get("/v1/stats", headers=keys["read"]).json["cleanup"]
        return cleanup if cleanup["runs"] == 3 else None

    assert wait_until(cleanup_figures, 10, 0.1, "the cleanup figures as written") == {
        "last_run": 1_800_000_000.5,
        "duration": 0.25,
        "complete": True,
        "removed": {"events": 12, "series": 1},
        "runs": 3,
    }
    assert client.get("/v1/stats", headers=keys["ingest"]).status_code == 403
    assert client.get("/v1/stats").status_code == 401


def test_prometheus_metrics_need_no_key_and_carry_the_same_figures(worker, client, keys, data) -> None:
    ingest(client, keys, 50)
    wait_until(lambda: stored_events(data) == 50, 30, 0.1, "events to be processed")
    response = client.get("/metrics")
    assert response.status_code == 200 and response.mimetype == "text/plain"
    text = response.get_data(as_text=True)
    for line in (
        "analytics_redis_up 1.0",
        "analytics_events_processed_total 50.0",
        'analytics_queue_length{lane="analytics:events:queue"} 0.0',
        "analytics_queue_pending 0.0",
        'analytics_dead_letters{kind="events"} 0.0',
        'analytics_http_requests_total{endpoint="api.post_events",method="POST",status="202"}',
    ):
        assert line in text, line
    assert 'analytics_batch_duration_seconds_bucket{le="+Inf"}' in text
    assert 'analytics_workers{status="alive"}' in text


def test_dead_letters_are_listed_and_replayed_by_admins_only(worker, client, keys, service, data) -> None:
    service.events.register_event_type("fragile")
    data.set(keyspace.processed("fragile"), "not a hash")  # makes its records fail
    response = client.post(
        "/v1/events",
        headers=keys["ingest"],
        json={
            "batch": [
                {"type": "fragile", "userId": "u1", "messageId": "p1", "properties": {"email": "x@y.example"}},
                {"type": "click", "userId": "u1", "messageId": "ok1"},
            ]
        },
    )
    assert response.status_code == 202
    wait_until(lambda: service.dead_letters.length("events") == 1, 30, 0.1, "a dead letter")
    assert client.get("/v1/dlq", headers=keys["read"]).status_code == 403
    listing = client.get("/v1/dlq?kind=events", headers=keys["admin"])
    assert listing.status_code == 200
    [letter] = listing.json["deadLetters"]
    # A client's messageId is sealed: the listing shows its keyed hash (the id).
    assert letter["reason"] == "processing_error" and letter["event"]["messageId"] == service.vault.event_id("p1")
    assert b"x@y.example" not in listing.data and b"p1" not in listing.data
    assert client.get("/v1/dlq?kind=bogus", headers=keys["admin"]).status_code == 400
    bad = client.post("/v1/dlq/replay", json={"ids": ["nope"]}, headers=keys["admin"])
    assert bad.status_code == 400 and bad.json["error"]["code"] == "validation_error"

    data.delete(keyspace.processed("fragile"))
    replay = client.post("/v1/dlq/replay", json={"kind": "events"}, headers=keys["admin"])
    assert replay.status_code == 200 and replay.json["replayed"] == 1
    again = client.post("/v1/dlq/replay", json={"ids": [letter["id"]]}, headers=keys["admin"])
    assert again.json == {"replayed": 0, "stillInvalid": 0, "alreadyGone": 1, "ids": []}
    wait_until(lambda: len(records_in(data, "fragile")) == 1, 30, 0.1, "the replayed event")
    assert stored_events(data) == 2


def test_cli_stats_and_dlq(worker, env, service, data) -> None:
    service.events.track({"type": "click", "userId": "u1"})
    record = service.codec.encode(
        {"type": "click", "userId": "u2", "messageId": "cli-1", "timestamp": None}, "normal", 1_700_000_000_000, None
    )
    service.dead_letters.add_record("events", record, "invalid_record", 3)
    runner = CliRunner()
    stats = runner.invoke(main, ["stats"], env=env)
    assert stats.exit_code == 0, stats.output
    for words in (
        "QUEUE",
        "processing rate",
        "batch time p99",
        "WORKERS",
        "WEBSOCKET",
        "redis used memory",
        "dead letters",
        "CLEANUP",
    ):
        assert words in stats.output, words
    as_json = runner.invoke(main, ["stats", "--json"], env=env)
    assert orjson.loads(as_json.output)["redis"]["status"] == "ok"
    listing = runner.invoke(main, ["dlq", "list"], env=env)
    assert listing.exit_code == 0 and "invalid_record" in listing.output
    assert service.vault.event_id("cli-1") in listing.output and "cli-1" not in listing.output
    usage = runner.invoke(main, ["dlq", "replay"], env=env)
    assert usage.exit_code == 2
    replay = runner.invoke(main, ["dlq", "replay", "--all"], env=env)
    assert replay.exit_code == 0 and "replayed 1" in replay.output
    shard, member = dedupe_key(record["i"])
    wait_until(lambda: data.sismember(keyspace.dedupe_shard(shard), member), 30, 0.1, "the replayed event")
    assert [e["action"] for e in service.audit.entries()][-1] == "dlq.replay"


def sum_at(client, keys, name: str, t0: int) -> float | None:
    """The sum of ``name``'s samples in the 10 s bucket at ``t0``, through the query API."""
    body = client.get(f"/v1/metrics/{name}?start={t0}&end={t0 + 10}&bucket=10&agg=sum", headers=keys["read"]).json
    return body["series"][0]["points"][0][1] if body["series"] else None


def test_metric_dead_letters_are_replayed_into_the_rollups_once(worker, client, keys, service, data) -> None:
    t0 = int(time.time()) // 3600 * 3600 - 3600
    # Records queued by an older writer: the worker sets aside those it cannot read.
    data.xadd(
        keyspace.METRICS_QUEUE,
        {
            "e": orjson.dumps(
                [
                    {"n": "dlq.latency", "v": 5, "ts": t0 * 1000},
                    {"n": "dlq.latency", "v": "slow", "g": {"route": "/a"}, "ts": t0 * 1000},
                ]
            )
        },
    )
    response = client.post(
        "/v1/metrics", json={"name": "dlq.latency", "value": 1, "timestamp": t0}, headers=keys["ingest"]
    )
    assert response.status_code == 202
    wait_until(lambda: service.dead_letters.length("metrics") == 2, 30, 0.1, "two metric dead letters")
    listing = client.get("/v1/dlq?kind=metrics", headers=keys["admin"]).json["deadLetters"]
    assert [(item["reason"], item["metric"]["name"]) for item in listing] == [("invalid_record", "dlq.latency")] * 2

    replay = client.post("/v1/dlq/replay", json={"kind": "metrics"}, headers=keys["admin"])
    assert replay.status_code == 200
    assert replay.json == {"replayed": 1, "stillInvalid": 1, "alreadyGone": 0, "ids": [listing[0]["id"]]}
    again = client.post("/v1/dlq/replay", json={"kind": "metrics", "ids": replay.json["ids"]}, headers=keys["admin"])
    assert again.json == {"replayed": 0, "stillInvalid": 0, "alreadyGone": 1, "ids": []}
    wait_until(lambda: sum_at(client, keys, "dlq.latency", t0) == 6.0, 30, 0.1, "the replayed sample")
    # Every dead letter once more: the invalid one stays, nothing is counted twice.
    last = client.post("/v1/dlq/replay", json={"kind": "metrics"}, headers=keys["admin"])
    assert (last.json["replayed"], last.json["stillInvalid"]) == (0, 1)
    wait_until(lambda: service.metrics_queue.length() == 0, 30, 0.1, "an empty metrics queue")
    assert sum_at(client, keys, "dlq.latency", t0) == 6.0
    assert [item["id"] for item in service.ops.dead_letter_list("metrics")] == [listing[1]["id"]]


def test_cli_replays_metric_dead_letters(worker, env, client, keys, service) -> None:
    t0 = int(time.time()) // 3600 * 3600 - 3600
    service.dead_letters.add_record("metrics", {"n": "cli.metric", "v": 2, "ts": t0 * 1000}, "invalid_record", 1)
    service.dead_letters.add_record(
        "metrics", {"n": "cli.metric", "v": 2, "g": {"ssn": "1"}, "ts": t0 * 1000}, "invalid_record", 1
    )
    runner = CliRunner()
    listing = runner.invoke(main, ["dlq", "list", "--kind", "metrics"], env=env)
    assert listing.exit_code == 0 and listing.output.count("metric cli.metric") == 2
    replay = runner.invoke(main, ["dlq", "replay", "--kind", "metrics", "--all"], env=env)
    assert replay.exit_code == 0, replay.output
    assert "replayed 1, still invalid 1, already gone 0" in replay.output
    wait_until(lambda: sum_at(client, keys, "cli.metric", t0) == 2.0, 30, 0.1, "the replayed sample")
    assert service.dead_letters.length("metrics") == 1
