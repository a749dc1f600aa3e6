"""Retention cleanup with an injected clock, on a private Redis (so that no
beat runs a cleanup of its own meanwhile)."""

from __future__ import annotations

import threading
import time
from typing import Any

import orjson
import pytest

from analytics import keyspace
from testkit import pages_indexed, records_in, stored_events

DAY = 86_400


@pytest.fixture
def quiet(make_stack) -> Any:
    stack = make_stack()
    service = stack.app().extensions["analytics"]
    service.data = stack.redis.client()
    return service


def rollup_keys(data: Any, resolution: int) -> list[bytes]:
    return [k for k in data.zrange(keyspace.ROLLUP_EXPIRY, 0, -1) if f":r{resolution}:".encode() in k]


def seed(service: Any, now: int) -> None:
    old, fresh = (now - 40 * DAY) // 60 * 60, now - 60
    service.events.track_many(
        [{"type": "click", "userId": "u1", "timestamp": old, "messageId": f"old{i}"} for i in range(7)]
    )
    service.events.track_many(
        [{"type": "click", "userId": "u1", "timestamp": fresh, "messageId": f"new{i}"} for i in range(2)]
    )
    service.metrics.track_metrics(
        [{"name": "m", "value": 1, "timestamp": old}, {"name": "m", "value": 2, "timestamp": fresh}]
    )
    service.processor.drain("tester")


def test_cleanup_removes_what_expired_and_keeps_the_rest(quiet) -> None:
    now = int(time.time())
    seed(quiet, now)
    data = quiet.data
    user_key = keyspace.user_index(quiet.codec.user_hash("u1"))
    assert data.zcard(user_key) == 2  # two pages: the old minute's, the fresh one's

    report = quiet.ops.cleanup(now=now)
    assert report.events == 7 and report.complete and not report.skipped
    assert len(records_in(data, "click")) == 2
    assert data.zcard(keyspace.time_index("click")) == 1 and pages_indexed(data, "click")
    assert stored_events(data) == 2
    assert data.zcard(user_key) == 1
    events, _ = quiet.events.get_events({"type": "click"})
    assert sorted(e["messageId"] for e in events) == ["new0", "new1"]
    # 40-day-old rollups: gone from the 10 s and 1 min tiers (1 and 7 days),
    # kept in the 1 h and 1 day tiers (90 and 730 days); fresh ones all kept.
    assert report.rollup_chunks == 4  # m and events.click, in two tiers
    assert len(rollup_keys(data, 10)) == len(rollup_keys(data, 60)) == 2  # the fresh ones
    assert len(rollup_keys(data, 3600)) in (2, 4)  # old and fresh (maybe one chunk)

    def series(start: int, bucket: int) -> list[Any]:
        return quiet.metrics.get_metric(
            "m", {"start": str(start), "end": str(start + bucket), "bucket": str(bucket), "agg": "sum"}
        )["series"][0]["points"]

    old_hour = (now - 40 * DAY) // 3600 * 3600
    assert series(old_hour, 3600) == [[old_hour, 1.0]]
    old_minute = (now - 40 * DAY) // 60 * 60
    assert series(old_minute, 60) == [[old_minute, None]]
    fresh_minute = (now - 60) // 60 * 60
    assert series(fresh_minute, 60) == [[fresh_minute, 2.0]]

    status = quiet.ops.cleanup_status()
    assert status["removed"] == {"events": 7, "rollup_chunks": 4, "rollup_buckets": 4, "series": 0}
    assert status["runs"] == 1 and status["complete"] is True
    assert abs(status["last_run"] - time.time()) < 60 and status["duration"] >= 0

    # Far in the future (an injected clock), everything has expired.
    later = quiet.ops.cleanup(now=now + 1000 * DAY)
    assert later.events == 2
    assert data.zcard(keyspace.ROLLUP_EXPIRY) == 0
    assert not [k for k in data.scan_iter(match="analytics:metrics:*:r*")]
    assert stored_events(data) == 0 and data.zcard(user_key) == 0
    assert later.series == 1 and data.hlen(keyspace.metric_series("m")) == 0


