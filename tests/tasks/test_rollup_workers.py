"""Metric rollups and the cleanup task with real Celery workers."""

from __future__ import annotations

import signal
import time

import pytest

from analytics import keyspace
from tasks.celery_app import CLEANUP, create_celery_app
from testkit import wait_until


def test_cleanup_is_scheduled_and_runs_on_the_worker(app, data, worker) -> None:
    schedule = create_celery_app(app.config["ANALYTICS_SETTINGS"]).conf.beat_schedule
    assert any(entry["task"] == CLEANUP for entry in schedule.values())
    app.extensions["celery"].send_task(CLEANUP)
    wait_until(lambda: data.hget(keyspace.CLEANUP_STATS, "runs"), 30, 0.1, "a cleanup run")
    assert data.hget(keyspace.CLEANUP_STATS, "complete") == b"true"


@pytest.mark.slow
def test_worker_sigkill_mid_batch_never_double_counts_a_rollup(make_stack) -> None:
    stack = make_stack(ANALYTICS_BATCH_SIZE="4")
    stack.beat()
    worker = stack.worker(concurrency=2)
    app = stack.app()
    service = app.extensions["analytics"]
    client = app.test_client()
    secret, _ = service.access.create("admin")
    headers = {"Authorization": f"Bearer {secret}"}
    t0 = int(time.time()) // 3600 * 3600 - 3600
    total = 0
    expected_sum = 0.0
    kills_mid_batch = 0
    for round_ in range(4):
        for i in range(30):
            batch = [
                {
                    "name": "load",
                    "value": (round_ * 7 + i + j) % 13,
                    "tags": {"shard": f"s{j % 5}"},
                    "timestamp": t0 + (i * 37 + j) % 3600,
                }
                for j in range(200)
            ]
            response = client.post("/v1/metrics", json={"batch": batch}, headers=headers)
            assert response.status_code == 202
            total += response.json["accepted"]
            expected_sum += sum(s["value"] for s in batch)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and service.metrics_queue.pending() == 0:
            pass
        kills_mid_batch += service.metrics_queue.pending() > 0
        worker.kill(signal.SIGKILL)
        worker.proc.wait(10)
        worker = stack.worker(concurrency=2)
    assert kills_mid_batch >= 1, "no kill landed mid-batch: the test proved nothing"
    wait_until(
        lambda: service.metrics_queue.length() == 0 and service.metrics_queue.pending() == 0,
        90,
        0.2,
        "every metric entry to be committed",
    )
    params = {"start": str(t0), "end": str(t0 + 3600), "bucket": "3600"}
    for bucket in ("3600", "60", "10"):  # every tier counted each sample once
        params["bucket"] = bucket
        counts = service.metrics.get_metric("load", {**params, "agg": "count"})["series"][0]["points"]
        assert sum(v for _, v in counts if v) == total == 24_000, bucket
    summed = service.metrics.get_metric("load", {**params, "bucket": "3600", "agg": "sum"})
    [[_, total_sum]] = summed["series"][0]["points"]
    assert total_sum == expected_sum
