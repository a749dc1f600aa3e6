"""Metrics through the service on a private Redis with no worker running, so
that each test decides when batches are committed (and commits some twice)."""

from __future__ import annotations

import math
import random
import statistics
import threading
import time
from typing import Any

import orjson
import pytest
import redis

from analytics import keyspace
from analytics.errors import ValidationError
from analytics.metrics.sketch import Sketch
from analytics.metrics.store import CHUNK_BUCKETS, series_id
from analytics.pipeline.deadletters import dlq_key
from testkit import wait_until

HOUR = 3600


@pytest.fixture
def quiet(make_stack) -> Any:
    """A service on a private Redis that no worker drains."""
    stack = make_stack(ANALYTICS_MAX_SERIES_PER_METRIC="6")
    service = stack.app().extensions["analytics"]
    service.data = stack.redis.client()
    return service


def hour_ago() -> int:
    """An hour boundary in the recent past (well within every retention)."""
    return int(time.time()) // HOUR * HOUR - HOUR


def query(service: Any, name: str, **params: Any) -> dict[str, Any]:
    return service.metrics.get_metric(name, {k: str(v) for k, v in params.items()})


def points(result: dict[str, Any], index: int = 0) -> list[Any]:
    return result["series"][index]["points"]


def exact_quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[math.floor(q * (len(ordered) - 1))]


def test_percentiles_within_one_percent_and_other_aggregates_exact(quiet) -> None:
    rng = random.Random(42)
    t0 = hour_ago()
    samples = []
    for i in range(6000):
        route = "/login" if i % 3 else "/home"
        samples.append(
            {
                "name": "api.latency",
                "value": rng.lognormvariate(4, 1.1),
                "tags": {"route": route, "env": "prod"},
                "timestamp": t0 + (i % 1800),
            }
        )
    for part in range(0, len(samples), 1000):  # several queue entries and batches
        assert quiet.metrics.track_metrics(samples[part : part + 1000]).accepted == 1000
    quiet.processor.drain("tester")
    values = [s["value"] for s in samples]
    window = {"start": t0, "end": t0 + HOUR, "bucket": HOUR}
    for agg, truth in (
        ("count", len(values)),
        ("sum", math.fsum(values)),
        ("min", min(values)),
        ("max", max(values)),
        ("avg", math.fsum(values) / len(values)),
        ("stddev", statistics.pstdev(values)),
        ("rate", math.fsum(values) / HOUR),
    ):
        [[ts, value]] = points(query(quiet, "api.latency", agg=agg, **window))
        assert ts == t0
        assert value == pytest.approx(truth, rel=1e-9), agg
    for agg, q in (("p50", 0.5), ("p90", 0.9), ("p95", 0.95), ("p99", 0.99)):
        [[_, value]] = points(query(quiet, "api.latency", agg=agg, **window))
        truth = exact_quantile(values, q)
        assert abs(value - truth) / truth <= 0.01, (agg, value, truth)
    # Per minute (1 min tier, one route): percentiles merge across 10 s buckets too.
    login = [s for s in samples if s["tags"]["route"] == "/login"]
    per_minute = points(query(quiet, "api.latency", agg="p90", start=t0, end=t0 + 1800, bucket=60, tags="route:/login"))
    assert len(per_minute) == 30
    for ts, value in per_minute:
        minute = [s["value"] for s in login if ts <= s["timestamp"] < ts + 60]
        truth = exact_quantile(minute, 0.9)
        assert abs(value - truth) / truth <= 0.01


def test_quantiles_equal_the_sketch_of_the_merged_samples(quiet) -> None:
    """Server-side merges (Lua, across commits) and the vectorized query give
    exactly what one sketch of the same samples gives, signs and zero included."""
    rng = random.Random(5)
    t0 = hour_ago()
    samples = [
        {
            "name": "delta",
            "value": rng.choice([0.0, rng.gauss(0, 50), rng.expovariate(0.1)]),
            "tags": {"shard": f"s{i % 3}"},
            "timestamp": t0 + rng.randrange(0, 300),
        }
        for i in range(1500)
    ]
    for part in range(0, 1500, 300):  # five commits: buckets are merged in Redis
        quiet.metrics.track_metrics(samples[part : part + 300])
        quiet.processor.drain("tester")
    for agg, q in (("p50", 0.5), ("p90", 0.9), ("p99", 0.99)):
        got = points(query(quiet, "delta", agg=agg, start=t0, end=t0 + 300, bucket=60, tags="shard:s1"))
        for ts, value in got:
            values = [s["value"] for s in samples if ts <= s["timestamp"] < ts + 60 and s["tags"]["shard"] == "s1"]
            expected = Sketch.of(values).quantile(q, min(values), max(values))
            assert value == pytest.approx(expected, rel=1e-12, abs=1e-12), (agg, ts)


