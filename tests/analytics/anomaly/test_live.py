"""Live detection (:mod:`analytics.anomaly.live`) through the service on a
private Redis that no worker drains: each test decides when batches are
committed, so it can commit them out of order, twice, or race two workers."""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import orjson
import pytest

from analytics import keyspace
from analytics.anomaly.detector import DEFAULT_THRESHOLD, Detector
from analytics.anomaly.live import LiveDetection
from analytics.metrics.store import EMPTY_SERIES, series_id

RES = 10
POINTS = 300
SPIKE = 260


@pytest.fixture
def quiet(make_stack) -> Any:
    stack = make_stack(ANALYTICS_ANOMALY_RESOLUTION=str(RES), ANALYTICS_ANOMALY_IDLE_SECONDS="60")
    service = stack.app().extensions["analytics"]
    service.data = stack.redis.client()
    return service


def series(seed: int = 3) -> tuple[list[int], list[float]]:
    """POINTS buckets ending a few minutes ago, noisy, with one spike."""
    rng = np.random.default_rng(seed)
    start = (int(time.time()) // RES - POINTS - 30) * RES
    stamps = [start + RES * i for i in range(POINTS)]
    values = (20.0 + rng.normal(0.0, 1.0, POINTS)).round(3).tolist()
    values[SPIKE] += 25.0
    return stamps, values


def send(service: Any, stamps: list[int], values: list[float], tags: dict[str, str]) -> None:
    samples = [
        {"name": "api.latency", "value": v, "tags": tags, "timestamp": t} for t, v in zip(stamps, values, strict=True)
    ]
    result = service.metrics.track_metrics(samples)
    assert result.accepted == len(samples), result.rejected


def drain(service: Any) -> None:
    """Process what is queued, and score what it closed, as a worker would
    (entries held elsewhere stay)."""
    while (report := service.processor.drain(budget=0)).metric_entries or report.detection:
        pass


def state(service: Any, name: str, sid: str) -> dict[bytes, bytes]:
    return service.data.hgetall(keyspace.detector_state(name, RES, sid))


def test_live_scores_equal_the_offline_detector(quiet: Any) -> None:
    """The same points through the API and through the detector offline give
    the same state, and the spike is stored with its score and band."""
    stamps, values = series()
    tags = {"route": "/login"}
    for at in range(0, POINTS, 50):  # several requests, several batches
        send(quiet, stamps[at : at + 50], values[at : at + 50], tags)
        drain(quiet)
    sid = series_id(tags)
    stored = state(quiet, "api.latency", sid)
    # The last two buckets are still open: everything before them was scored, once.
    assert int(stored[b"last"]) == stamps[-3]
    offline = Detector()
    scores = [offline.update(float(t), v) for t, v in zip(stamps[:-2], values[:-2], strict=True)]
    assert stored[b"det"] == offline.to_bytes()
    expected = [(t, s) for t, s in zip(stamps, scores, strict=False) if s.alert]
    assert stamps[SPIKE] in [t for t, _ in expected]

    body = quiet.metrics.anomalies("api.latency", {"start": str(stamps[0]), "end": str(stamps[-1] + RES)})
    found = body["anomalies"]
    assert [a["bucket"] for a in found] == [t for t, _ in expected]
    spike = next(a for a in found if a["bucket"] == stamps[SPIKE])
    assert spike["tags"] == tags and spike["resolution"] == RES
    assert spike["value"] == values[SPIKE]
    assert spike["score"] >= DEFAULT_THRESHOLD
    assert spike["lower"] < 20.0 < spike["upper"] < values[SPIKE]
    # A tag filter that matches no series finds nothing.
    assert quiet.metrics.anomalies("api.latency", {"start": str(stamps[0]), "tags": "route:/other"})["anomalies"] == []


def test_a_redelivered_batch_or_a_second_worker_scores_nothing_twice(quiet: Any) -> None:
    stamps, values = series()
    send(quiet, stamps, values, {})
    entries = quiet.metrics_queue.read("w1", 10)
    committed = quiet.metric_committer.commit(entries)
    # Two workers noted the same commit (one of them a redelivery): both advance.
    first = LiveDetection(quiet.redis, quiet.metric_store, quiet.settings, (quiet.queue, quiet.metrics_queue))
    second = LiveDetection(quiet.redis, quiet.metric_store, quiet.settings, (quiet.queue, quiet.metrics_queue))
    for detection in (first, second):
        detection.note_metrics(entries, committed.series)
    assert first.advance().points == POINTS - 2
    again = second.advance()
    assert again.points == 0  # it read the state after the first wrote it
    det = state(quiet, "api.latency", EMPTY_SERIES)[b"det"]
    offline = Detector()
    for t, v in zip(stamps[:-2], values[:-2], strict=True):
        offline.update(float(t), v)
    assert det == offline.to_bytes()


def test_a_stale_write_is_refused(quiet: Any) -> None:
    """Two workers that read the same state: the second write changes nothing."""
    stamps, values = series()
    send(quiet, stamps[:100], values[:100], {})
    drain(quiet)
    key = keyspace.detector_state("api.latency", RES, EMPTY_SERIES)
    before = quiet.data.hgetall(key)
    detection = quiet.detection
    # Replay the write the first worker made, as a second worker holding the
    # same (now stale) state would: refused.
    script = quiet.redis.register_script(
        __import__("analytics.lua_scripts", fromlist=["lua_source"]).lua_source("advance_detector.lua")
    )
    args = ["", before[b"last"], b"x" * 10, "", orjson.dumps(["api.latency", EMPTY_SERIES]), 1, 0, "", 0, 0]
    keys = [key, keyspace.DETECTORS, keyspace.anomalies("api.latency"), keyspace.ALERT_OUTBOX]
    assert script(keys=keys, args=args) == 0
    assert quiet.data.hgetall(key) == before
    assert detection.resolution == RES


def test_older_pending_entries_hold_the_buckets_open(quiet: Any) -> None:
    """Samples of a bucket held by a worker that has not committed (killed,
    say) keep that bucket from being scored without them."""
    stamps, values = series()
    send(quiet, stamps[:150], values[:150], {})
    send(quiet, stamps[150:], values[150:], {})
    held = quiet.metrics_queue.read("dead-worker", 1)  # the first request, never committed
    assert len(held) == 1
    drain(quiet)  # commits the second request only
    assert state(quiet, "api.latency", EMPTY_SERIES) == {}
    # The held entry is taken over and committed: now every bucket is there.
    claimed = quiet.metrics_queue.claim_stale("w2", 0, 10)
    quiet.processor._process_samples(claimed)
    quiet.processor._detect([])
    stored = state(quiet, "api.latency", EMPTY_SERIES)
    offline = Detector()
    for t, v in zip(stamps[:-2], values[:-2], strict=True):
        offline.update(float(t), v)
    assert stored[b"det"] == offline.to_bytes()


def test_event_counts_are_scored_with_zeros_for_empty_buckets(quiet: Any) -> None:
    start = (int(time.time()) // RES - 100) * RES
    # Events in buckets 0, 1, 3 (2 is empty), then one in bucket 6 closes 0..4.
    for bucket, n in ((0, 3), (1, 2), (3, 4), (6, 1)):
        for i in range(n):
            result = quiet.events.track(
                {"type": "login", "userId": f"u-{bucket}-{i}", "timestamp": start + bucket * RES + i}
            )
            assert result.accepted == 1
    drain(quiet)
    stored = state(quiet, "events.login", EMPTY_SERIES)
    assert int(stored[b"last"]) == start + 4 * RES
    offline = Detector()
    for bucket, n in enumerate((3, 2, 0, 4, 0)):
        offline.update(float(start + bucket * RES), float(n))
    assert stored[b"det"] == offline.to_bytes()


def test_the_sweep_closes_the_buckets_of_idle_series(quiet: Any) -> None:
    stamps, values = series()
    send(quiet, stamps[:20], values[:20], {})
    drain(quiet)
    assert int(state(quiet, "api.latency", EMPTY_SERIES)[b"last"]) == stamps[17]
    # Not idle yet: nothing to do.
    assert quiet.detection.sweep().points == 0
    later = time.time() + quiet.settings.anomaly_idle_seconds + 1
    report = quiet.detection.sweep(later)
    assert report.points == 2  # the last two buckets, open until now
    assert int(state(quiet, "api.latency", EMPTY_SERIES)[b"last"]) >= stamps[19]
    # Idle on: the next sweep finds nothing new, and the series leaves the
    # sweep's index until its next sample (which advances it again).
    assert quiet.data.zcard(keyspace.DETECTORS) == 1
    assert quiet.detection.sweep(later + 1000).points == 0
    assert quiet.data.zcard(keyspace.DETECTORS) == 0


def test_a_worker_that_loses_a_race_scores_again_what_the_winner_left(quiet: Any) -> None:
    """Worker B reads the state, then worker A (which saw less data) writes
    first: B's write is refused, and B reads again and scores the buckets A
    stopped short of, so none waits for the next sample."""
    stamps, values = series()
    send(quiet, stamps, values, {})
    entries = quiet.metrics_queue.read("w1", 10)
    committed = quiet.metric_committer.commit(entries)
    parts = (quiet.redis, quiet.metric_store, quiet.settings, (quiet.queue, quiet.metrics_queue))
    short = [
        (n, s, t, first, stamps[100]) for n, s, t, first, _ in committed.series
    ]  # A saw only the first 100 buckets

    class InterruptedOnce(LiveDetection):
        interrupted = False

        def _points(self, *args: Any, **kwargs: Any) -> Any:
            if not self.interrupted:
                self.interrupted = True
                first = LiveDetection(*parts)
                first.note_metrics(entries, short)
                assert first.advance().points == 99
            return super()._points(*args, **kwargs)

    second = InterruptedOnce(*parts)
    second.note_metrics(entries, committed.series)
    report = second.advance()
    assert report.raced == 1 and report.points == POINTS - 2 - 99
    offline = Detector()
    for t, v in zip(stamps[:-2], values[:-2], strict=True):
        offline.update(float(t), v)
    assert state(quiet, "api.latency", EMPTY_SERIES)[b"det"] == offline.to_bytes()


def test_a_backlog_longer_than_one_step_is_scored_in_steps(quiet: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """A new series whose data goes back further than one step's reach
    (a backlog) is scored from its first bucket, a step per call."""
    monkeypatch.setattr("analytics.anomaly.live.MAX_BUCKETS", 40)
    stamps, values = series()
    send(quiet, stamps, values, {})
    drain(quiet)  # idle calls go on with the backlog until it is done
    offline = Detector()
    for t, v in zip(stamps[:-2], values[:-2], strict=True):
        offline.update(float(t), v)
    assert state(quiet, "api.latency", EMPTY_SERIES)[b"det"] == offline.to_bytes()
