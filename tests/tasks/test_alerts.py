"""Alerts end to end: a rule made through the HTTP API, live detection on a
real Celery worker, and a real webhook receiver (an HTTP server in this
process) that checks what it gets."""

from __future__ import annotations

import hashlib
import hmac
import http.server
import threading
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import orjson
import pytest

from analytics import keyspace
from analytics.metrics.store import series_id
from testkit import wait_until
from tests.analytics.test_alerts import NOTICE_FIELDS

RES = 10
SECRET = "alert-test-signing-secret"


class Receiver:
    """A webhook receiver: records every POST, answers ``status``."""

    def __init__(self, status: int = 204) -> None:
        self.status = status
        self.posts: list[tuple[dict[str, str], bytes]] = []
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.posts.append(({k.lower(): v for k, v in self.headers.items()}, body))
                self.send_response(receiver.status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/hooks/t0ken"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> Receiver:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with Receiver() as r:
        yield r


def make(make_stack: Any, **env: str) -> tuple[Any, Any, dict[str, str]]:
    stack = make_stack(
        ANALYTICS_ANOMALY_RESOLUTION=str(RES),
        ANALYTICS_ALERT_SIGNING_KEY=SECRET,
        ANALYTICS_ALERT_RULES_TTL="0.2",
        **env,
    )
    app = stack.app()
    service = app.extensions["analytics"]
    admin = {"Authorization": f"Bearer {service.access.create('admin')[0]}"}
    return stack, app, admin


def send(service: Any, name: str, stamps: list[int], values: list[float], tags: dict[str, str]) -> None:
    samples = [{"name": name, "value": v, "tags": tags, "timestamp": t} for t, v in zip(stamps, values, strict=True)]
    for at in range(0, len(samples), 50):
        result = service.metrics.track_metrics(samples[at : at + 50])
        assert result.accepted == len(samples[at : at + 50]), result.rejected


def verified(headers: dict[str, str], body: bytes) -> bool:
    """The receiver's check, as docs/alerts.rst shows it."""
    stamp = headers["x-analytics-timestamp"]
    expected = hmac.new(SECRET.encode(), stamp.encode() + b"." + body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(headers["x-analytics-signature"], "v1=" + expected)


def test_a_spike_is_posted_once_signed_and_audited(make_stack: Any, receiver: Receiver) -> None:
    stack, app, admin = make(make_stack)
    # One worker process: two racing on a series leave the loser's later
    # buckets to its next sample or the idle sweep, which is live
    # detection's business (tests/analytics/anomaly), not the alerts'.
    stack.worker(concurrency=1)
    service = app.extensions["analytics"]
    client = app.test_client()
    tags = {"route": "/login"}
    created = client.post(
        "/v1/alerts",
        json={"metric": "api.latency", "tags": tags, "condition": {"type": "anomalous"}, "webhook": receiver.url},
        headers=admin,
    )
    assert created.status_code == 201, created.get_json()
    rule = created.get_json()
    assert rule["webhook"] == f"http://127.0.0.1:{receiver.server.server_port}/..."  # the token is not shown
    listed = client.get("/v1/alerts", headers=admin).get_json()["rules"]
    assert [r["id"] for r in listed] == [rule["id"]] and "t0ken" not in orjson.dumps(listed).decode()

    # 260 noisy buckets with a spike at 240, one sample each, then 20 more.
    rng = np.random.default_rng(3)
    points, spike = 280, 240
    start = (int(time.time()) // RES - points - 30) * RES
    stamps = [start + RES * i for i in range(points)]
    values = (20.0 + rng.normal(0.0, 1.0, points)).round(3).tolist()
    values[spike] += 25.0
    data = stack.redis.client()
    live = data.pubsub()
    live.subscribe(keyspace.LIVE_METRICS)  # what the WebSocket hub forwards
    send(service, "api.latency", stamps[:260], values[:260], tags)
    state = keyspace.detector_state("api.latency", RES, series_id(tags))
    wait_until(lambda: receiver.posts, timeout=60, message="no webhook call")
    send(service, "api.latency", stamps[260:], values[260:], tags)
    # Every bucket but the two open last ones scored, and nothing left to deliver.
    wait_until(lambda: int(data.hget(state, "last") or 0) == stamps[-3], timeout=60, message="buckets not scored")
    wait_until(lambda: service.alert_delivery.pending() == 0, timeout=30, message="outbox not drained")

    assert len(receiver.posts) == 1  # one alert for the spike, not one per bucket
    headers, body = receiver.posts[0]
    assert verified(headers, body)
    assert not verified({**headers, "x-analytics-timestamp": str(int(headers["x-analytics-timestamp"]) + 1)}, body)
    notice = orjson.loads(body)
    assert set(notice) <= NOTICE_FIELDS
    assert notice["kind"] == "alert" and notice["state"] == "firing" and notice["rule"] == rule["id"]
    assert notice["name"] == "api.latency" and notice["tags"] == tags
    assert notice["bucket"] == stamps[spike] and notice["value"] == values[spike]
    assert notice["lower"] < 20.0 < notice["upper"] < values[spike]
    assert notice["link"].startswith("/v1/metrics/api.latency?")
    pushed = []
    while (message := live.get_message(timeout=0.2)) is not None:
        if message["type"] == "message":
            pushed += [item for item in orjson.loads(message["data"]) if item.get("kind") == "alert"]
    live.close()
    assert pushed == [notice]  # the same notification, once, on the live stream

    audit = service.audit.entries()
    fired = [e for e in audit if e["action"] == "alert.firing"]
    assert len(fired) == 1
    assert fired[0]["rule"] == rule["id"] and fired[0]["notice"] == headers["x-analytics-delivery"]
    assert fired[0]["series"] == series_id(tags) and fired[0]["bucket"] == stamps[spike]
    assert [e["rule"] for e in audit if e["action"] == "alert.rule.create"] == [rule["id"]]
    # Tag values stay out of the log (a tag may be an id), the webhook too.
    assert "/login" not in orjson.dumps(audit).decode() and "t0ken" not in orjson.dumps(audit).decode()

    assert client.delete(f"/v1/alerts/{rule['id']}", headers=admin).status_code == 204
    assert client.get(f"/v1/alerts/{rule['id']}", headers=admin).status_code == 404


def test_a_webhook_that_keeps_failing_gets_the_alert_dead_lettered(make_stack: Any) -> None:
    stack, app, admin = make(
        make_stack,
        ANALYTICS_ALERT_MAX_ATTEMPTS="3",
        ANALYTICS_ALERT_RETRY_SECONDS="0.2",
        ANALYTICS_ALERT_TIMEOUT_SECONDS="1",
    )
    stack.worker(concurrency=1)
    stack.beat()  # retries come due on beat's runs
    service = app.extensions["analytics"]
    with Receiver(status=500) as failing:
        created = app.test_client().post(
            "/v1/alerts",
            json={"metric": "queue.depth", "condition": {"type": "above", "value": 100}, "webhook": failing.url},
            headers=admin,
        )
        assert created.status_code == 201
        rule = created.get_json()["id"]
        start = (int(time.time()) // RES - 10) * RES
        # Bucket 1 crosses the threshold; bucket 3's sample closes it (two buckets later).
        stamps = [start + k * RES for k in range(4)]
        send(service, "queue.depth", stamps, [10.0, 500.0, 500.0, 500.0], {})
        data = stack.redis.client()
        wait_until(lambda: data.xlen(keyspace.ALERT_DEAD) == 1, timeout=60, message="not dead-lettered")
        assert len(failing.posts) == 3
    assert len({headers["x-analytics-delivery"] for headers, _ in failing.posts}) == 1  # one notice, three attempts
    assert [headers["x-analytics-attempt"] for headers, _ in failing.posts] == ["1", "2", "3"]
    ((_, dead),) = data.xrange(keyspace.ALERT_DEAD)
    assert dead[b"rule"] == rule.encode() and dead[b"attempts"] == b"3" and dead[b"status"] == b"500"
    assert orjson.loads(dead[b"alert"])["value"] == 500.0
    assert service.alert_delivery.pending() == 0  # out of the outbox
    undelivered = [e for e in service.audit.entries() if e["action"] == "alert.undelivered"]
    assert [(e["rule"], e["attempts"]) for e in undelivered] == [(rule, 3)]