def test_quantiles_across_chunks_groups_gaps_and_partial_ranges(quiet) -> None:
    """The vectorized merge, where it can go wrong: sketches of several chunk
    hashes (10 s tier: 20 minutes a chunk), stored buckets outside the range,
    empty buckets in the middle, one group per tag value."""
    rng = random.Random(11)
    t0 = hour_ago()
    samples = [
        {
            "name": "spread",
            "value": rng.choice([0.0, -rng.expovariate(0.5), rng.lognormvariate(2, 2)]),
            "tags": {"shard": f"s{i % 2}"},
            "timestamp": t0 + rng.randrange(0, 3000),
        }
        for i in range(3000)
    ]
    samples = [s for s in samples if not 1500 <= s["timestamp"] - t0 < 1620]  # a gap
    quiet.metrics.track_metrics(samples)
    quiet.processor.drain("tester")
    start, end = t0 + 610, t0 + 2890
    for agg, q in (("p50", 0.5), ("p95", 0.95), ("p99", 0.99)):
        result = query(quiet, "spread", agg=agg, start=start, end=end, bucket=30, groupBy="shard")
        assert [s["tags"] for s in result["series"]] == [{"shard": "s0"}, {"shard": "s1"}]
        for series in result["series"]:
            got = series["points"]
            assert [ts for ts, _ in got] == list(range(t0 + 600, end, 30))
            for ts, value in got:
                values = [s["value"] for s in samples if ts <= s["timestamp"] < ts + 30 and s["tags"] == series["tags"]]
                if not values:
                    assert value is None, (agg, ts)
                    continue
                expected = Sketch.of(values).quantile(q, min(values), max(values))
                assert value == pytest.approx(expected, rel=1e-12, abs=1e-12), (agg, ts)
        assert any(value is None for _, value in result["series"][0]["points"])


def test_points_are_aligned_and_empty_buckets_are_null(quiet) -> None:
    t0 = hour_ago()
    quiet.metrics.track_metrics(
        [
            {"name": "jobs", "value": 2, "timestamp": t0 + 65},
            {"name": "jobs", "value": 3, "timestamp": t0 + 70},
            {"name": "jobs", "value": 7, "timestamp": t0 + 250},
        ]
    )
    quiet.processor.drain("tester")
    got = points(query(quiet, "jobs", agg="sum", start=t0 + 30, end=t0 + 300, bucket=60))
    assert got == [[t0, None], [t0 + 60, 5.0], [t0 + 120, None], [t0 + 180, None], [t0 + 240, 7.0]]
    # A 30 s bucket is served from the 10 s tier, still aligned.
    got = points(query(quiet, "jobs", agg="count", start=t0 + 60, end=t0 + 120, bucket=30))
    assert got == [[t0 + 60, 2], [t0 + 90, None]]