def test_series_whose_rollups_all_expired_are_forgotten(quiet) -> None:
    now = int(time.time())
    data = quiet.data
    quiet.metrics.track_metrics(
        [
            {"name": "api", "value": 1, "tags": {"route": "/a", "env": "prod"}, "timestamp": now - 900 * DAY},
            {"name": "api", "value": 1, "tags": {"route": "/b", "env": "prod"}, "timestamp": now - 60},
        ]
    )
    quiet.processor.drain("tester")
    assert data.hlen(keyspace.metric_series("api")) == 2
    # Each series has a live detector; an anomaly as old as the first sample.
    detectors = list(data.scan_iter(match=keyspace.detector_prefix("api") + "*"))
    assert len(detectors) == data.zcard(keyspace.DETECTORS) == 2
    data.zadd(keyspace.anomalies("api"), {b'{"old":1}': now - 900 * DAY, b'{"new":1}': now - 60})
    report = quiet.ops.cleanup(now=now)
    assert report.series == 1 and report.anomalies == 1
    assert data.zrange(keyspace.anomalies("api"), 0, -1) == [b'{"new":1}']
    # The forgotten series' detector went with it.
    assert len(list(data.scan_iter(match=keyspace.detector_prefix("api") + "*"))) == 1
    assert data.zcard(keyspace.DETECTORS) == 1
    [(sid, tags)] = data.hgetall(keyspace.metric_series("api")).items()
    assert orjson.loads(tags) == {"env": "prod", "route": "/b"}
    index = data.hgetall(keyspace.metric_tags("api"))
    assert index == {b"env:prod": sid, b"route:/b": sid}
    assert data.zrange(keyspace.metric_seen("api"), 0, -1) == [sid]
    groups = quiet.metrics.get_metric("api", {"groupBy": "route", "agg": "count"})["series"]
    assert [g["tags"] for g in groups] == [{"route": "/b"}]


def test_cleanup_works_in_bounded_slices_and_resumes(quiet) -> None:
    now = int(time.time())
    seed(quiet, now)
    quiet.retention.slice_size = 2
    cut_short = quiet.ops.cleanup(now=now, budget=0)  # as if killed before the first slice
    assert not cut_short.complete and cut_short.events == 0
    assert quiet.ops.cleanup_status()["complete"] is False
    report = quiet.ops.cleanup(now=now)
    assert report.complete and report.events == 7 and report.rollup_chunks == 4
    assert quiet.ops.cleanup(now=now).events == 0  # a second run finds nothing left


def test_runs_at_the_same_time_do_the_work_once(quiet) -> None:
    now = int(time.time())
    seed(quiet, now)
    data = quiet.data
    data.set(keyspace.CLEANUP_LOCK, "someone-else", px=5000)
    held = quiet.ops.cleanup(now=now)
    assert held.skipped and held.events == 0
    assert len(records_in(data, "click")) == 9
    assert data.get(keyspace.CLEANUP_LOCK) == b"someone-else"  # not released by a non-owner
    data.delete(keyspace.CLEANUP_LOCK)

    reports: list[Any] = []
    threads = [threading.Thread(target=lambda: reports.append(quiet.ops.cleanup(now=now))) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert sum(r.events for r in reports) == 7
    assert sum(r.rollup_chunks for r in reports) == 4
    assert len(records_in(data, "click")) == 2
    assert data.get(keyspace.CLEANUP_LOCK) is None


def test_records_of_the_first_layout_are_queued_again_into_pages(quiet) -> None:
    """One JSON record per hash field, indexed by id: invisible to queries (no
    crash), then queued again by cleanup and stored in pages; a record of a
    user erased since is not."""
    data = quiet.data
    now = int(time.time())
    # All in one minute: the user index holds one member per page (minute).
    minute = (now - 100) - (now - 100) % 60
    legacy = [
        quiet.codec.encode(
            {
                "type": "click",
                "userId": user,
                "messageId": f"legacy-{n}",
                "timestamp": (minute + n) * 1000,
                "properties": {"n": n},
            },
            "normal",
            (now - 50) * 1000,
            None,
        )
        for n, user in enumerate(["keep", "keep", "erased"])
    ]
    for record in legacy:
        data.hset(keyspace.processed("click"), record["i"], orjson.dumps(record))
        data.zadd(keyspace.time_index("click"), {record["i"]: record["ts"]})
        data.zadd(keyspace.user_index(record["u"]), {f"click:{record['i']}": record["ts"]})
        data.hset("analytics:events:ids", record["i"], "click")
    data.hset(keyspace.ERASED, quiet.codec.user_hash("erased"), (now - 10) * 1000)
    assert quiet.events.get_events({"type": "click"}) == ([], None)

    report = quiet.ops.cleanup(now=now)
    assert report.legacy_requeued == 2 and report.complete
    quiet.processor.drain("tester")
    events, _ = quiet.events.get_events({"type": "click"})
    assert [e["messageId"] for e in events] == ["legacy-1", "legacy-0"]
    assert events[0]["properties"] == {"n": 1} and events[0]["userId"] == "keep"
    assert not data.exists("analytics:events:ids") and stored_events(data) == 2
    assert pages_indexed(data, "click")
    assert data.zcard(keyspace.user_index(quiet.codec.user_hash("keep"))) == 1
    assert not data.exists(keyspace.user_index(quiet.codec.user_hash("erased")))
