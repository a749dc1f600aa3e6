"""Live anomaly detection (:mod:`analytics.anomaly.live`) through real
processes: samples posted over HTTP, scored by real Celery workers on a
private Redis, read back from ``GET /v1/metrics/{name}/anomalies``, the
WebSocket stream and the detector state, and held against the offline
detector and the ``analytics anomaly score`` command.

The series carry synthetic timestamps a few minutes in the past, one sample
per 10 s bucket, so a few hundred buckets are sent in seconds. The idle
sweep is left at its default (120 s): it never closes a bucket during a
test, so every bucket here is closed by later data, as the live path does.

Each series is sent by one client, its requests in time order. (Requests
sent concurrently can be queued out of time order; a bucket closes only
once its series has data two buckets later, which absorbs a reordering
within a bucket, not one across many.)"""

from __future__ import annotations

import csv
import signal
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
import redis
import requests
import websocket

from analytics import keyspace
from analytics.anomaly.detector import DEFAULT_THRESHOLD, Detector
from analytics.metrics.store import series_id
from testkit import ROOT, Process, wait_until
from tests.webservers import WebServer

RES = 10
NAME = "api.latency"


def noisy_series(points: int, seed: int, *, spikes: tuple[int, ...] = ()) -> tuple[list[int], list[float]]:
    """``points`` buckets (one sample each) ending about five minutes ago:
    N(20, 1) noise rounded to 3 decimals, +25 at each index in ``spikes``."""
    rng = np.random.default_rng(seed)
    start = (int(time.time()) // RES - points - 30) * RES
    values = (20.0 + rng.normal(0.0, 1.0, points)).round(3).tolist()
    for at in spikes:
        values[at] = round(values[at] + 25.0, 3)
    return [start + RES * i for i in range(points)], values


def samples(stamps: list[int], values: list[float], tags: dict[str, str]) -> list[dict[str, Any]]:
    return [{"name": NAME, "value": v, "tags": tags, "timestamp": t} for t, v in zip(stamps, values, strict=True)]


def offline(stamps: list[int], values: list[float]) -> tuple[Detector, list[tuple[int, float, float]]]:
    """The offline detector fed the points, and its alerts: (bucket, value, score)."""
    detector = Detector()
    alerts = []
    for t, v in zip(stamps, values, strict=True):
        score = detector.update(float(t), v)
        if score.alert:
            alerts.append((t, v, round(score.score, 4)))
    return detector, alerts


def drained(service: Any) -> bool:
    """Every queued sample committed and acknowledged."""
    queue = service.metrics_queue
    return queue.length() == 0 and queue.pending() == 0


def last_scored(data: Any, sid: str) -> int | None:
    raw = data.hget(keyspace.detector_state(NAME, RES, sid), "last")
    return int(raw) if raw else None


def found(anomalies: list[dict[str, Any]]) -> list[tuple[int, float, float]]:
    return [(a["bucket"], a["value"], a["score"]) for a in anomalies]


class Frames:
    """Reads a WebSocket stream in the background (so the server never
    drops it for a full buffer) and keeps its anomaly frames."""

    def __init__(self, ws: websocket.WebSocket) -> None:
        self.ws = ws
        self.anomalies: list[dict[str, Any]] = []
        self.problem: str | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._read, daemon=True)

    def subscribe(self, name: str) -> None:
        self.ws.send(orjson.dumps({"action": "subscribe", "metrics": [name]}).decode())
        assert orjson.loads(self.ws.recv())["kind"] == "subscribed"
        self._thread.start()

    def _read(self) -> None:
        self.ws.settimeout(0.5)
        while not self._stop.is_set():
            try:
                message = orjson.loads(self.ws.recv())
            except websocket.WebSocketTimeoutException:
                continue
            except Exception as exc:  # noqa: BLE001 - reported by the test, not lost in a thread
                self.problem = f"stream ended: {type(exc).__name__}: {exc}"
                return
            if message["kind"] == "anomaly":
                self.anomalies.append(message["data"])

    def close(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(5)
        self.ws.close()


def test_a_spike_posted_over_http_is_flagged_on_the_stream_and_by_the_endpoint_within_two_buckets(
    make_stack, tmp_path: Path
) -> None:
    stack = make_stack(ANALYTICS_ANOMALY_RESOLUTION=str(RES))
    stack.worker()
    web = WebServer("web-anomaly", stack.env, tmp_path).start()
    frames: Frames | None = None
    try:
        service = stack.app().extensions["analytics"]
        ingest = {"Authorization": f"Bearer {service.access.create('ingest')[0]}"}
        read_key = service.access.create("read")[0]
        spike = 250
        stamps, values = noisy_series(spike + 3, seed=11, spikes=(spike,))
        tags = {"route": "/login"}
        frames = Frames(websocket.create_connection(f"{web.ws_url}/v1/stream?token={read_key}", timeout=10))
        frames.subscribe(NAME)

        def post(start: int, stop: int) -> None:
            body = {"batch": samples(stamps[start:stop], values[start:stop], tags)}
            response = requests.post(web.url + "/v1/metrics", json=body, headers=ingest, timeout=10)
            assert response.status_code == 202, response.text
            assert response.json()["accepted"] == stop - start

        for at in range(0, spike, 50):  # the history, in several requests
            post(at, min(at + 50, spike))
        # A worker process that commits a request while the other still
        # holds an older one leaves the buckets it closed to its own next
        # commit (or the idle sweep): let the history settle, so the spike's
        # bucket is closed by the request below whichever process takes it.
        wait_until(lambda: drained(service), 60, 0.1, "the history to be committed")
        assert not [a for a in frames.anomalies if a["bucket"] >= stamps[spike]]
        post(spike, spike + 3)  # the spike's bucket and the two after it, nothing later

        def spike_frame() -> dict[str, Any] | None:
            assert frames.problem is None, frames.problem
            return next((a for a in frames.anomalies if a["bucket"] == stamps[spike]), None)

        frame = wait_until(spike_frame, 60, 0.1, "the anomaly frame of the spike's bucket")
        assert frame["name"] == NAME and frame["tags"] == tags and frame["resolution"] == RES
        assert frame["value"] == values[spike] and frame["score"] >= DEFAULT_THRESHOLD
        assert frame["lower"] < 20.0 < frame["upper"] < values[spike]

        response = requests.get(
            f"{web.url}/v1/metrics/{NAME}/anomalies",
            params={"start": str(stamps[0]), "end": str(stamps[-1] + RES)},
            headers={"Authorization": f"Bearer {read_key}"},
            timeout=10,
        )
        assert response.status_code == 200, response.text
        listed = [a for a in response.json()["anomalies"] if a["bucket"] == stamps[spike]]
        assert listed == [frame]
        # Scored by the same detector as offline: the same alert, the same score.
        _, alerts = offline(stamps[: spike + 1], values[: spike + 1])
        assert (stamps[spike], values[spike], frame["score"]) in alerts
    finally:
        if frames is not None:
            frames.close()
        web.stop()


def test_the_api_and_the_command_give_the_same_scores(make_stack, tmp_path: Path) -> None:
    stack = make_stack(ANALYTICS_ANOMALY_RESOLUTION=str(RES))
    stack.worker()
    client = stack.app().test_client()
    service = client.application.extensions["analytics"]
    ingest = {"Authorization": f"Bearer {service.access.create('ingest')[0]}"}
    read = {"Authorization": f"Bearer {service.access.create('read')[0]}"}
    stamps, values = noisy_series(320, seed=5, spikes=(230, 290))
    tags = {"region": "eu"}
    # All but the last bucket over the API, in requests the worker's two
    # processes take in parallel; then the last one, which closes the rest.
    for at in range(0, len(stamps) - 1, 40):
        stop = min(at + 40, len(stamps) - 1)
        response = client.post(
            "/v1/metrics", json={"batch": samples(stamps[at:stop], values[at:stop], tags)}, headers=ingest
        )
        assert response.status_code == 202 and response.json["accepted"] == stop - at, response.json
    wait_until(lambda: drained(service), 60, 0.1, "the samples to be committed")
    response = client.post("/v1/metrics", json=samples(stamps[-1:], values[-1:], tags)[0], headers=ingest)
    assert response.status_code == 202, response.json
    sid = series_id(tags)
    # The last two buckets stay open (until the idle sweep): all before them are scored.
    wait_until(lambda: last_scored(service.redis, sid) == stamps[-3], 60, 0.1, "the buckets before the last scored")

    # The same series through the command, as a user runs it.
    source, target = tmp_path / "series.csv", tmp_path / "scores.csv"
    with source.open("w", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(["timestamp", "value"])
        for t, v in zip(stamps, values, strict=True):
            writer.writerow([datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%d %H:%M:%S"), repr(v)])
    command = [
        str(Path(sys.executable).parent / "analytics"),
        "anomaly",
        "score",
        "--input",
        str(source),
        "--output",
        str(target),
    ]
    run = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=60, check=False)
    assert run.returncode == 0, run.stderr
    with target.open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == len(stamps)
    scores = [float(row["anomaly_score"]) for row in rows]
    flagged = [
        (t, v, round(s, 4))
        for t, v, s in zip(stamps[:-2], values[:-2], scores[:-2], strict=True)
        if s >= DEFAULT_THRESHOLD
    ]
    assert {stamps[230], stamps[290]} <= {t for t, _, _ in flagged}  # both spikes

    response = client.get(
        f"/v1/metrics/{NAME}/anomalies",
        query_string={"start": str(stamps[0]), "end": str(stamps[-1] + RES)},
        headers=read,
    )
    assert response.status_code == 200, response.json
    assert found(response.json["anomalies"]) == flagged
    # The state in Redis is the offline detector's after the same points, byte for byte.
    detector, alerts = offline(stamps[:-2], values[:-2])
    assert alerts == flagged
    assert service.redis.hget(keyspace.detector_state(NAME, RES, sid), "det") == detector.to_bytes()


def worker_children(worker: Process) -> set[int]:
    """Pids of a Celery worker's pool processes (its consumers' names end with them)."""
    with open(f"/proc/{worker.pid}/task/{worker.pid}/children") as f:
        return {int(pid) for pid in f.read().split()}


def held_by(service: Any, pids: set[int]) -> int:
    """Sample entries pending with consumers among ``pids`` (none before a
    worker has made the consumer group)."""
    try:
        counts = service.redis.xpending_range(keyspace.METRICS_QUEUE, keyspace.GROUP, "-", "+", 1000)
    except redis.ResponseError:
        return 0
    return sum(1 for item in counts if int(item["consumer"].decode().rsplit("-", 1)[1]) in pids)


@pytest.mark.slow
def test_a_worker_sigkilled_mid_stream_scores_no_bucket_twice_and_skips_none(make_stack) -> None:
    stack = make_stack(ANALYTICS_ANOMALY_RESOLUTION=str(RES), ANALYTICS_BATCH_SIZE="2")
    stack.beat()  # the recovery sweep takes over what the killed worker held
    victim = stack.worker(concurrency=2)
    stack.worker(concurrency=2)
    client = stack.app().test_client()
    service = client.application.extensions["analytics"]
    ingest = {"Authorization": f"Bearer {service.access.create('ingest')[0]}"}
    shards = [{"shard": "a"}, {"shard": "b"}]
    stamps, values = noisy_series(400, seed=8, spikes=(240, 330))
    other = [round(40.0 - v, 3) for v in values]  # a second series, its spikes downward
    per_shard = {"a": values, "b": other}
    accepted: list[int] = []

    def send(start: int, stop: int) -> None:
        """Samples of both series, a few buckets per request, in time order."""
        for at in range(start, stop, 4):
            end = min(at + 4, stop)
            batch = [s for tags in shards for s in samples(stamps[at:end], per_shard[tags["shard"]][at:end], tags)]
            response = client.post("/v1/metrics", json={"batch": batch}, headers=ingest)
            assert response.status_code == 202, response.json
            accepted.append(response.json["accepted"])
            time.sleep(0.005)

    children = worker_children(victim)
    sender = threading.Thread(target=send, args=(0, len(stamps) - 1))
    sender.start()

    def caught_holding() -> bool:
        """Freeze the victim; kill it if it holds samples (read, not yet
        acknowledged), else let it run on and try again."""
        if held_by(service, children) == 0:
            return False
        victim.kill(signal.SIGSTOP)
        if held_by(service, children) > 0:
            victim.kill(signal.SIGKILL)
            return True
        victim.kill(signal.SIGCONT)
        return False

    wait_until(caught_holding, 30, 0.001, "the victim to be caught holding samples")
    assert victim.proc is not None
    victim.proc.wait(10)
    during_stream = sender.is_alive()
    left = held_by(service, children)
    assert left > 0  # held by the dead: committed only if taken over
    sender.join(120)
    assert during_stream, "the stream ended before the kill: proved nothing"
    assert sum(accepted) == 2 * (len(stamps) - 1)
    wait_until(lambda: drained(service), 60, 0.2, "every sample committed, the victim's taken over")
    # The last bucket of both series, alone, once nothing is pending: it closes all but the two last.
    send(len(stamps) - 1, len(stamps))
    for tags in shards:
        sid = series_id(tags)
        wait_until(lambda sid=sid: last_scored(service.redis, sid) == stamps[-3], 60, 0.1, "every bucket scored")

    listed = service.metrics.anomalies(NAME, {"start": str(stamps[0]), "end": str(stamps[-1] + RES)})["anomalies"]
    for tags in shards:
        series = per_shard[tags["shard"]]
        detector, alerts = offline(stamps[:-2], series[:-2])
        assert {stamps[240], stamps[330]} <= {t for t, _, _ in alerts}
        # Each bucket scored exactly once, in order: the offline detector's state, byte for byte.
        stored = service.redis.hget(keyspace.detector_state(NAME, RES, series_id(tags)), "det")
        assert stored == detector.to_bytes(), tags
        assert found([a for a in listed if a["tags"] == tags]) == alerts, tags