def test_tag_filter_and_group_by(quiet) -> None:
    t0 = hour_ago()
    batch = []
    for route, env, n in (("/login", "prod", 5), ("/login", "staging", 3), ("/home", "prod", 2)):
        batch += [{"name": "hits", "value": 1, "tags": {"route": route, "env": env}, "timestamp": t0 + 5}] * n
    batch.append({"name": "hits", "value": 1, "tags": {"env": "prod"}, "timestamp": t0 + 5})
    batch.append({"name": "hits", "value": 1, "tags": {"route": "/home", "env": "prod"}, "timestamp": t0 + 125})
    assert quiet.metrics.track_metrics(batch).accepted == 12
    quiet.processor.drain("tester")
    window = {"agg": "count", "start": t0, "end": t0 + 60, "bucket": 60}

    def counts(**params: Any) -> dict[str, Any]:
        result = query(quiet, "hits", **window, **params)
        return {
            orjson.dumps(s["tags"], option=orjson.OPT_SORT_KEYS).decode(): s["points"][0][1] for s in result["series"]
        }

    assert counts() == {"{}": 11}
    assert counts(tags="route:/login") == {'{"route":"/login"}': 8}
    assert counts(tags="route:/login,env:prod") == {'{"env":"prod","route":"/login"}': 5}
    assert counts(groupBy="route") == {'{"route":"/home"}': 2, '{"route":"/login"}': 8, "{}": 1}
    assert counts(tags="env:prod", groupBy="route") == {
        '{"env":"prod","route":"/home"}': 2,
        '{"env":"prod","route":"/login"}': 5,
        '{"env":"prod"}': 1,
    }
    # Groups without data in the range are left out; a plain query keeps its series.
    later = {"agg": "count", "start": t0 + 120, "end": t0 + 180, "bucket": 60}
    assert [s["tags"] for s in query(quiet, "hits", groupBy="route", **later)["series"]] == [{"route": "/home"}]
    assert points(query(quiet, "hits", tags="route:/login", **later)) == [[t0 + 120, None]]
    # Never written: an empty list, not an error.
    assert counts(tags="route:/nope") == {}
    assert counts(tags="route:/home,env:staging") == {}
    assert query(quiet, "never.written", **window) == {"name": "never.written", "series": []}


def test_a_redelivered_batch_is_never_counted_twice(quiet) -> None:
    t0 = hour_ago()
    for i in range(3):
        quiet.metrics.track_metrics([{"name": "q", "value": 10 + i, "timestamp": t0}] * 4)
    entries = quiet.metrics_queue.read("worker-a", 10)
    assert len(entries) == 3
    first = quiet.metric_store.commit(entries)
    again = quiet.metric_store.commit(entries)  # a second worker holding the same entries
    assert (first.samples, first.skipped_entries) == (12, 0)
    assert (again.samples, again.skipped_entries) == (0, 3)
    # A batch mixing a committed entry with a new one: only the new one counts.
    quiet.metrics.track_metrics([{"name": "q", "value": 100, "timestamp": t0}])
    fresh = quiet.metrics_queue.read("worker-a", 10)
    mixed = quiet.metric_store.commit([entries[0], *fresh])
    assert (mixed.samples, mixed.skipped_entries) == (1, 1)
    window = {"start": t0, "end": t0 + 10, "bucket": 10}
    assert points(query(quiet, "q", agg="count", **window)) == [[t0, 13]]
    assert points(query(quiet, "q", agg="sum", **window)) == [[t0, 4 * (10 + 11 + 12) + 100.0]]
    assert quiet.metrics_queue.pending() == 0 and quiet.metrics_queue.length() == 0


def test_malformed_queue_records_are_dead_lettered_not_retried(quiet) -> None:
    t0 = hour_ago()
    quiet.data.xadd(
        keyspace.METRICS_QUEUE,
        {"e": orjson.dumps([{"n": "ok", "v": 2, "g": {}, "ts": t0 * 1000}, {"n": "ok", "v": "x"}, "junk"])},
    )
    report = quiet.processor.drain("tester")
    assert (report.metrics.samples, report.metrics.invalid) == (1, 2)
    assert quiet.dead_letters.length("metrics") == 2
    assert quiet.metrics_queue.pending() == 0 and quiet.metrics_queue.length() == 0
    assert points(query(quiet, "ok", agg="sum", start=t0, end=t0 + 10, bucket=10)) == [[t0, 2.0]]


def test_records_are_dead_lettered_in_the_step_that_commits_their_entry(quiet) -> None:
    t0 = hour_ago()
    quiet.data.xadd(
        keyspace.METRICS_QUEUE,
        {"e": orjson.dumps([{"n": "ok", "v": 1, "g": {}, "ts": t0 * 1000}, {"n": "ok", "v": "x"}, "junk"])},
    )
    quiet.data.set(dlq_key("metrics"), "not a stream")  # the dead letters cannot be written...
    held = quiet.metrics_queue.read("worker-a", 10)
    with pytest.raises(redis.ResponseError, match="WRONGTYPE"):
        quiet.metric_store.commit(held)
    # ...so nothing is: no sample counted, the entry still pending.
    window = {"start": t0, "end": t0 + 10, "bucket": 10}
    assert query(quiet, "ok", agg="count", **window)["series"] == []
    assert quiet.metrics_queue.pending() == 1
    quiet.data.delete(dlq_key("metrics"))
    first = quiet.metric_store.commit(held)
    again = quiet.metric_store.commit(held)  # a second worker holding the same entry
    assert (first.samples, first.invalid, again.invalid, again.skipped_entries) == (1, 2, 0, 1)
    assert [item["record"] for item in quiet.dead_letters.entries("metrics")] == [{"n": "ok", "v": "x"}, "junk"]
    assert points(query(quiet, "ok", agg="count", **window)) == [[t0, 1]]


def test_an_unreadable_metrics_entry_is_set_aside_whole_and_sealed(quiet) -> None:
    t0 = hour_ago()
    quiet.data.xadd(keyspace.METRICS_QUEUE, {"e": b'[{"n": "ok", "v": 1, "g": {"email": "a@b.c"'})
    quiet.metrics.track_metrics([{"name": "ok", "value": 2, "timestamp": t0}])
    report = quiet.processor.drain("tester")
    assert (report.metric_entries, report.metrics.samples, report.metrics.dead_entries) == (2, 1, 1)
    assert quiet.metrics_queue.pending() == 0 and quiet.metrics_queue.length() == 0
    [letter] = quiet.dead_letters.entries("metrics")
    assert letter["reason"] == "malformed_entry" and "sealed" in letter and "record" not in letter
    assert b"a@b.c" not in b"".join(v for _, f in quiet.data.xrange(dlq_key("metrics")) for v in f.values())
    assert quiet.dead_letters.open_sealed(letter).startswith(b'[{"n": "ok"')
    # Still unreadable on replay: it stays, and nothing is counted.
    assert quiet.ops.replay_dead_letters("metrics", actor="test").still_invalid == 1
    assert points(query(quiet, "ok", agg="count", start=t0, end=t0 + 10, bucket=10)) == [[t0, 1]]


def test_a_metrics_entry_that_keeps_failing_does_not_block_its_batch(quiet) -> None:
    t0 = hour_ago()
    quiet.metrics.track_metrics([{"name": "hurt", "value": 1, "timestamp": t0}])
    quiet.processor.drain("tester")
    damaged = keyspace.rollup_chunk("hurt", 10, series_id({}), t0 - t0 % (10 * CHUNK_BUCKETS))
    assert quiet.data.exists(damaged), "the chunk key named as the store names it"
    quiet.data.delete(damaged)
    quiet.data.set(damaged, "not a rollup")  # every commit of a "hurt" sample now fails
    quiet.metrics.track_metrics([{"name": "hurt", "value": 2, "timestamp": t0}])
    quiet.metrics.track_metrics([{"name": "fine", "value": 3, "timestamp": t0}])
    report = quiet.processor.drain("tester")  # one batch of both entries: it fails, then one by one
    assert (report.metric_entries, report.metrics.samples) == (2, 1)
    window = {"start": t0, "end": t0 + 10, "bucket": 10}
    assert points(query(quiet, "fine", agg="sum", **window)) == [[t0, 3.0]]
    assert quiet.metrics_queue.pending() == 1 and quiet.dead_letters.length("metrics") == 0
    # Delivered again until max_attempts: then set aside whole, its sample replayable.
    for delivery in range(2, quiet.settings.max_attempts + 1):
        [entry] = quiet.metrics_queue.claim_stale("tester", 0, 10)
        assert entry.deliveries == delivery
        quiet.metric_committer.commit([entry])
    assert quiet.metrics_queue.pending() == 0 and quiet.metrics_queue.length() == 0
    [letter] = quiet.dead_letters.entries("metrics")
    assert letter["reason"] == "processing_error" and letter["record"]["n"] == "hurt"
    quiet.data.delete(damaged)  # mended: the replay counts the sample once
    assert quiet.ops.replay_dead_letters("metrics", actor="test").replayed == 1
    quiet.processor.drain("tester")
    assert points(query(quiet, "hurt", agg="sum", **window)) == [[t0, 2.0]]


def test_metric_dead_letters_are_validated_again_and_replayed_once(quiet) -> None:
    t0 = hour_ago()
    # Queued by an older writer: the commit sets aside what it cannot read.
    quiet.data.xadd(
        keyspace.METRICS_QUEUE,
        {
            "e": orjson.dumps(
                [
                    {"n": "ok", "v": 2, "g": {}, "ts": t0 * 1000},
                    {"n": "untagged", "v": 3, "ts": t0 * 1000},
                    {"n": "untimed", "v": 4, "g": {"env": "prod"}},
                    {"n": "ok", "v": "x", "g": {}, "ts": t0 * 1000},
                ]
            )
        },
    )
    report = quiet.processor.drain("tester")
    assert (report.metrics.samples, report.metrics.invalid) == (1, 3)
    listing = quiet.ops.dead_letter_list("metrics")
    assert [item["metric"]["name"] for item in listing] == ["untagged", "untimed", "ok"]
    set_aside = int(quiet.dead_letters.entries("metrics")[1]["ts"])

    # Validated again like new input: the two that now read as samples are
    # queued once; the one whose value is no number stays.
    first = quiet.ops.replay_dead_letters("metrics", actor="test")
    assert (first.replayed, first.still_invalid) == (2, 1)
    assert first.ids == [item["id"] for item in listing[:2]]
    assert quiet.dead_letters.length("metrics") == 1
    again = quiet.ops.replay_dead_letters("metrics", ids=first.ids, actor="test")
    assert (again.replayed, again.already_gone) == (0, 2)
    for _ in range(2):  # a later replay finds only the invalid one: nothing counts twice
        quiet.processor.drain("tester")
        assert points(query(quiet, "untagged", agg="sum", start=t0, end=t0 + 10, bucket=10)) == [[t0, 3.0]]
        # A sample queued without a time counts when it was set aside.
        window = {"start": set_aside - 60, "end": set_aside + 60, "bucket": 60}
        assert sum(v or 0 for _, v in points(query(quiet, "untimed", agg="count", **window))) == 1
        assert points(query(quiet, "ok", agg="count", start=t0, end=t0 + 10, bucket=10)) == [[t0, 1]]
        assert quiet.ops.replay_dead_letters("metrics").still_invalid == 1
    assert quiet.metrics_queue.pending() == 0 and quiet.metrics_queue.length() == 0
    assert [a["count"] for a in quiet.audit.entries() if a["action"] == "dlq.replay"] == [2, 0, 0, 0]


def test_metric_dead_letters_still_breaking_current_rules_stay(quiet) -> None:
    t0 = hour_ago()
    limit = quiet.settings.max_series_per_metric
    quiet.metrics.track_metrics([{"name": "per.ref", "value": 1, "tags": {"ref": f"r{i}"}} for i in range(limit)])
    queued = quiet.metrics_queue.length()
    # A tag key that names a PHI field, and one series more than the limit.
    for tags, name in (({"email": "a@b.example"}, "visits"), ({"ref": "one-more"}, "per.ref")):
        quiet.dead_letters.add_record("metrics", {"n": name, "v": 1, "g": tags, "ts": t0 * 1000}, "invalid_record", 1)
    report = quiet.ops.replay_dead_letters("metrics")
    assert (report.replayed, report.still_invalid) == (0, 2)
    assert quiet.dead_letters.length("metrics") == 2 and quiet.metrics_queue.length() == queued
    assert quiet.data.hlen(keyspace.metric_series("per.ref")) == limit
    assert not quiet.data.exists(keyspace.metric_series("visits"))
    listing = quiet.ops.dead_letter_list("metrics")
    assert [item["metric"]["name"] for item in listing] == ["visits", "per.ref"]
    assert b"a@b.example" not in orjson.dumps(listing)


def test_entries_of_a_presumed_dead_worker_count_once(quiet) -> None:
    t0 = hour_ago()
    quiet.metrics.track_metrics([{"name": "slow", "value": 1, "timestamp": t0}] * 5)
    held = quiet.metrics_queue.read("stalled-worker", 10)
    time.sleep(quiet.settings.claim_idle_seconds + 0.2)
    report = quiet.processor.recover("rescuer")
    assert report.metrics.samples == 5
    assert quiet.metric_store.commit(held).skipped_entries == 1  # the stalled worker wakes up
    assert points(query(quiet, "slow", agg="count", start=t0, end=t0 + 10, bucket=10)) == [[t0, 5]]


def test_cardinality_limit_is_a_clear_per_sample_error(quiet) -> None:
    limit = quiet.settings.max_series_per_metric
    batch = [{"name": "per.user", "value": 1, "tags": {"user_ref": f"r{i}"}} for i in range(limit + 2)]
    result = quiet.metrics.track_metrics(batch)
    assert result.accepted == limit
    assert [r["index"] for r in result.rejected] == [limit, limit + 1]
    message = result.rejected[0]["errors"]["tags"][0]
    assert "limit" in message and "not ids" in message
    # Existing series still take samples; other metrics are not affected.
    assert quiet.metrics.track_metric("per.user", 2, {"user_ref": "r0"}).accepted == 1
    assert quiet.metrics.track_metric("other", 2, {"user_ref": "r99"}).accepted == 1
    assert quiet.data.hlen(keyspace.metric_series("per.user")) == limit


def test_event_counts_are_a_metric(quiet) -> None:
    t0 = hour_ago()
    events = [{"type": "page_view", "userId": "u1", "timestamp": t0 + i, "messageId": f"m{i}"} for i in range(25)]
    quiet.events.track_many(events)
    quiet.events.track_many(events[:5])  # retried messageIds are stored, and counted, once
    quiet.processor.drain("tester")
    got = points(query(quiet, "events.page_view", agg="count", start=t0, end=t0 + 60, bucket=10))
    assert got == [[t0, 10], [t0 + 10, 10], [t0 + 20, 5], [t0 + 30, None], [t0 + 40, None], [t0 + 50, None]]
    assert points(query(quiet, "events.page_view", agg="rate", start=t0, end=t0 + 60, bucket=60)) == [[t0, 25 / 60]]
    # A registered type without events: one series of nulls, not an error.
    assert query(quiet, "events.click", agg="count", start=t0, end=t0 + 20, bucket=10) == {
        "name": "events.click",
        "series": [{"tags": {}, "points": [[t0, None], [t0 + 10, None]]}],
    }
    assert query(quiet, "events.no_such_type", agg="count", start=t0, end=t0 + 20, bucket=10)["series"] == []


def test_live_fan_out_of_updated_buckets(quiet) -> None:
    t0 = hour_ago()
    pubsub = quiet.data.pubsub()
    pubsub.subscribe(keyspace.LIVE_METRICS)
    wait_until(lambda: pubsub.get_message(timeout=0.1) is not None, 5)
    messages: list[Any] = []

    def listen() -> None:
        while len(messages) < 3:
            message = pubsub.get_message(timeout=1)
            if message and message["type"] == "message":
                messages.append(orjson.loads(message["data"]))

    listener = threading.Thread(target=listen, daemon=True)
    listener.start()
    quiet.metrics.track_metrics(
        [{"name": "temp", "value": v, "tags": {"room": "a"}, "timestamp": t0 + 3} for v in (2.5, 4.0)]
    )
    quiet.processor.drain("tester")
    quiet.metrics.track_metric("temp", -1.0, {"room": "a"}, t0 + 7)
    quiet.processor.drain("tester")
    quiet.events.track_many([{"type": "login", "userId": "u", "timestamp": t0 + 12}])
    quiet.processor.drain("tester")
    listener.join(10)
    first, second, events = messages
    assert first == [
        {
            "name": "temp",
            "tags": {"room": "a"},
            "bucket": t0,
            "resolution": 10,
            "count": 2,
            "sum": 6.5,
            "min": 2.5,
            "max": 4.0,
        }
    ]
    assert second == [
        {
            "name": "temp",
            "tags": {"room": "a"},
            "bucket": t0,
            "resolution": 10,
            "count": 3,
            "sum": 5.5,
            "min": -1.0,
            "max": 4.0,
        }
    ]
    assert events == [
        {
            "name": "events.login",
            "tags": {},
            "bucket": t0 + 10,
            "resolution": 10,
            "count": 1,
            "sum": 1,
            "min": 1,
            "max": 1,
        }
    ]


@pytest.mark.parametrize(
    "params, field",
    [
        ({"bucket": "15"}, "bucket"),
        ({"agg": "p42"}, "agg"),
        ({"start": "2026-01-02", "end": "2026-01-01"}, "start"),
        ({"start": "0", "end": "1000000", "bucket": "10"}, "bucket"),
        ({"tags": "route"}, "tags"),
        ({"groupBy": "a b"}, "groupBy"),
        ({"surprise": "1"}, "surprise"),
    ],
)
def test_bad_queries_are_validation_errors(quiet, params, field) -> None:
    with pytest.raises(ValidationError) as caught:
        quiet.metrics.get_metric("api.latency", params)
    assert field in caught.value.details
